"""`sparse_optimizer=`: row-wise table training inside keras' `fit`, against references
that train a dense one-hot lookup (keras' own optimizers) or follow the update in numpy."""

import keras
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import keras_embed_ext as kee
from conftest import BACKEND, table, to_numpy

V, D, L = 24, 6, 5


class OneHotLookup(keras.layers.Layer):
    """`one_hot(ids) @ table`: the lookup with a dense gradient, keras' math on every backend."""

    def __init__(self, initial, **kwargs):
        super().__init__(**kwargs)
        self.initial = initial

    def build(self, input_shape):
        self.table = self.add_weight(shape=self.initial.shape, initializer="zeros")
        self.table.assign(self.initial)

    def call(self, ids):
        return keras.ops.matmul(keras.ops.one_hot(ids, self.initial.shape[0]), self.table)


def fit_steps(layer, batches, optimizer="sgd"):
    """Trains `Sequential([layer])` with MSE, one `train_on_batch` per `(ids, y)`."""
    model = keras.Sequential([keras.Input((L,), dtype="int32"), layer])
    model.compile(optimizer, "mse")
    for ids, y in batches:
        model.train_on_batch(ids, y)
    return model


def batches(steps=4, high=V // 2, seed=0):
    """Batches whose ids repeat within a batch and leave rows `>= high` untouched."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        ids = rng.integers(0, high, size=(8, L)).astype("int32")
        ids[0, :2] = ids[1, 0]  # a repeated id, in two bags
        out.append((ids, rng.standard_normal((8, L, D)).astype("float32")))
    return out


@pytest.mark.parametrize(
    "ours, theirs",
    [
        ("sgd", lambda: keras.optimizers.SGD(0.01)),
        (keras.optimizers.SGD(0.3), lambda: keras.optimizers.SGD(0.3)),
        ("adagrad", lambda: keras.optimizers.Adagrad()),
        (keras.optimizers.Adagrad(0.5, initial_accumulator_value=0.3, epsilon=1e-4),
         lambda: keras.optimizers.Adagrad(0.5, initial_accumulator_value=0.3, epsilon=1e-4)),
    ],
)
def test_sgd_and_adagrad_equal_keras_dense_optimizers(ours, theirs):
    initial = table(V, D)
    reference = OneHotLookup(initial)
    fit_steps(reference, batches(), theirs())
    layer = kee.Embedding(V, D, weights=initial, sparse_optimizer=ours)
    fit_steps(layer, batches(), "adam")  # the model's optimizer has nothing else to train
    trained = to_numpy(layer.embeddings)
    np.testing.assert_allclose(trained, to_numpy(reference.table), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(trained[V // 2:], initial[V // 2:])
    assert not np.allclose(trained[: V // 2], initial[: V // 2])


def test_a_step_of_more_rows_than_one_part_equals_keras_dense_adagrad():
    """On a torch CPU a step's rows are updated `PART_BYTES` of the table at a time
    (`backends.rows.for_each_part`): about 500 distinct rows a step, 200 to a part."""
    from keras_embed_ext.backends.rows import PART_BYTES

    vocabulary, width = 700, PART_BYTES // (4 * 200)
    initial = table(vocabulary, width)
    rng = np.random.default_rng(3)
    steps = [(rng.integers(0, vocabulary, size=(160, L)).astype("int32"),
              rng.standard_normal((160, L, width)).astype("float32")) for _ in range(2)]
    reference = OneHotLookup(initial)
    fit_steps(reference, steps, keras.optimizers.Adagrad(0.5))
    layer = kee.Embedding(vocabulary, width, weights=initial, sparse_optimizer=keras.optimizers.Adagrad(0.5))
    fit_steps(layer, steps, "adam")
    np.testing.assert_allclose(to_numpy(layer.embeddings), to_numpy(reference.table), rtol=1e-5, atol=1e-6)
    untouched = np.setdiff1d(np.arange(vocabulary), np.concatenate([ids.reshape(-1) for ids, _ in steps]))
    np.testing.assert_array_equal(to_numpy(layer.embeddings)[untouched], initial[untouched])


def numpy_training(initial, steps, update):
    """The table after `steps` of MSE training in numpy, `update(rows, grads, state, t)`
    applied to the distinct ids of each step with their summed gradients."""
    weights, state = initial.copy(), {}
    for t, (ids, y) in enumerate(steps, start=1):
        output_grads = 2 * (weights[ids] - y) / y.size
        rows = np.unique(ids)
        grads = np.stack([output_grads[ids == r].sum(axis=0) for r in rows])
        weights[rows] = update(weights[rows], grads, state, rows, t)
    return weights


def rowwise_adagrad(lr, eps):
    def update(rows_values, grads, state, rows, t):
        acc = state.setdefault("acc", np.zeros(V, "float64"))
        acc[rows] += (grads.astype("float64") ** 2).mean(axis=-1)
        return rows_values - lr * grads / (np.sqrt(acc[rows])[:, None] + eps)
    return update


def lazy_adam(lr, b1, b2, eps):
    def update(rows_values, grads, state, rows, t):
        m = state.setdefault("m", np.zeros((V, D)))
        v = state.setdefault("v", np.zeros((V, D)))
        m[rows] += (grads - m[rows]) * (1 - b1)
        v[rows] += (grads**2 - v[rows]) * (1 - b2)
        alpha = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        return rows_values - m[rows] * alpha / (np.sqrt(v[rows]) + eps)
    return update


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**16), high=st.integers(1, V))
def test_rowwise_adagrad_and_lazy_adam_follow_numpy(seed, high):
    initial = table(V, D, seed=seed % 7)
    steps = batches(3, high, seed)
    for ours, update in (
        (kee.optimizers.RowwiseAdagrad(0.2, epsilon=1e-6), rowwise_adagrad(0.2, 1e-6)),
        (keras.optimizers.Adam(0.05, beta_1=0.8, beta_2=0.9), lazy_adam(0.05, 0.8, 0.9, 1e-7)),
    ):
        layer = kee.Embedding(V, D, weights=initial, sparse_optimizer=ours)
        fit_steps(layer, steps)
        np.testing.assert_allclose(
            to_numpy(layer.embeddings), numpy_training(initial, steps, update), rtol=2e-5, atol=2e-6
        )


def test_rowwise_adagrad_state_is_one_float_per_row():
    layer = kee.Embedding(1000, 64, sparse_optimizer="rowwise_adagrad")
    layer.build()
    assert [tuple(v.shape) for v in layer._table.row_training.variables()] == [(1000,), ()]


def test_learning_rate_schedule_is_evaluated_at_the_layers_step():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.5, decay_steps=1, decay_rate=0.5)
    initial = table(V, D)
    reference = OneHotLookup(initial)
    fit_steps(reference, batches(), keras.optimizers.SGD(schedule))
    layer = kee.Embedding(V, D, weights=initial, sparse_optimizer=keras.optimizers.SGD(schedule))
    fit_steps(layer, batches())
    np.testing.assert_allclose(to_numpy(layer.embeddings), to_numpy(reference.table), rtol=1e-5, atol=1e-6)
    assert int(to_numpy(layer._table.row_training.step)) == 4


@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
def test_bags_with_per_id_weights_equal_the_dense_reference(combiner):
    initial, rng = table(V, D), np.random.default_rng(3)
    ids = rng.integers(0, V // 2, size=(8, L)).astype("int32")
    bag_weights = rng.uniform(0.1, 2.0, size=(8, L)).astype("float32")
    y = rng.standard_normal((8, D)).astype("float32")

    def train(layer, lookup):
        ids_in = keras.Input((L,), dtype="int32")
        weights_in = keras.Input((L,))
        model = keras.Model([ids_in, weights_in], lookup(layer, ids_in, weights_in))
        model.compile("sgd", "mse")
        for _ in range(3):
            model.train_on_batch([ids, bag_weights], y)

    reference = OneHotLookup(initial)

    def dense_bags(layer, ids, weights):
        rows = layer(ids) * keras.ops.expand_dims(weights, -1)
        norm = {"sum": 1.0, "mean": keras.ops.sum(weights, -1, keepdims=True),
                "sqrtn": keras.ops.sqrt(keras.ops.sum(weights**2, -1, keepdims=True))}[combiner]
        return keras.ops.sum(rows, axis=1) / norm

    train(reference, dense_bags)
    layer = kee.Embedding(V, D, weights=initial, combiner=combiner, sparse_optimizer=keras.optimizers.SGD(0.01))
    train(layer, lambda layer, ids, weights: layer(ids, weights=weights))
    np.testing.assert_allclose(to_numpy(layer.embeddings), to_numpy(reference.table), rtol=1e-5, atol=1e-6)


def test_word_dropout_trains_like_the_same_layer_with_keras_sgd():
    # The same seed drops the same rows in both; dropped rows get no update in either.
    initial = table(V, D)
    plain = kee.Embedding(V, D, weights=initial, dropout=0.5, seed=3)
    fit_steps(plain, batches(), keras.optimizers.SGD(0.2))
    layer = kee.Embedding(V, D, weights=initial, dropout=0.5, seed=3, sparse_optimizer=keras.optimizers.SGD(0.2))
    fit_steps(layer, batches())
    np.testing.assert_allclose(to_numpy(layer.embeddings), to_numpy(plain.embeddings), rtol=1e-5, atol=1e-6)
    assert not np.allclose(to_numpy(layer.embeddings), initial)


def test_invalid_ids_update_nothing():
    # Lazy Adam would move a row that a zero gradient reached; invalid ids reach none.
    initial = table(V, D)
    layer = kee.Embedding(V, D, weights=initial, invalid_ids="zero", sparse_optimizer="adam")
    ids = np.full((8, L), V + 3, "int32")
    ids[:, 0] = -1
    ids[:, 1] = 5
    fit_steps(layer, [(ids, np.ones((8, L, D), "float32"))] * 2)
    trained = to_numpy(layer.embeddings)
    np.testing.assert_array_equal(np.delete(trained, 5, axis=0), np.delete(initial, 5, axis=0))
    assert not np.allclose(trained[5], initial[5])


def test_lora_trains_a_row_wise_and_b_with_the_models_optimizer():
    initial, rng = table(V, D), np.random.default_rng(1)
    a, b = rng.standard_normal((V, 2)).astype("float32"), rng.standard_normal((2, D)).astype("float32")

    class DenseLoRA(OneHotLookup):
        def build(self, input_shape):
            super().build(input_shape)
            self.table.trainable = False
            self.a = self.add_weight(shape=a.shape, initializer=keras.initializers.Constant(a))
            self.b = self.add_weight(shape=b.shape, initializer=keras.initializers.Constant(b))

        def call(self, ids):
            one_hot = keras.ops.one_hot(ids, V)
            return keras.ops.matmul(one_hot, self.table) + 2.0 * keras.ops.matmul(one_hot, self.a) @ self.b

    reference = DenseLoRA(initial)
    fit_steps(reference, batches(), keras.optimizers.SGD(0.1))
    layer = kee.Embedding(V, D, weights=initial, sparse_optimizer=keras.optimizers.SGD(0.1))
    layer.enable_lora(2, lora_alpha=4.0)
    layer.lora_embeddings_a.assign(a)
    layer.lora_embeddings_b.assign(b)
    fit_steps(layer, batches(), keras.optimizers.SGD(0.1))
    np.testing.assert_allclose(to_numpy(layer.lora_embeddings_a), to_numpy(reference.a), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(layer.lora_embeddings_b), to_numpy(reference.b), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(to_numpy(layer._embeddings), initial)


def test_saved_state_resumes_training_bit_exact(tmp_path):
    # Distinct ids within a batch: a GPU sums a repeated id's gradients with atomic adds
    # in any order, so that two runs from one state may differ in the last bit.
    vocabulary, rng = 2 * 8 * L, np.random.default_rng(7)
    steps = [
        (rng.permutation(vocabulary)[: 8 * L].reshape(8, L).astype("int32"),
         rng.standard_normal((8, L, D)).astype("float32"))
        for _ in range(4)
    ]
    layer = kee.Embedding(vocabulary, D, weights=table(vocabulary, D), sparse_optimizer=kee.optimizers.Adam(0.05))
    model = fit_steps(layer, steps[:2])
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    for m in (model, restored):
        for ids, y in steps[2:]:
            m.train_on_batch(ids, y)
    for ours, theirs in zip(model.get_weights(), restored.get_weights()):
        np.testing.assert_array_equal(ours, theirs)
    config = restored.layers[0].get_config()["sparse_optimizer"]
    assert config["class_name"] == "Adam" and config["config"]["learning_rate"] == 0.05


def test_a_keras_file_loads_and_starts_a_fresh_state(tmp_path):
    theirs = keras.Sequential([keras.Input((L,), dtype="int32"), keras.layers.Embedding(V, D)])
    path = str(tmp_path / "keras.weights.h5")
    theirs.save_weights(path)
    ours = keras.Sequential([keras.Input((L,), dtype="int32"), kee.Embedding(V, D, sparse_optimizer="adagrad")])
    ours.load_weights(path)
    np.testing.assert_array_equal(to_numpy(ours.layers[0].embeddings), to_numpy(theirs.layers[0].embeddings))
    np.testing.assert_allclose(to_numpy(ours.layers[0]._table.row_training.slots[0]), 0.1)


def called_twice(layer):
    """`layer(ids) + layer(ids * 2 % V)` trained with MSE on `batches()`."""
    ids = keras.Input((L,), dtype="int32")
    model = keras.Model(ids, layer(ids) + layer((ids * 2) % V))
    model.compile("sgd", "mse")
    return model


if BACKEND == "jax":

    def test_a_layer_called_twice_in_a_step_is_a_clear_error():
        model = called_twice(kee.Embedding(V, D, sparse_optimizer="sgd"))
        x, y = batches(1)[0]
        with pytest.raises(Exception, match="called more than once"):
            model.train_on_batch(x, y)

else:

    @pytest.mark.parametrize("ours, theirs", [("sgd", keras.optimizers.SGD), ("adagrad", keras.optimizers.Adagrad)])
    def test_a_layer_called_twice_in_a_step_makes_one_update_of_the_summed_gradient(ours, theirs):
        # The two calls' gradients meet in one sparse gradient, summed per row: one
        # update, as keras' dense optimizer makes it from the dense gradient.
        initial = table(V, D)
        reference = OneHotLookup(initial)
        reference_model = called_twice(reference)
        reference_model.compile(theirs(), "mse")
        layer = kee.Embedding(V, D, weights=initial, sparse_optimizer=ours)
        model = called_twice(layer)
        for x, y in batches():
            reference_model.train_on_batch(x, y)
            model.train_on_batch(x, y)
        np.testing.assert_allclose(to_numpy(layer.embeddings), to_numpy(reference.table), rtol=1e-5, atol=1e-6)
        assert int(to_numpy(layer.row_optimizer_variables[-1])) == len(batches())


def test_default_gradient_sums_repeated_ids_for_keras_optimizers():
    # TensorFlow's gradient of a gather repeats a slice per occurrence; keras' Adagrad
    # and Adam then square each one. The layer's gradient has one slice per id.
    initial = table(V, D)
    for optimizer in (keras.optimizers.Adagrad, keras.optimizers.Adam):
        reference, layer = OneHotLookup(initial), kee.Embedding(V, D, weights=initial)
        fit_steps(reference, batches(), optimizer(0.1))
        fit_steps(layer, batches(), optimizer(0.1))
        np.testing.assert_allclose(to_numpy(layer.embeddings), to_numpy(reference.table), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "optimizer, named",
    [
        (keras.optimizers.SGD(momentum=0.9), "momentum"),
        (keras.optimizers.Adam(amsgrad=True), "amsgrad"),
        (keras.optimizers.Adam(weight_decay=0.01), "weight_decay"),
        (keras.optimizers.Adagrad(clipnorm=1.0), "clipnorm"),
        (keras.optimizers.RMSprop(), "sparse_optimizer"),
        ("adamw", "sparse_optimizer"),
    ],
)
def test_unsupported_optimizers_are_named(optimizer, named):
    with pytest.raises(ValueError, match=named):
        kee.Embedding(V, D, sparse_optimizer=optimizer)


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"embeddings_regularizer": "l2"}, "embeddings_regularizer"),
        ({"embeddings_constraint": "non_neg"}, "embeddings_constraint"),
    ],
)
def test_what_a_row_wise_optimizer_cannot_train_is_an_error(kwargs, named):
    with pytest.raises(ValueError, match=named):
        kee.Embedding(V, D, sparse_optimizer="sgd", **kwargs)


def test_attend_is_an_error_with_a_sparse_optimizer():
    layer = kee.Embedding(V, D, sparse_optimizer="sgd")
    layer.build()
    with pytest.raises(ValueError, match="attend"):
        layer.attend(np.ones((2, D), "float32"))


def test_quantize_stops_and_lora_moves_the_row_training():
    layer = kee.Embedding(V, D, sparse_optimizer="adagrad")
    layer.build()
    assert layer._table.row_training.variable is layer._embeddings
    layer.enable_lora(2)
    assert layer._table.row_training.variable is layer.lora_embeddings_a
    assert not layer._embeddings.overwrite_with_gradient
    layer.merge_lora()
    layer.quantize("int8")
    assert layer._table.row_training is None
    assert [v.path.split("/")[-1] for v in layer.weights] == ["embeddings", "embeddings_scale"]


def test_mixed_bfloat16_keeps_a_float32_table_and_state():
    initial = table(V, D)
    reference = OneHotLookup(initial)
    fit_steps(reference, batches(2), keras.optimizers.Adagrad(0.1))
    keras.config.set_dtype_policy("mixed_bfloat16")
    layer = kee.Embedding(V, D, weights=initial, sparse_optimizer=keras.optimizers.Adagrad(0.1))
    fit_steps(layer, batches(2))
    assert layer.embeddings.dtype == "float32" and layer._table.row_training.slots[0].dtype == "float32"
    # bfloat16 rows and gradients: within their precision of the float32 reference.
    np.testing.assert_allclose(to_numpy(layer.embeddings), to_numpy(reference.table), rtol=2e-2, atol=2e-2)


if BACKEND in ("tensorflow", "jax"):  # the backends whose keras models take sparse ids

    def test_sparse_ids_train_the_rows_of_their_present_ids():
        initial, rng = table(V, D), np.random.default_rng(6)
        ids = rng.integers(1, V // 2, size=(8, L)).astype("int32")
        present = rng.random((8, L)) < 0.6
        y = rng.standard_normal((8, D)).astype("float32")
        reference = OneHotLookup(initial)
        dense_in = keras.Input((L,), dtype="int32")
        mask_in = keras.Input((L,))
        dense_model = keras.Model(
            [dense_in, mask_in], keras.ops.sum(reference(dense_in) * keras.ops.expand_dims(mask_in, -1), axis=1)
        )
        dense_model.compile(keras.optimizers.SGD(0.1), "mse")
        layer = kee.Embedding(V, D, weights=initial, combiner="sum", sparse_optimizer=keras.optimizers.SGD(0.1))
        sparse_in = keras.Input((L,), dtype="int32", sparse=True)
        model = keras.Model(sparse_in, layer(sparse_in))
        model.compile("sgd", "mse")
        indices = np.argwhere(present)
        if BACKEND == "tensorflow":
            import tensorflow as tf

            sparse_ids = tf.SparseTensor(indices, ids[present], (8, L))
        else:
            from jax.experimental import sparse as jax_sparse

            sparse_ids = jax_sparse.BCOO((ids[present], indices), shape=(8, L))
        for _ in range(3):
            dense_model.train_on_batch([ids, present.astype("float32")], y)
            model.train_on_batch(sparse_ids, y)
        np.testing.assert_allclose(to_numpy(layer.embeddings), to_numpy(reference.table), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("optimizer", [None, "sgd", "adagrad", "rowwise_adagrad", "adam"])
@pytest.mark.parametrize("lora", [False, True])
def test_the_optimizer_state_is_not_counted_as_the_models_parameters(optimizer, lora):
    def model(sparse_optimizer):
        layer = kee.Embedding(1000, 8, combiner="sum", sparse_optimizer=sparse_optimizer, lora_rank=2 if lora else None)
        return keras.Sequential([keras.Input((3,), dtype="int32"), layer, keras.layers.Dense(1)])

    plain, ours = model(None), model(optimizer)
    assert ours.count_params() == plain.count_params() == 1000 * 8 + 9 + (1000 * 2 + 2 * 8 if lora else 0)
    for weights in ("weights", "trainable_weights", "non_trainable_weights"):
        assert [(v.name, v.shape) for v in getattr(ours, weights)] == [(v.name, v.shape) for v in getattr(plain, weights)]
    state = ours.layers[0].row_optimizer_variables
    assert len(state) == (0 if optimizer is None else len(kee.optimizers.get(optimizer).slots) + 1)
    # The state is the layer's, among its variables: trained, saved and sharded with it.
    assert all(any(v is s for v in ours.variables) for s in state)
    def counts(model):
        lines = []
        model.summary(print_fn=lambda text, **kwargs: lines.extend(text.splitlines()))
        return [line for line in lines if "params:" in line]

    assert len(counts(ours)) == 3 and counts(ours) == counts(plain)


@pytest.mark.parametrize("optimizer", [
    "adam", "ftrl", "sgd", "adagrad", "rowwise_adagrad",
    # No epsilon and no initial accumulator: `0 / sqrt(0)` at the padding row, never looked up with a gradient.
    kee.optimizers.Adagrad(0.1, initial_accumulator_value=0.0, epsilon=0.0),
    kee.optimizers.RowwiseAdagrad(0.1, epsilon=0.0),
])
def test_a_row_whose_gradient_is_zero_keeps_its_values_and_state(optimizer):
    # Lazy Adam would move a row with momentum by a zero gradient: a row that a step
    # looks up only with weight 0 (or as padding) is left as it is.
    initial, rng = table(V, D), np.random.default_rng(2)
    layer = kee.Embedding(V, D, weights=initial, mask_zero=True, combiner="sum", sparse_optimizer=optimizer)
    ids_in, weights_in = keras.Input((L,), dtype="int32"), keras.Input((L,))
    model = keras.Model([ids_in, weights_in], layer(ids_in, weights=weights_in))
    model.compile("sgd", "mse")
    ids = rng.integers(6, V // 2, size=(8, L)).astype("int32")
    ids[:, -1] = 0  # padding
    ids[:, 0] = 5  # only here
    weights = np.ones((8, L), "float32")

    def step(weights):
        model.train_on_batch([ids, weights], rng.standard_normal((8, D)).astype("float32"))
        slots = [s for s in layer.row_optimizer_variables if len(s.shape)]
        return to_numpy(layer.embeddings), [to_numpy(s) for s in slots]

    first, first_state = step(weights)
    assert not np.allclose(first[5], initial[5])
    weights[:, 0] = 0.0
    later, later_state = step(weights)
    np.testing.assert_array_equal(later[5], first[5])
    np.testing.assert_array_equal(later[0], initial[0])
    for before, after in zip(first_state, later_state):
        np.testing.assert_array_equal(after[5], before[5])
        assert not np.allclose(after[ids[0, 1]], before[ids[0, 1]])


if BACKEND == "tensorflow":

    @pytest.mark.parametrize("optimizer", ["adagrad", "adam"])
    def test_a_train_step_compiled_by_xla_trains_as_the_uncompiled_one(optimizer):
        # XLA compiles the train step by default where a GPU is present.
        def trained(jit_compile):
            layer = kee.Embedding(V, D, weights=table(V, D), sparse_optimizer=optimizer)
            model = called_twice(layer)
            model.compile("sgd", "mse", jit_compile=jit_compile)
            for x, y in batches():
                model.train_on_batch(x, y)
            return to_numpy(layer.embeddings)

        np.testing.assert_allclose(trained(True), trained(False), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "hyperparameters",
    [{}, {"learning_rate": 0.3, "l1_regularization_strength": 0.01, "l2_regularization_strength": 0.1, "beta": 0.2,
          "learning_rate_power": -0.7},
     {"l2_shrinkage_regularization_strength": 0.05}],
)
def test_ftrl_equals_keras_dense_ftrl_on_the_rows_looked_up_and_leaves_the_others(hyperparameters):
    # keras' dense Ftrl sets the rows its first step does not look up to zero, and
    # shrinks every row in every step; TensorFlow's sparse FTRL, and this one, only the
    # rows a step looks up. The rows of the first step follow one recurrence in both
    # without shrinkage, and the rows of every step with it.
    steps = batches()
    for ids, _ in steps:
        ids[-1] = np.arange(L)
    initial = table(V, D)
    reference = OneHotLookup(initial)
    fit_steps(reference, steps, keras.optimizers.Ftrl(**hyperparameters))
    layer = kee.Embedding(V, D, weights=initial, sparse_optimizer=keras.optimizers.Ftrl(**hyperparameters))
    fit_steps(layer, steps)
    seen = np.unique(np.concatenate([ids.reshape(-1) for ids, _ in steps]))
    compared = np.arange(L) if hyperparameters.get("l2_shrinkage_regularization_strength") else np.unique(steps[0][0])
    trained = to_numpy(layer.embeddings)
    np.testing.assert_allclose(trained[compared], to_numpy(reference.table)[compared], rtol=1e-5, atol=1e-6)
    unseen = np.setdiff1d(np.arange(V), seen)
    np.testing.assert_array_equal(trained[unseen], initial[unseen])
    assert not np.allclose(trained[seen], initial[seen])

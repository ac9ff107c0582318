"""Row-trained tables inside everything keras' optimizer and trainer do around them:
loss scaling and its skipped steps, mixed precision, settings a row update cannot
honour, outputs that do not reach the loss, eager training calls, saved state of
another optimizer. References: the same model trained without the setting, or keras'
own optimizer on a dense one-hot lookup."""

import keras
import numpy as np
import pytest

import keras_embed_ext as kee
from conftest import BACKEND, table, to_numpy

V, D, L, B = 16, 4, 3, 8
ROW_OPTIMIZERS = {
    "sgd": lambda: kee.optimizers.SGD(0.2),
    "adagrad": lambda: kee.optimizers.Adagrad(0.1),
    "rowwise_adagrad": lambda: kee.optimizers.RowwiseAdagrad(0.1),
    "adam": lambda: kee.optimizers.Adam(0.01),
    "ftrl": lambda: kee.optimizers.Ftrl(0.1),
}


@pytest.fixture(autouse=True)
def float32_policy():
    yield
    keras.config.set_dtype_policy("float32")


def data(seed=0, steps=3):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, V // 2, (B, L)).astype("int32"), rng.standard_normal((B, 1)).astype("float32"))
            for _ in range(steps)]


def tables_layer(kind, row_optimizer, initial):
    """A `kee.Embedding` bag layer, or a `DistributedEmbedding` of one feature, over `initial`."""
    if kind == "embedding":
        return kee.Embedding(V, D, weights=initial, combiner="sum", sparse_optimizer=row_optimizer)
    config = kee.TableConfig("items", V, D, optimizer=row_optimizer, combiner="sum",
                             initializer=keras.initializers.Constant(initial))
    return kee.DistributedEmbedding(kee.FeatureConfig("f", config, (B, L), (B, D)))


def trained_model(kind, row_optimizer, optimizer, batches, initial, policy="float32"):
    """Tables layer -> Dense(1), trained with `optimizer` one `train_on_batch` per batch."""
    keras.config.set_dtype_policy(policy)
    layer = tables_layer(kind, row_optimizer, initial)
    ids = keras.Input((L,), dtype="int32", batch_size=B)
    looked_up = layer(ids)
    keras.utils.set_random_seed(3)
    model = keras.Model(ids, keras.layers.Dense(1, dtype="float32")(looked_up))
    model.compile(optimizer, "mse")
    for x, y in batches:
        model.train_on_batch(x, y)
    keras.config.set_dtype_policy("float32")
    return model, layer


def table_of(layer):
    tables = layer.get_embedding_tables() if isinstance(layer, kee.DistributedEmbedding) else None
    return to_numpy(tables["items"] if tables else layer.embeddings)


def state_of(layer):
    return [to_numpy(v) for v in layer.row_optimizer_variables]


@pytest.mark.parametrize("kind", ["embedding", "distributed"])
@pytest.mark.parametrize("row_optimizer", sorted(ROW_OPTIMIZERS))
@pytest.mark.parametrize("scaling", ["loss_scale_factor", "mixed_float16", "loss_scale_optimizer"])
def test_loss_scaling_is_divided_out_of_the_rows_gradients(kind, row_optimizer, scaling):
    initial, batches = table(V, D) * 0.1, data()
    reference = table_of(trained_model(kind, ROW_OPTIMIZERS[row_optimizer](), "sgd", batches, initial)[1])
    optimizer, policy = {
        "loss_scale_factor": (keras.optimizers.SGD(loss_scale_factor=128.0), "float32"),
        "mixed_float16": ("sgd", "mixed_float16"),  # keras wraps it in a LossScaleOptimizer
        "loss_scale_optimizer": (keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD()), "float32"),
    }[scaling]
    model, layer = trained_model(kind, ROW_OPTIMIZERS[row_optimizer](), optimizer, batches, initial, policy)
    tolerance = 3e-3 if policy == "mixed_float16" else 1e-5
    assert np.abs(reference - initial).max() > 5 * tolerance
    np.testing.assert_allclose(table_of(layer), reference, atol=tolerance)
    assert float(to_numpy(layer.row_optimizer_variables[-1])) == len(batches)


@pytest.mark.parametrize("row_optimizer", ["sgd", "adagrad"])
def test_a_scaled_loss_equals_keras_dense_optimizer_on_a_one_hot_lookup(row_optimizer):
    class OneHot(keras.layers.Layer):
        def build(self, _):
            self.table = self.add_weight(shape=(V, D), initializer=keras.initializers.Constant(initial))

        def call(self, ids):
            return keras.ops.sum(keras.ops.matmul(keras.ops.one_hot(ids, V), self.table), axis=-2)

    initial, batches = table(V, D) * 0.1, data()
    dense = {"sgd": keras.optimizers.SGD, "adagrad": keras.optimizers.Adagrad}[row_optimizer]
    reference = OneHot()
    ids = keras.Input((L,), dtype="int32", batch_size=B)
    looked_up = reference(ids)
    keras.utils.set_random_seed(3)
    model = keras.Model(ids, keras.layers.Dense(1)(looked_up))
    model.compile(dense(0.1, loss_scale_factor=64.0), "mse")
    for x, y in batches:
        model.train_on_batch(x, y)
    _, layer = trained_model("embedding", dense(0.1), dense(0.1, loss_scale_factor=64.0), batches, initial)
    np.testing.assert_allclose(table_of(layer), to_numpy(reference.table), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["embedding", "distributed"])
@pytest.mark.parametrize("row_optimizer", ["adam", "adagrad"])
def test_a_non_finite_gradient_skips_the_step_for_the_table_and_its_state(kind, row_optimizer):
    initial, batches = table(V, D) * 0.1, data()
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD())
    model, layer = trained_model(kind, ROW_OPTIMIZERS[row_optimizer](), optimizer, batches[:1], initial)
    before_table, before_state = table_of(layer), state_of(layer)
    scale = float(to_numpy(optimizer.dynamic_scale))
    x, y = batches[1]
    model.train_on_batch(x, np.full_like(y, np.inf))
    assert float(to_numpy(optimizer.dynamic_scale)) == scale / 2
    np.testing.assert_array_equal(table_of(layer), before_table)
    for before, after in zip(before_state, state_of(layer)):
        np.testing.assert_array_equal(after, before)
    model.train_on_batch(x, y)
    assert not np.allclose(table_of(layer), before_table)


def unused_table_model(kind, row_optimizer, how):
    """Two tables layers on the same ids; the second's output does not reach the loss."""
    used = tables_layer(kind, ROW_OPTIMIZERS[row_optimizer](), table(V, D, seed=1))
    unused = tables_layer(kind, ROW_OPTIMIZERS[row_optimizer](), table(V, D, seed=2))
    ids = keras.Input((L,), dtype="int32", batch_size=B)
    first, second = used(ids), unused(ids)
    if how == "stop_gradient":
        head = keras.layers.Dense(1)(keras.layers.Concatenate()([first, keras.ops.stop_gradient(second)]))
        model = keras.Model(ids, head)
        model.compile("sgd", "mse")
    else:  # a head whose loss weight is 0
        model = keras.Model(ids, [keras.layers.Dense(1)(first), keras.layers.Dense(1)(second)])
        model.compile("sgd", ["mse", "mse"], loss_weights=[1.0, 0.0])
    return model, used, unused


@pytest.mark.parametrize("kind", ["embedding", "distributed"])
@pytest.mark.parametrize("row_optimizer", sorted(ROW_OPTIMIZERS))
@pytest.mark.parametrize("how", ["stop_gradient", "zero_loss_weight"])
def test_a_table_whose_output_does_not_reach_the_loss_is_untouched(kind, row_optimizer, how):
    model, used, unused = unused_table_model(kind, row_optimizer, how)
    before_used, before_table, before_state = table_of(used), table_of(unused), state_of(unused)
    for x, y in data():
        model.train_on_batch(x, y if how == "stop_gradient" else [y, y])
    assert not np.allclose(table_of(used), before_used)
    np.testing.assert_array_equal(table_of(unused), before_table)
    for before, after in zip(before_state, state_of(unused)):
        np.testing.assert_array_equal(after, before)


@pytest.mark.parametrize("kind", ["embedding", "distributed"])
def test_only_training_steps_count_as_the_row_optimizers_steps(kind):
    initial, batches = table(V, D) * 0.1, data()
    reference = table_of(trained_model(kind, kee.optimizers.Adam(0.01), "sgd", batches, initial)[1])
    model, layer = trained_model(kind, kee.optimizers.Adam(0.01), "sgd", [], initial)
    for _ in range(3):
        model(batches[0][0], training=True)  # eager forward passes, no optimizer step
    assert float(to_numpy(layer.row_optimizer_variables[-1])) == 0
    for x, y in batches:
        model.train_on_batch(x, y)
    np.testing.assert_allclose(table_of(layer), reference, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["embedding", "distributed"])
@pytest.mark.parametrize(
    "optimizer, named",
    [
        (keras.optimizers.SGD(gradient_accumulation_steps=2), "gradient_accumulation_steps"),
        (keras.optimizers.SGD(clipnorm=1.0), "clipnorm"),
        (keras.optimizers.SGD(clipvalue=1.0), "clipvalue"),
        (keras.optimizers.Adam(global_clipnorm=1.0), "global_clipnorm"),
        (keras.optimizers.SGD(use_ema=True), "use_ema"),
        (keras.optimizers.AdamW(), "weight_decay"),
        (keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(clipnorm=1.0)), "clipnorm"),
    ],
)
@pytest.mark.parametrize("row_optimizer", sorted(ROW_OPTIMIZERS))
def test_what_a_row_update_cannot_honour_is_refused_naming_the_setting_and_table(kind, optimizer, named,
                                                                                   row_optimizer):
    model, layer = trained_model(kind, ROW_OPTIMIZERS[row_optimizer](), "sgd", [], table(V, D))
    model.compile(optimizer, "mse")
    x, y = data()[0]
    before = table_of(layer)
    with pytest.raises(ValueError, match=rf"(?s)Table '.*embeddings'.*`{named}="):
        model.train_on_batch(x, y)
    np.testing.assert_array_equal(table_of(layer), before)


def test_weight_decay_that_excludes_the_table_is_honoured():
    # One step: the table's update reads the Dense kernel before either optimizer moves it.
    initial, batches = table(V, D) * 0.1, data(steps=1)
    reference = table_of(trained_model("embedding", kee.optimizers.SGD(0.5), "adam", batches, initial)[1])
    optimizer = keras.optimizers.AdamW(weight_decay=0.5)
    optimizer.exclude_from_weight_decay(var_names=["embeddings"])
    _, layer = trained_model("embedding", kee.optimizers.SGD(0.5), optimizer, batches, initial)
    assert not np.allclose(reference, initial)
    np.testing.assert_allclose(table_of(layer), reference, rtol=1e-6, atol=1e-7)


def test_a_file_of_another_row_optimizer_is_refused_naming_both(tmp_path):
    ids = data()[0][0]
    adam = kee.Embedding(V, D, sparse_optimizer="adam")
    adam(ids)
    path = str(tmp_path / "adam.weights.h5")
    keras.Sequential([keras.Input((L,), dtype="int32"), adam]).save_weights(path)
    ftrl = kee.Embedding(V, D, sparse_optimizer="ftrl")
    model = keras.Sequential([keras.Input((L,), dtype="int32"), ftrl])
    with pytest.raises(ValueError, match=r"(?s)Ftrl\(accumulator, linear\).*Adam\(momentum, velocity\)"):
        model.load_weights(path)
    same = keras.Sequential([keras.Input((L,), dtype="int32"), kee.Embedding(V, D, sparse_optimizer="adam")])
    same.load_weights(path)


@pytest.mark.parametrize("optimizer", ["adagrad", "adam"])
def test_a_table_called_twice_and_trained_by_the_models_optimizer_equals_the_one_hot_reference(optimizer):
    initial = table(V, D) * 0.1
    rng = np.random.default_rng(4)
    history, target = rng.integers(0, V // 2, (B, L)), rng.integers(0, V // 2, (B, 1))
    y = rng.standard_normal((B, 1)).astype("float32")

    class OneHot(keras.layers.Layer):
        def build(self, _):
            self.table = self.add_weight(shape=(V, D), initializer=keras.initializers.Constant(initial))

        def call(self, ids):
            return keras.ops.matmul(keras.ops.one_hot(ids, V), self.table)

    def trained(lookup):
        a, b = keras.Input((L,), dtype="int32"), keras.Input((1,), dtype="int32")
        both = keras.layers.Concatenate()([keras.layers.Flatten()(lookup(a)), keras.layers.Flatten()(lookup(b))])
        keras.utils.set_random_seed(5)
        model = keras.Model([a, b], keras.layers.Dense(1)(both))
        model.compile(optimizer, "mse")
        for _ in range(3):
            model.train_on_batch([history, target], y)
        return to_numpy(lookup.embeddings if isinstance(lookup, kee.Embedding) else lookup.table)

    np.testing.assert_allclose(trained(kee.Embedding(V, D, weights=initial)), trained(OneHot()), rtol=1e-5,
                               atol=1e-6)


def test_two_different_tables_with_one_name_are_refused_whatever_the_stacking():
    first, second = kee.TableConfig("items", V, D), kee.TableConfig("items", V + 1, D)
    features = {"a": kee.FeatureConfig("a", first, (B,), (B, D)), "b": kee.FeatureConfig("b", second, (B,), (B, D))}
    for stacking in ("auto", None, ["items"]):
        with pytest.raises(ValueError, match="two different tables are named \\['items'\\]"):
            kee.DistributedEmbedding(features, table_stacking=stacking).build({"a": (B,), "b": (B,)})


if BACKEND != "torch":  # keras' torch trainer takes steps_per_execution=1 only

    @pytest.mark.parametrize("kind", ["embedding", "distributed"])
    def test_steps_per_execution_counts_each_step(kind):
        initial, batches = table(V, D) * 0.1, data(steps=4)
        reference = table_of(trained_model(kind, kee.optimizers.Adam(0.01), "sgd", batches, initial)[1])
        model, layer = trained_model(kind, kee.optimizers.Adam(0.01), "sgd", [], initial)
        model.compile("sgd", "mse", steps_per_execution=2)
        x = np.concatenate([x for x, _ in batches])
        y = np.concatenate([y for _, y in batches])
        model.fit(x, y, batch_size=B, shuffle=False, verbose=0)
        assert float(to_numpy(layer.row_optimizer_variables[-1])) == len(batches)
        np.testing.assert_allclose(table_of(layer), reference, rtol=1e-5, atol=1e-6)

"""`kee.DistributedEmbedding`: many features over shared, stacked tables, against numpy
lookups and keras' own dense optimizers on a one-hot lookup of the same tables."""

import keras
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import keras_embed_ext as kee
from conftest import BACKEND, table, to_numpy, traced

B, L = 6, 4


def configs(optimizer="sgd", dims=(4, 4, 6), combiners=("mean", "sum", "sqrtn"), sizes=(13, 7, 9)):
    """Four features over three tables; "a" and "bag_a" share table "ta"."""
    tables = [kee.TableConfig(f"t{name}", size, dim, optimizer=optimizer, combiner=combiner,
                              initializer=keras.initializers.RandomNormal(seed=i))
              for i, (name, size, dim, combiner) in enumerate(zip("abc", sizes, dims, combiners))]
    ta, tb, tc = tables
    return {
        "a": kee.FeatureConfig("a", ta, (B,), (B, ta.embedding_dim)),
        "bag_a": kee.FeatureConfig("bag_a", ta, (B, L), (B, ta.embedding_dim)),
        "bag_b": kee.FeatureConfig("bag_b", tb, (B, L), (B, tb.embedding_dim)),
        "c": kee.FeatureConfig("c", tc, (B,), (B, tc.embedding_dim)),
    }


def inputs(feature_configs, seed=0, high=None):
    rng = np.random.default_rng(seed)
    return {name: rng.integers(0, high or f.table.vocabulary_size, f.input_shape).astype("int32")
            for name, f in feature_configs.items()}


def reduce(rows, combiner, weights=None):
    """numpy: a bag's rows `(..., L, D)` reduced as a combiner with per-id weights."""
    weights = np.ones(rows.shape[:-1], "float32") if weights is None else weights
    total = (rows * weights[..., None]).sum(-2)
    norm = {"sum": None, "mean": weights.sum(-1), "sqrtn": np.sqrt((weights**2).sum(-1))}[combiner]
    return total if norm is None else total / np.where(norm == 0, 1, norm)[..., None]


def expected(layer, ids, weights=None):
    tables = {name: to_numpy(t) for name, t in layer.get_embedding_tables().items()}
    out = {}
    for name, feature in layer.feature_configs.items():
        rows = tables[feature.table.name][ids[name]]
        w = None if weights is None else weights[name]
        if rows.ndim == 2:
            out[name] = rows * (w[:, None] if w is not None and feature.table.combiner == "sum" else 1)
        else:
            out[name] = reduce(rows, feature.table.combiner, w)
    return out


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), stacking=st.sampled_from(["auto", None, ["ta", "tb"]]),
       weighted=st.booleans())
def test_each_feature_is_its_tables_rows_reduced_by_its_combiner(seed, stacking, weighted):
    feature_configs = configs()
    layer = kee.DistributedEmbedding(feature_configs, table_stacking=stacking)
    ids = inputs(feature_configs, seed)
    rng = np.random.default_rng(seed + 1)
    weights = {n: rng.uniform(0, 2, x.shape).astype("float32") for n, x in ids.items()} if weighted else None
    outputs = layer(ids, weights=weights)
    assert set(outputs) == set(feature_configs)
    for name, value in expected(layer, ids, weights).items():
        np.testing.assert_allclose(to_numpy(outputs[name]), value, rtol=1e-5, atol=1e-6)


def test_tables_of_one_dim_and_optimizer_share_a_stacked_variable():
    feature_configs = configs()
    layer = kee.DistributedEmbedding(feature_configs)
    layer(inputs(feature_configs))
    assert [v.path.split("/", 1)[1] for v in layer.weights] == ["ta_tb/embeddings", "tc/embeddings"]
    assert [tuple(v.shape) for v in layer.weights if "ta_tb" in v.path] == [(13 + 7, 4)]
    separate = kee.DistributedEmbedding(feature_configs, table_stacking=None)
    separate(inputs(feature_configs))
    assert len(separate.weights) == 3
    mixed = configs()
    mixed["bag_b"].table.optimizer = "adagrad"
    assert len(kee.DistributedEmbedding(mixed)._stacks) == 3


def test_each_table_is_initialized_with_its_own_shape():
    calls = []

    class Recording(keras.initializers.Initializer):
        def __call__(self, shape, dtype=None):
            calls.append(tuple(shape))
            return keras.ops.ones(shape, dtype) * len(calls)

    tables = [kee.TableConfig(name, size, 3, initializer=Recording(), optimizer="sgd") for name, size in
              (("x", 5), ("y", 8))]
    layer = kee.DistributedEmbedding({n: kee.FeatureConfig(n, t, (2,), (2, 3)) for n, t in zip("xy", tables)})
    layer.build()
    assert calls == [(5, 3), (8, 3)]
    got = {name: to_numpy(t) for name, t in layer.get_embedding_tables().items()}
    np.testing.assert_array_equal(got["x"], np.ones((5, 3)))
    np.testing.assert_array_equal(got["y"], 2 * np.ones((8, 3)))


class DenseTables(keras.layers.Layer):
    """The reference: each table a dense variable read by `one_hot(ids) @ table`, each
    feature reduced in numpy's way, so keras' optimizer gets the dense gradient."""

    def __init__(self, feature_configs, initial, **kwargs):
        super().__init__(**kwargs)
        self.feature_configs, self.initial = feature_configs, initial

    def build(self, input_shape=None):
        self.tables = {}
        for name, values in self.initial.items():
            self.tables[name] = self.add_weight(shape=values.shape, initializer="zeros", name=name)
            self.tables[name].assign(values)

    def call(self, ids):
        out = {}
        for name, feature in self.feature_configs.items():
            t = feature.table
            rows = keras.ops.matmul(keras.ops.one_hot(ids[name], t.vocabulary_size), self.tables[t.name])
            if len(rows.shape) == 3:
                n = rows.shape[1]
                rows = keras.ops.sum(rows, axis=1) / {"sum": 1.0, "mean": n, "sqrtn": n**0.5}[t.combiner]
            out[name] = rows
        return out


def train(layer, feature_configs, steps, optimizer):
    """Two losses over the outputs (MSE against fixed targets), `train_on_batch` per step."""
    ids_in = {n: keras.Input(f.input_shape[1:], dtype="int32", name=n) for n, f in feature_configs.items()}
    outputs = layer(ids_in)
    joined = keras.layers.Concatenate()([outputs[n] for n in sorted(outputs)])
    model = keras.Model(ids_in, joined)
    model.compile(optimizer, "mse")
    rng = np.random.default_rng(9)
    width = sum(f.table.embedding_dim for f in feature_configs.values())
    for ids in steps:
        model.train_on_batch(ids, rng.standard_normal((B, width)).astype("float32"))
    return model


@pytest.mark.parametrize(
    "ours, theirs",
    [("sgd", lambda: keras.optimizers.SGD(0.01)),
     (keras.optimizers.Adagrad(0.5), lambda: keras.optimizers.Adagrad(0.5)),
     (keras.optimizers.Ftrl(0.2, l1_regularization_strength=0.01), lambda: keras.optimizers.Ftrl(
         0.2, l1_regularization_strength=0.01))],
)
def test_training_equals_keras_dense_optimizers_on_the_rows_looked_up(ours, theirs):
    # The shared table "ta" gets one update from both features' summed gradient.
    feature_configs = configs(optimizer=ours, dims=(4, 4, 4))
    layer = kee.DistributedEmbedding(feature_configs)
    steps = [inputs(feature_configs, seed, high=5) for seed in range(3)]
    layer(steps[0])
    initial = {name: to_numpy(t) for name, t in layer.get_embedding_tables().items()}
    reference = DenseTables(feature_configs, initial)
    train(reference, feature_configs, steps, theirs())
    train(layer, feature_configs, steps, "adam")  # the model's optimizer has nothing else to train
    first = {t: set() for t in initial}
    for name, f in feature_configs.items():
        first[f.table.name] |= set(np.unique(steps[0][name]))
    for name, trained in layer.get_embedding_tables().items():
        trained = to_numpy(trained)
        rows = sorted(first[name])  # FTRL: keras' dense Ftrl zeroes rows its first step does not reach
        np.testing.assert_allclose(trained[rows], to_numpy(reference.tables[name])[rows], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(trained[5:], initial[name][5:])  # ids < 5: the other rows stay
        assert not np.allclose(trained[rows], initial[name][rows])


def test_stacking_is_invisible_to_training():
    feature_configs = configs(optimizer="adam", dims=(4, 4, 4))
    steps = [inputs(feature_configs, seed) for seed in range(3)]
    results = []
    for stacking in ("auto", None):
        keras.utils.set_random_seed(1)
        layer = kee.DistributedEmbedding(feature_configs, table_stacking=stacking)
        layer(steps[0])
        if results:
            layer.set_weights(results[0][0])
        initial = layer.get_weights()
        train(layer, feature_configs, steps, "sgd")
        results.append((initial, layer.get_weights()))
    for ours, theirs in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)


def test_the_optimizer_state_is_not_counted_as_parameters():
    feature_configs = configs(optimizer="adam")
    model = train(kee.DistributedEmbedding(feature_configs), feature_configs, [inputs(feature_configs)], "sgd")
    assert model.count_params() == (13 + 7) * 4 + 9 * 6
    layer = model.layers[-2] if isinstance(model.layers[-2], kee.DistributedEmbedding) else next(
        l for l in model.layers if isinstance(l, kee.DistributedEmbedding))
    assert sum(int(np.prod(v.shape)) for v in layer.row_optimizer_variables) == 2 * ((13 + 7) * 4 + 9 * 6) + 2


def test_saved_model_resumes_training_bit_exact(tmp_path):
    feature_configs = configs(optimizer="adagrad")
    steps = [inputs(feature_configs, seed) for seed in range(4)]
    model = train(kee.DistributedEmbedding(feature_configs), feature_configs, steps[:2], "adam")
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    y = np.random.default_rng(3).standard_normal((B, 18)).astype("float32")
    for m in (model, restored):
        for ids in steps[2:]:
            m.train_on_batch(ids, y)
    for ours, theirs in zip(model.get_weights(), restored.get_weights()):
        np.testing.assert_array_equal(ours, theirs)
    layer = next(l for l in restored.layers if isinstance(l, kee.DistributedEmbedding))
    ours = next(l for l in model.layers if isinstance(l, kee.DistributedEmbedding))
    for a, b in zip(ours.row_optimizer_variables, layer.row_optimizer_variables):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    assert layer.feature_configs["a"].table is layer.feature_configs["bag_a"].table


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_tables_serve_and_lora_fine_tunes(mode):
    feature_configs = configs()
    layer = kee.DistributedEmbedding(feature_configs)
    ids = inputs(feature_configs)
    float_outputs = {n: to_numpy(x) for n, x in layer(ids).items()}
    layer.quantize(mode)
    assert all(stack.quantization_mode == mode for stack in layer._stacks)
    quantized = layer(ids)
    for name, value in expected(layer, ids).items():  # the decoded tables, reduced
        np.testing.assert_allclose(to_numpy(quantized[name]), value, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(to_numpy(quantized[name]), float_outputs[name], atol=0.2)
    layer.enable_lora(2)
    for name, value in layer(ids).items():  # B starts at zero
        np.testing.assert_allclose(to_numpy(value), to_numpy(quantized[name]), rtol=1e-6, atol=1e-6)
    assert {v.path.split("/")[-1] for v in layer.trainable_weights} == {"lora_embeddings_a", "lora_embeddings_b"}


def test_bad_ids_and_inputs_are_named():
    feature_configs = configs()
    layer = kee.DistributedEmbedding(feature_configs)
    ids = inputs(feature_configs)
    ids["bag_b"][1, 2] = 7  # table "tb" has 7 rows
    with pytest.raises(ValueError, match=r"Feature 'bag_b' of DistributedEmbedding .* got id 7 at position \(1, 2\)"):
        layer(ids)
    zero = kee.DistributedEmbedding(feature_configs, invalid_ids="zero")
    out = zero(ids)
    ids["bag_b"][1, 2] = 0
    rows = to_numpy(zero.get_embedding_tables()["tb"])[ids["bag_b"][1]]
    np.testing.assert_allclose(to_numpy(out["bag_b"])[1], rows[[0, 1, 3]].sum(0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="structure of its feature configs"):
        layer({"a": ids["a"]})


@pytest.mark.parametrize("combiner", ["mean", "sqrtn"])
@pytest.mark.parametrize("call", ["eager", "traced"])
def test_an_invalid_id_counts_in_no_bag(combiner, call):
    feature_configs = configs(combiners=(combiner, combiner, combiner))
    layer = kee.DistributedEmbedding(feature_configs, invalid_ids="zero")
    ids = inputs(feature_configs)
    ids["bag_a"][2, 1] = 13  # table "ta" has 13 rows
    ids["bag_b"][3, :] = -1  # a bag of no valid id
    layer(ids)
    if call == "traced":
        outputs = traced(lambda x: layer(x))({n: keras.ops.convert_to_tensor(x) for n, x in ids.items()})
    else:
        outputs = layer(ids)
    valid = {n: ((x >= 0) & (x < feature_configs[n].table.vocabulary_size)) for n, x in ids.items()}
    safe_ids = {n: np.where(valid[n], x, 0) for n, x in ids.items()}
    reference = expected(layer, safe_ids, {n: v.astype("float32") for n, v in valid.items()})
    for name in ("bag_a", "bag_b"):
        np.testing.assert_allclose(to_numpy(outputs[name]), reference[name], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(to_numpy(outputs["bag_b"])[3], 0)


@pytest.mark.parametrize(
    "change, named",
    [({"optimizer": keras.optimizers.RMSprop()}, "Table 'ta'.*sparse_optimizer"),
     ({"optimizer": keras.optimizers.SGD(momentum=0.9)}, "momentum"),
     ({"placement": "sparsecore"}, "placement"),
     ({"combiner": "max"}, "combiner"),
     ({"vocabulary_size": 0}, "vocabulary_size")],
)
def test_what_cannot_be_honoured_is_an_error_naming_it(change, named):
    feature_configs = configs()
    for key, value in change.items():
        setattr(feature_configs["a"].table, key, value)
    with pytest.raises(ValueError, match=named):
        kee.DistributedEmbedding(feature_configs)


def test_stacking_lists_and_their_errors():
    feature_configs = configs(dims=(4, 4, 6))
    assert [s.name for s in kee.DistributedEmbedding(feature_configs, table_stacking=[["tb"], ["ta"]])._stacks] == [
        "tb", "ta", "tc"]
    with pytest.raises(ValueError, match="cannot share a stack"):
        kee.DistributedEmbedding(feature_configs, table_stacking=["ta", "tc"])
    with pytest.raises(ValueError, match="'tz' is not a table"):
        kee.DistributedEmbedding(feature_configs, table_stacking=["ta", "tz"])


def test_config_round_trip_keeps_shared_tables():
    layer = kee.DistributedEmbedding(configs(), table_stacking=None, name="features")
    config = layer.get_config()
    assert config["feature_configs"]["bag_a"]["table"] == config["feature_configs"]["a"]["table"] == 0
    again = kee.DistributedEmbedding.from_config(config)
    assert again.feature_configs["a"].table is again.feature_configs["bag_a"].table
    assert again.get_config() == config


if BACKEND in ("tensorflow", "jax"):

    def test_sparse_bags_equal_dense_bags_with_zero_weights():
        feature_configs = configs()
        layer = kee.DistributedEmbedding(feature_configs)
        ids = inputs(feature_configs)
        present = np.random.default_rng(4).random((B, L)) < 0.6
        present[:, 0] = True
        weights = {n: (present if x.ndim == 2 else np.ones(x.shape, bool)).astype("float32") for n, x in ids.items()}
        dense = layer(ids, weights=weights)
        indices = np.argwhere(present)
        if BACKEND == "tensorflow":
            import tensorflow as tf

            bags = tf.SparseTensor(indices, ids["bag_b"][present], (B, L))
        else:
            from jax.experimental import sparse as jax_sparse

            bags = jax_sparse.BCOO((ids["bag_b"][present], indices), shape=(B, L))
        # keras takes a nested argument of tensors only, or of host arrays only.
        tensors = {n: keras.ops.convert_to_tensor(x) for n, x in ids.items()}
        sparse_out = layer({**tensors, "bag_b": bags})
        np.testing.assert_allclose(to_numpy(sparse_out["bag_b"]), to_numpy(dense["bag_b"]), rtol=1e-5, atol=1e-6)


def keras_rs_configs():
    keras_rs = pytest.importorskip("keras_rs", reason="keras-rs is not installed: pip install keras-rs")
    ta = keras_rs.layers.TableConfig("ta", 13, 4, optimizer="adagrad", combiner="mean")
    tb = keras_rs.layers.TableConfig("tb", 7, 4, optimizer="sgd", combiner="sum")
    return keras_rs, {
        "a": keras_rs.layers.FeatureConfig("a", ta, (B,), (B, 4)),
        "bag_a": keras_rs.layers.FeatureConfig("bag_a", ta, (B, L), (B, 4)),
        "bag_b": keras_rs.layers.FeatureConfig("bag_b", tb, (B, L), (B, 4)),
    }


def test_keras_rs_configs_switch_by_import_and_weights_move_both_ways():
    keras_rs, feature_configs = keras_rs_configs()
    ids = inputs(feature_configs)
    theirs = keras_rs.layers.DistributedEmbedding(feature_configs)
    ours = kee.DistributedEmbedding(feature_configs)
    theirs(ids), ours(ids)
    assert ours.feature_configs["a"].table is ours.feature_configs["bag_a"].table
    assert [t.optimizer for t in ours._features.tables] == ["adagrad", "sgd"]
    ours.set_weights(theirs.get_weights())
    for name, value in theirs(ids).items():
        np.testing.assert_allclose(to_numpy(ours(ids)[name]), to_numpy(value), rtol=1e-5, atol=1e-6)
    rng = np.random.default_rng(5)
    ours.set_weights([rng.standard_normal(w.shape).astype("float32") for w in ours.get_weights()])
    theirs.set_weights(ours.get_weights())
    for name, value in ours(ids).items():
        np.testing.assert_allclose(to_numpy(theirs(ids)[name]), to_numpy(value), rtol=1e-5, atol=1e-6)
    their_tables = {n: to_numpy(t) for n, t in theirs.get_embedding_tables().items()}
    for name, table_values in ours.get_embedding_tables().items():
        np.testing.assert_array_equal(to_numpy(table_values), their_tables[name])


if BACKEND == "tensorflow":

    def test_ragged_bags_equal_dense_bags_with_zero_weights():
        import tensorflow as tf

        feature_configs = configs()
        feature_configs["bag_b"] = kee.FeatureConfig("bag_b", feature_configs["bag_b"].table, (B, None), (B, 4))
        layer = kee.DistributedEmbedding(feature_configs)
        ids = inputs(configs())
        lengths = np.array([4, 1, 3, 2, 4, 1])
        present = np.arange(L)[None, :] < lengths[:, None]
        weights = {n: (present if x.ndim == 2 and n == "bag_b" else np.ones(x.shape, bool)).astype("float32")
                   for n, x in ids.items()}
        dense = layer(ids, weights=weights)
        ragged = tf.RaggedTensor.from_tensor(ids["bag_b"], lengths=lengths)
        tensors = {n: tf.constant(x) for n, x in ids.items()}
        out = layer({**tensors, "bag_b": ragged})
        np.testing.assert_allclose(to_numpy(out["bag_b"]), to_numpy(dense["bag_b"]), rtol=1e-5, atol=1e-6)

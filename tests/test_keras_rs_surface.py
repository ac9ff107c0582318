"""keras-rs 0.4.0's surface: `DistributedEmbedding.preprocess()`, the input shapes
keras-rs takes, `update_stats`, `kee.EmbedReduce`, and the errors of bad configs,
against numpy references."""

import json
import math

import keras
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import keras_embed_ext as kee
from conftest import BACKEND, to_numpy
from keras_embed_ext import sparse

B, V, D = 8, 23, 5


def one_table_layer(input_shape, combiner="sum"):
    table = kee.TableConfig("t", V, D, combiner=combiner)
    return kee.DistributedEmbedding({"f": kee.FeatureConfig("f", table, input_shape, (B, D))})


def bag_reference(layer, ids, weights, combiner):
    rows = to_numpy(layer.get_embedding_tables()["t"])[ids]
    weights = np.ones(ids.shape, "float32") if weights is None else weights
    total = (rows * weights[..., None]).sum(-2)
    norm = {"sum": 1.0, "mean": weights.sum(-1), "sqrtn": np.sqrt((weights**2).sum(-1))}[combiner]
    return total / np.asarray(norm)[..., None]


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), width=st.integers(1, 6), weighted=st.booleans(),
       combiner=st.sampled_from(["sum", "mean", "sqrtn"]))
def test_preprocessed_inputs_give_the_direct_calls_output(seed, width, weighted, combiner):
    rng = np.random.default_rng(seed)
    layer = one_table_layer((B, 6), combiner)
    ids = {"f": rng.integers(0, V, (B, width)).astype("int32")}
    weights = {"f": rng.uniform(0.5, 2.0, (B, width)).astype("float32")} if weighted else None
    direct = to_numpy(layer(ids, weights)["f"])
    expected = bag_reference(layer, ids["f"], None if weights is None else weights["f"], combiner)
    np.testing.assert_allclose(direct, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(layer(layer.preprocess(ids, weights, training=True))["f"]), expected,
                               rtol=1e-5, atol=1e-6)


def test_a_model_built_on_preprocessed_inputs_trains_on_preprocessed_batches():
    layer = one_table_layer((B, 4))
    inputs = layer.preprocess({"f": keras.Input((4,), dtype="int32", batch_size=B)})
    model = keras.Model(inputs, layer(inputs))
    model.compile("sgd", "mse")
    ids = {"f": np.random.default_rng(0).integers(0, V, (B, 4)).astype("int32")}
    before = to_numpy(layer.get_embedding_tables()["t"]).copy()
    model.fit(layer.preprocess(ids, training=True), {"f": np.ones((B, D), "float32")}, verbose=0)
    assert not np.allclose(to_numpy(layer.get_embedding_tables()["t"]), before)


if BACKEND == "tensorflow":  # ragged ids are TensorFlow's; JAX's preprocess densifies them

    def test_ragged_bags_become_dense_bags_of_weight_zero_padding():
        import tensorflow as tf

        ragged = tf.ragged.constant([[1], [2, 3, 4]])
        ragged_weights = tf.ragged.constant([[2.0], [1.0, 0.5, 3.0]])
        ids, weights = sparse.ragged_to_dense_bags([ragged, np.array([7, 8])], [ragged_weights, None], [4, None])
        np.testing.assert_array_equal(ids[0], [[1, 0, 0, 0], [2, 3, 4, 0]])
        np.testing.assert_array_equal(weights[0], [[2.0, 0, 0, 0], [1.0, 0.5, 3.0, 0]])
        np.testing.assert_array_equal(weights[1], [1.0, 1.0])
        _, unweighted = sparse.ragged_to_dense_bags([ragged], None, [3])
        np.testing.assert_array_equal(unweighted[0], [[1, 0, 0], [1, 1, 1]])


@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
def test_one_id_per_example_for_a_bag_of_one_and_bags_narrower_than_the_input_shape(combiner):
    rng = np.random.default_rng(1)
    layer = one_table_layer((B, 1), combiner)
    ids = rng.integers(0, V, (B,)).astype("int32")
    out = to_numpy(layer({"f": ids})["f"])
    table = to_numpy(layer.get_embedding_tables()["t"])
    np.testing.assert_allclose(out, table[ids], rtol=1e-6)
    wide = one_table_layer((B, 13), combiner)
    narrow = rng.integers(0, V, (B, 4)).astype("int32")
    out = to_numpy(wide({"f": narrow})["f"])
    np.testing.assert_allclose(out, bag_reference(wide, narrow, None, combiner), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(B, 4, 2), (B, 5)])
def test_ids_of_another_shape_are_refused_on_every_call(shape):
    layer = one_table_layer((B, 4))
    layer({"f": np.zeros((B, 4), "int32")})
    with pytest.raises(ValueError, match=r"Feature 'f' of DistributedEmbedding layer .* expects ids of shape \(8, 4\)"):
        layer({"f": np.zeros(shape, "int32")})


def test_update_stats_as_keras_rs_treats_it_per_backend():
    features = {"f": kee.FeatureConfig("f", kee.TableConfig("t", V, D), (B,), (B, D))}
    if BACKEND == "tensorflow":
        with pytest.raises(ValueError, match="update_stats"):
            kee.DistributedEmbedding(features, update_stats=True)
    else:
        assert kee.DistributedEmbedding(features, update_stats=True).update_stats is True


@pytest.mark.parametrize("config, named", [
    (lambda t: {"f": kee.FeatureConfig("f", t, (B,), (B, D + 1))}, "Feature 'f': the last dimension of `output_shape`"),
    (lambda t: {"f": kee.FeatureConfig("f", kee.TableConfig("t", V, D, optimizer=keras.optimizers.Adagrad(
        learning_rate=lambda: 0.1)), (B,), (B, D))}, "Table 't': .*a callable is neither"),
])
def test_bad_configs_name_the_feature_or_table(config, named):
    with pytest.raises(ValueError, match=named):
        kee.DistributedEmbedding(config(kee.TableConfig("t", V, D)))


@pytest.mark.parametrize("stacking", [[], [[]], ["ta", ["tb"]]])
def test_bad_table_stacking_is_named(stacking):
    tables = [kee.TableConfig(name, V, D) for name in ("ta", "tb")]
    features = {t.name: kee.FeatureConfig(t.name, t, (B,), (B, D)) for t in tables}
    with pytest.raises(ValueError, match=r"`table_stacking` must be .*Tables: \['ta', 'tb'\]"):
        kee.DistributedEmbedding(features, table_stacking=stacking)


def test_a_missing_feature_and_bad_weights_are_named():
    tables = [kee.TableConfig(name, V, D, combiner="sum") for name in ("ta", "tb")]
    layer = kee.DistributedEmbedding({t.name: kee.FeatureConfig(t.name, t, (B, 3), (B, D)) for t in tables})
    ids = np.zeros((B, 3), "int32")
    with pytest.raises(ValueError, match=r"Missing: \['tb'\]; not a feature: \['tc'\]"):
        layer({"ta": ids, "tc": ids})
    with pytest.raises(ValueError, match=r"^Feature 'ta' of DistributedEmbedding layer '[^']+' needs per-id"):
        try:
            layer({"ta": ids, "tb": ids}, {"ta": np.ones((B, 2), "float32"), "tb": np.ones((B, 3), "float32")})
        except ValueError as error:  # keras adds its "Exception encountered" frame around the message
            raise ValueError(str(error).split("\x1b[1m")[-1]) from None


def test_table_sizes_given_as_numpy_integers_save(tmp_path):
    table = kee.TableConfig("t", np.int64(V), np.int32(D))
    layer = kee.DistributedEmbedding({"f": kee.FeatureConfig("f", table, (B,), (B, D))})
    ids = keras.Input((), dtype="int32", batch_size=B)
    model = keras.Model(ids, layer({"f": ids})["f"])
    json.dumps(model.get_config())
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(to_numpy(loaded.predict(np.arange(B), verbose=0)),
                                  to_numpy(model.predict(np.arange(B), verbose=0)))


@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
@pytest.mark.parametrize("weighted", [False, True])
def test_embed_reduce_reduces_bags_and_leaves_one_id_per_example(combiner, weighted):
    layer = kee.EmbedReduce(10, 4, combiner=combiner)
    bags, bag_weights = np.array([[1, 2], [3, 4]]), np.array([[1.0, 2.0], [3.0, 4.0]], "float32")
    out = to_numpy(layer(bags, bag_weights if weighted else None))
    table = to_numpy(layer.embeddings)
    w = bag_weights if weighted else np.ones((2, 2), "float32")
    norm = {"sum": np.ones(2), "mean": w.sum(-1), "sqrtn": np.sqrt((w**2).sum(-1))}[combiner]
    np.testing.assert_allclose(out, (table[bags] * w[..., None]).sum(1) / norm[:, None], rtol=1e-5, atol=1e-6)
    single, single_weights = np.array([1, 2]), np.array([1.0, 2.0], "float32")
    scale = single_weights if weighted and combiner == "sum" else np.ones(2)  # keras-rs: weights only for "sum"
    np.testing.assert_allclose(to_numpy(layer(single, single_weights if weighted else None)),
                               table[single] * scale[:, None], rtol=1e-6)
    bag_weight = np.array([2.0, 0.5], "float32")  # one weight per bag, for each of its ids
    expected = to_numpy(layer(bags, np.repeat(bag_weight[:, None], 2, axis=1)))
    np.testing.assert_allclose(to_numpy(layer(bags, bag_weight)), expected, rtol=1e-6)


def test_embed_reduce_in_models_config_and_files(tmp_path):
    rank_one = keras.Input((), dtype="int32")
    assert tuple(kee.EmbedReduce(10, 20, dtype="float32")(rank_one).shape) == (None, 20)
    layer = kee.EmbedReduce(10, 20, combiner="sqrtn")
    assert keras.layers.deserialize(keras.layers.serialize(layer)).get_config() == layer.get_config()
    with pytest.raises(ValueError, match="Invalid `combiner`: 'max'"):
        kee.EmbedReduce(10, 20, combiner="max")
    model = keras.Sequential([keras.Input((7,), dtype="int32"), kee.EmbedReduce(10, 20)])
    ids = np.random.default_rng(0).integers(0, 10, (5, 7))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(loaded.predict(ids, verbose=0), model.predict(ids, verbose=0))
    model.quantize("int8")
    assert math.isfinite(float(np.abs(model.predict(ids, verbose=0)).max()))

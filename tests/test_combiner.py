"""Bag combiners against numpy reductions, in every storage state."""

import keras
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import keras_embed_ext as kee
from conftest import BACKEND, gradients, table, to_numpy, traced

V, D = 30, 6


def numpy_combine(rows, weights, combiner):
    total = (rows * weights[..., None]).sum(-2)
    if combiner == "sum":
        return total
    norm = weights.sum(-1) if combiner == "mean" else np.sqrt((weights ** 2).sum(-1))
    return total / np.where(norm == 0, 1, norm)[..., None]


def in_state(layer, state):
    if state.startswith("int"):
        layer.quantize(state.split("_")[0])
    if state.endswith("lora"):
        layer.enable_lora(2)
        layer.lora_embeddings_b.assign(np.random.default_rng(0).standard_normal((2, D)).astype("float32"))
    return layer


@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
@pytest.mark.parametrize("state", ["float", "lora", "int8", "int4", "int4_lora"])
def test_combiners_with_padding_and_empty_bags(combiner, state):
    layer = in_state(kee.Embedding(V, D, weights=table(V, D), mask_zero=True, combiner=combiner), state)
    ids = np.array([[3, 5, 0, 0], [0, 0, 0, 0], [7, 7, 7, 1], [29, 0, 2, 0]])
    effective = to_numpy(layer.embeddings)
    expected = numpy_combine(effective[ids], (ids != 0).astype("float32"), combiner)
    out = to_numpy(layer(ids))
    assert out.shape == (4, D)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out[1], np.zeros(D))
    assert layer.compute_mask(ids) is None


@settings(max_examples=20, deadline=None)
@given(data=st.data(), combiner=st.sampled_from(["sum", "mean", "sqrtn"]),
       shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5))
def test_any_rank_without_padding(data, combiner, shape):
    ids = data.draw(hnp.arrays("int32", shape, elements=st.integers(0, V - 1)))
    weights = table(V, D)
    out = to_numpy(kee.Embedding(V, D, weights=weights, combiner=combiner)(ids))
    assert out.shape == shape[:-1] + (D,)
    np.testing.assert_allclose(out, numpy_combine(weights[ids], np.ones(shape, "float32"), combiner), rtol=1e-5, atol=1e-6)


BAG_IDS = np.array([[3, 5, 0, 0], [0, 0, 0, 0], [7, 7, 7, 1], [29, 0, 2, 0]], dtype="int32")
BAG_WEIGHTS = np.array([[0.5, 2, 1, 1], [1, 1, 1, 1], [1, -1, 3, 0.25], [2, 9, 0.5, 1]], dtype="float32")


@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
@pytest.mark.parametrize("state", ["float", "lora", "int8", "int4", "int4_lora"])
def test_per_id_weights_with_padding(combiner, state):
    layer = in_state(kee.Embedding(V, D, weights=table(V, D), mask_zero=True, combiner=combiner), state)
    expected = numpy_combine(to_numpy(layer.embeddings)[BAG_IDS], BAG_WEIGHTS * (BAG_IDS != 0), combiner)
    np.testing.assert_allclose(to_numpy(layer(BAG_IDS, weights=BAG_WEIGHTS)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
@pytest.mark.parametrize("state", ["float", "int8"])
def test_compiled_bags_equal_numpy(combiner, state):
    layer = in_state(kee.Embedding(V, D, weights=table(V, D), mask_zero=True, combiner=combiner), state)
    expected = numpy_combine(to_numpy(layer.embeddings)[BAG_IDS], BAG_WEIGHTS * (BAG_IDS != 0), combiner)
    bags = traced(lambda ids, weights: layer(ids, weights=weights), compiled=True)
    out = to_numpy(bags(*map(keras.ops.convert_to_tensor, (BAG_IDS, BAG_WEIGHTS))))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("combiner", ["sum", "mean"])
def test_bag_gradient_is_each_ids_weighted_share_of_its_bag(combiner, compiled):
    layer = kee.Embedding(V, D, weights=table(V, D), mask_zero=True, combiner=combiner)
    upstream = np.random.default_rng(1).standard_normal((4, D)).astype("float32")
    share = BAG_WEIGHTS * (BAG_IDS != 0)
    if combiner == "mean":
        share = share / np.where(share.sum(-1) == 0, 1, share.sum(-1))[:, None]
    expected = np.zeros((V, D), dtype="float32")
    np.add.at(expected, BAG_IDS, share[..., None] * upstream[:, None, :])
    (gradient,) = gradients(layer, BAG_IDS, upstream, compiled=compiled, weights=BAG_WEIGHTS)
    np.testing.assert_allclose(gradient, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 0), (0, 4), (2, 0, 5)])
def test_empty_bags_and_no_bags(shape):
    layer = kee.Embedding(V, D, weights=table(V, D), combiner="mean")
    out = to_numpy(layer(np.zeros(shape, dtype="int32")))
    assert out.shape == shape[:-1] + (D,)
    np.testing.assert_array_equal(out, np.zeros(shape[:-1] + (D,)))


def test_invalid_ids_left_out_of_the_bag_with_zero_policy():
    weights = table(V, D)
    layer = kee.Embedding(V, D, weights=weights, combiner="mean", invalid_ids="zero")
    np.testing.assert_allclose(to_numpy(layer(np.array([[4, -1, 99, 6]])))[0], weights[[4, 6]].mean(0), rtol=1e-6)


def test_dropout_inside_a_bag():
    layer = kee.Embedding(1000, 2, weights=np.ones((1000, 2), "float32"), combiner="sum", dropout=0.5, seed=3)
    ids = np.arange(1000)[None]
    out = to_numpy(layer(ids, training=True))[0]
    per_row = to_numpy(kee.Embedding(1000, 2, weights=np.ones((1000, 2), "float32"), dropout=0.5, seed=3)(ids, training=True))
    np.testing.assert_allclose(out, per_row[0].sum(0), rtol=1e-6)
    np.testing.assert_allclose(to_numpy(layer(ids)), [[1000.0, 1000.0]])


def test_combiner_model_trains_and_output_shape():
    inputs = keras.Input((5,), dtype="int32")
    bag = kee.Embedding(V, D, combiner="sqrtn", mask_zero=True)
    model = keras.Model(inputs, keras.layers.Dense(1)(bag(inputs)))
    assert bag.compute_output_shape((None, 5)) == (None, D)
    model.compile("adam", "mse")
    history = model.fit(np.random.randint(0, V, (64, 5)), np.ones((64, 1)), epochs=2, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


if BACKEND == "tensorflow":
    def test_bag_gradient_of_the_table_stays_sparse():
        import tensorflow as tf

        layer = kee.Embedding(V, D, weights=table(V, D), combiner="mean", mask_zero=True)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(BAG_IDS, weights=BAG_WEIGHTS))
        assert isinstance(tape.gradient(loss, layer._embeddings.value), tf.IndexedSlices)

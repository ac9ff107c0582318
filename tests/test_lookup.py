"""Lookups against numpy and against keras.layers.Embedding with the same weights."""

import keras
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import keras_embed_ext as kee
from conftest import table, to_numpy

shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


@settings(max_examples=25, deadline=None)
@given(data=st.data(), input_dim=st.integers(1, 50), output_dim=st.integers(1, 9), shape=shapes)
def test_any_rank_matches_numpy_gather(data, input_dim, output_dim, shape):
    weights = table(input_dim, output_dim)
    ids = data.draw(hnp.arrays("int32", shape, elements=st.integers(0, input_dim - 1)))
    layer = kee.Embedding(input_dim, output_dim, weights=weights)
    out = to_numpy(layer(ids))
    assert out.shape == shape + (output_dim,)
    np.testing.assert_array_equal(out, weights[ids])


def test_int64_and_float_ids_are_looked_up_like_keras():
    weights = table(20, 3)
    ids = np.array([[0, 19, 7], [3, 3, 1]])
    layer = kee.Embedding(20, 3, weights=[weights])
    np.testing.assert_array_equal(to_numpy(layer(ids.astype("int64"))), weights[ids])
    np.testing.assert_array_equal(to_numpy(layer(ids.astype("float32") + 0.4)), weights[ids])


def test_same_output_as_keras_embedding_with_same_weights():
    weights = table(100, 8)
    ids = np.random.default_rng(1).integers(0, 100, size=(4, 6))
    ours = kee.Embedding(100, 8, weights=weights)
    theirs = keras.layers.Embedding(100, 8, weights=weights)
    np.testing.assert_array_equal(to_numpy(ours(ids)), to_numpy(theirs(ids)))


def test_one_training_step_equals_keras_embedding():
    weights = table(30, 4)
    rng = np.random.default_rng(2)
    # Every row once: with repeated ids this layer sums an id's gradients before the
    # update (the dense math, tested against a one-hot lookup in test_sparse_optimizer.py)
    # where keras' TensorFlow optimizer applies each occurrence, one rounding apart.
    x = rng.permutation(30).reshape(6, 5)
    y = rng.standard_normal((6, 1)).astype("float32")

    def model(embedding_layer):
        keras.utils.set_random_seed(3)
        m = keras.Sequential([
            keras.Input((5,), dtype="int32"),
            embedding_layer,
            keras.layers.Flatten(),
            keras.layers.Dense(1, kernel_initializer="ones"),
        ])
        m.compile(keras.optimizers.SGD(0.5), "mse")
        m.train_on_batch(x, y)
        return m

    ours = model(kee.Embedding(30, 4, weights=weights))
    theirs = model(keras.layers.Embedding(30, 4, weights=weights))
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert not np.allclose(ours.get_weights()[0], weights)


def test_mask_is_ids_not_zero_and_reaches_downstream_layers():
    weights = table(10, 4)
    ids = np.array([[1, 2, 0, 0], [3, 0, 0, 0]])
    inputs = keras.Input((4,), dtype="int32")
    embedded = kee.Embedding(10, 4, mask_zero=True, weights=weights)(inputs)
    pooled = keras.layers.GlobalAveragePooling1D()(embedded)
    model = keras.Model(inputs, pooled)
    expected = np.stack([weights[[1, 2]].mean(0), weights[[3]].mean(0)])
    np.testing.assert_allclose(to_numpy(model(ids)), expected, rtol=1e-6)
    layer = model.layers[1]
    np.testing.assert_array_equal(to_numpy(layer.compute_mask(ids)), ids != 0)


def test_lstm_ignores_masked_steps():
    weights = table(10, 4)
    keras.utils.set_random_seed(0)
    lstm = keras.layers.LSTM(3)
    padded = np.array([[4, 5, 0, 0]])
    short = np.array([[4, 5]])
    layer = kee.Embedding(10, 4, mask_zero=True, weights=weights)
    masked_out = lstm(layer(padded), mask=layer.compute_mask(padded))
    np.testing.assert_allclose(to_numpy(masked_out), to_numpy(lstm(layer(short))), rtol=1e-5, atol=1e-6)
    inputs = keras.Input((None,), dtype="int32")
    model = keras.Model(inputs, lstm(layer(inputs)))
    np.testing.assert_allclose(to_numpy(model(padded)), to_numpy(model(short)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16", "bfloat16"])
def test_mixed_precision_dtypes(policy):
    weights = table(12, 4)
    layer = kee.Embedding(12, 4, dtype=policy)
    layer.build()
    layer.set_weights([weights])
    out = layer(np.array([[1, 11]]))
    compute, variable = keras.dtype_policies.get(policy).compute_dtype, keras.dtype_policies.get(policy).variable_dtype
    assert keras.backend.standardize_dtype(out.dtype) == compute
    assert keras.backend.standardize_dtype(layer.embeddings.dtype) == variable
    expected = weights[[[1, 11]]].astype(compute)
    np.testing.assert_array_equal(to_numpy(out).astype("float32"), expected.astype("float32"))


def test_global_mixed_policy_is_respected():
    keras.config.set_dtype_policy("mixed_bfloat16")
    layer = kee.Embedding(5, 2)
    out = layer(np.array([1]))
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert keras.backend.standardize_dtype(layer.embeddings.dtype) == "float32"


def test_regularizers_add_losses():
    layer = kee.Embedding(6, 2, weights=table(6, 2), embeddings_regularizer=keras.regularizers.L2(0.1),
                          activity_regularizer=keras.regularizers.L1(0.01))
    out = layer(np.array([[1, 2]]))
    losses = sorted(float(to_numpy(l)) for l in layer.losses)
    expected = sorted([0.1 * float(np.sum(table(6, 2) ** 2)), 0.01 * float(np.sum(np.abs(to_numpy(out))))])
    np.testing.assert_allclose(losses, expected, rtol=1e-5)


def test_constraint_is_applied_after_a_step():
    layer = kee.Embedding(6, 2, weights=table(6, 2) * 10, embeddings_constraint=keras.constraints.MaxNorm(1.0))
    model = keras.Sequential([keras.Input((2,), dtype="int32"), layer])
    model.compile("sgd", "mse")
    model.train_on_batch(np.array([[1, 2]]), np.zeros((1, 2, 2)))
    norms = np.linalg.norm(to_numpy(layer.embeddings), axis=0)
    assert np.all(norms <= 1.0 + 1e-5)

"""Tied output projection: attend(x) = x @ E.T over the effective table."""

import keras
import numpy as np
import pytest

import keras_embed_ext as kee
from conftest import table, to_numpy

V, D, R = 25, 8, 2
X = np.random.default_rng(6).standard_normal((3, 4, D)).astype("float32")


def in_state(state):
    layer = kee.Embedding(V, D, weights=table(V, D))
    if state.startswith("int"):
        layer.quantize(state.split("_")[0])
    if state.endswith("lora"):
        layer.enable_lora(R, lora_alpha=4)
        rng = np.random.default_rng(1)
        layer.lora_embeddings_a.assign(rng.standard_normal((V, R)).astype("float32"))
        layer.lora_embeddings_b.assign(rng.standard_normal((R, D)).astype("float32"))
    return layer


@pytest.mark.parametrize("state", ["float", "lora", "int8", "int4", "int8_lora", "int4_lora"])
def test_logits_match_numpy(state):
    layer = in_state(state)
    stored = [to_numpy(v) for v in layer._table.format.variables()]
    effective = to_numpy(layer.embeddings)
    if state.endswith("lora"):
        a, b = to_numpy(layer.lora_embeddings_a), to_numpy(layer.lora_embeddings_b)
        base = effective - (4 / R) * a @ b
        np.testing.assert_allclose(to_numpy(layer._table.format.dequantize()), base, rtol=1e-5, atol=1e-5)
    out = to_numpy(layer.attend(X))
    assert out.shape == (3, 4, V)
    np.testing.assert_allclose(out, X @ effective.T, rtol=1e-4, atol=1e-4)
    assert stored  # the stored arrays are untouched by attend
    for before, after in zip(stored, layer._table.format.variables()):
        np.testing.assert_array_equal(before, to_numpy(after))


class TiedLogits(keras.layers.Layer):
    def __init__(self, embedding, **kwargs):
        super().__init__(**kwargs)
        self.embedding = embedding

    def call(self, x):
        return self.embedding.attend(x)


def test_training_through_attend_equals_dense_with_transposed_table():
    weights = table(V, D)
    x = X.reshape(-1, D)
    y = np.random.default_rng(2).standard_normal((x.shape[0], V)).astype("float32")
    ours = kee.Embedding(V, D, weights=weights)
    tied = keras.Sequential([keras.Input((D,)), TiedLogits(ours)])
    dense = keras.layers.Dense(V, use_bias=False)
    reference = keras.Sequential([keras.Input((D,)), dense])
    dense.set_weights([weights.T])
    for model in (tied, reference):
        model.compile(keras.optimizers.SGD(0.1), "mse")
        model.train_on_batch(x, y)
    np.testing.assert_allclose(to_numpy(ours.embeddings), to_numpy(dense.kernel).T, rtol=1e-5, atol=1e-6)
    assert not np.allclose(to_numpy(ours.embeddings), weights)


def test_lora_gradients_reach_only_the_adapter():
    layer = in_state("int8_lora")
    model = keras.Sequential([keras.Input((D,)), TiedLogits(layer)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    a, b = to_numpy(layer.lora_embeddings_a).copy(), to_numpy(layer.lora_embeddings_b).copy()
    stored = [to_numpy(v).copy() for v in layer._table.format.variables()]
    model.train_on_batch(X.reshape(-1, D), np.zeros((12, V), "float32"))
    assert not np.allclose(to_numpy(layer.lora_embeddings_a), a)
    assert not np.allclose(to_numpy(layer.lora_embeddings_b), b)
    for before, after in zip(stored, layer._table.format.variables()):
        np.testing.assert_array_equal(before, to_numpy(after))


def test_mixed_precision_and_bad_shape():
    keras.config.set_dtype_policy("mixed_bfloat16")
    layer = in_state("lora")
    assert keras.backend.standardize_dtype(layer.attend(X).dtype) == "bfloat16"
    with pytest.raises(ValueError, match="output_dim=8"):
        layer.attend(np.ones((2, 3), "float32"))

"""Keras 1 word dropout: whole rows dropped for the call, kept rows scaled."""

import keras
import numpy as np
import pytest

import keras_embed_ext as kee
from conftest import to_numpy

V, D = 2000, 4


def _layer(rate, seed=0):
    return kee.Embedding(V, D, weights=np.ones((V, D), "float32"), dropout=rate, seed=seed)


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_rows_dropped_with_rate_and_kept_rows_scaled(rate):
    ids = np.tile(np.arange(V), (3, 1))  # every id three times
    out = to_numpy(_layer(rate)(ids, training=True))
    values = np.unique(out)
    np.testing.assert_allclose(sorted(values), [0.0, 1.0 / (1.0 - rate)], rtol=1e-6)
    dropped = out[..., 0] == 0
    # The same id gets the same decision everywhere in the call.
    assert (dropped == dropped[0]).all()
    assert (out == out[..., :1]).all()
    # Binomial(2000, rate): 5 standard deviations.
    assert abs(dropped[0].mean() - rate) < 5 * np.sqrt(rate * (1 - rate) / V)


def test_identity_at_inference():
    ids = np.arange(V)[None]
    np.testing.assert_array_equal(to_numpy(_layer(0.5)(ids)), np.ones((1, V, D)))
    np.testing.assert_array_equal(to_numpy(_layer(0.5)(ids, training=False)), np.ones((1, V, D)))


def test_new_decisions_each_call_and_reproducible_with_seed():
    ids = np.arange(V)[None]
    layer = _layer(0.5, seed=42)
    first, second = (to_numpy(layer(ids, training=True)) for _ in range(2))
    assert not np.array_equal(first, second)
    again = _layer(0.5, seed=42)
    np.testing.assert_array_equal(to_numpy(again(ids, training=True)), first)
    generator = keras.random.SeedGenerator(7)
    a = to_numpy(kee.Embedding(V, D, weights=np.ones((V, D), "float32"), dropout=0.5, seed=generator)(ids, training=True))
    assert 0 < (a == 0).mean() < 1


def test_dropout_in_fit_trains():
    model = keras.Sequential([keras.Input((5,), dtype="int32"), kee.Embedding(50, 4, dropout=0.3, seed=1),
                              keras.layers.Flatten(), keras.layers.Dense(1)])
    model.compile("adam", "mse")
    history = model.fit(np.random.randint(0, 50, (64, 5)), np.ones((64, 1)), epochs=3, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, "0.5", True])
def test_bad_rate(rate):
    with pytest.raises(ValueError, match="dropout"):
        kee.Embedding(4, 2, dropout=rate)

"""Out-of-range and negative ids: the same error, or zero rows, on every backend."""

import re

import keras
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import keras_embed_ext as kee
from conftest import table, to_numpy, traced


@pytest.mark.parametrize("bad", [-1, 10, 1000, -7])
def test_eager_call_raises_naming_the_id_and_input_dim(bad):
    layer = kee.Embedding(10, 3, name="tokens")
    ids = np.array([[1, 2], [bad, 3]])
    message = (f"Embedding layer 'tokens' got id {bad} at position (1, 0), outside [0, input_dim=10). "
               f"Ids must be integers with 0 <= id < 10.")
    with pytest.raises(ValueError, match=re.escape(message)):
        layer(ids)


@settings(max_examples=20, deadline=None)
@given(ids=st.lists(st.integers(-20, 30), min_size=1, max_size=12))
def test_zero_policy_gives_zero_rows_for_invalid_ids(ids):
    weights = table(10, 3)
    ids = np.array(ids)
    layer = kee.Embedding(10, 3, weights=weights, invalid_ids="zero")
    valid = (ids >= 0) & (ids < 10)
    expected = np.where(valid[:, None], weights[np.clip(ids, 0, 9)], 0.0)
    np.testing.assert_array_equal(to_numpy(layer(ids)), expected)


@pytest.mark.parametrize("policy", ["raise", "zero"])
def test_traced_call_gives_zero_rows(policy):
    weights = table(10, 3)
    layer = kee.Embedding(10, 3, weights=weights, invalid_ids=policy)
    ids = np.array([[-1, 4, 10, 9]], dtype="int32")
    out = to_numpy(traced(lambda x: layer(x))(keras.ops.convert_to_tensor(ids)))
    expected = np.stack([np.zeros(3), weights[4], np.zeros(3), weights[9]])[None]
    np.testing.assert_array_equal(out, expected)
    assert np.isfinite(out).all()


def test_compiled_predict_never_gives_nan_or_another_row():
    weights = table(10, 3)
    model = keras.Sequential([keras.Input((3,), dtype="int32"), kee.Embedding(10, 3, weights=weights, invalid_ids="zero")])
    out = model.predict(np.array([[-1, 10, 2]]), verbose=0)
    np.testing.assert_array_equal(out[0], np.stack([np.zeros(3), np.zeros(3), weights[2]]))


def test_empty_ids_are_fine():
    out = kee.Embedding(10, 3)(np.zeros((2, 0), "int32"))
    assert tuple(out.shape) == (2, 0, 3)

"""Out-of-range and negative ids: the same error, or zero rows, on every backend."""

import re
import warnings

import keras
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import keras_embed_ext as kee
from conftest import BACKEND, table, to_numpy, traced


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


@settings(max_examples=20, deadline=None)
@given(ids=st.lists(st.integers(-20, 30), min_size=1, max_size=12), floats=st.booleans())
def test_ids_on_an_accelerator_are_checked_alike(ids, floats):
    """On an accelerator eager ids are checked by their least and greatest id, and an
    invalid one is the same error, naming it, as on the host."""
    import keras_embed_ext.ids as ids_module

    weights, ids = table(10, 3), np.array(ids, "float32" if floats else "int32")
    layer = kee.Embedding(10, 3, weights=weights, name="tokens")
    tensor_ids = keras.ops.convert_to_tensor(ids)
    try:
        expected = to_numpy(layer(tensor_ids))
    except ValueError as error:
        expected = error
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ids_module, "on_accelerator", lambda x: True)
        if isinstance(expected, ValueError):
            with pytest.raises(ValueError, match=re.escape(str(expected))):
                layer(tensor_ids)
        else:
            np.testing.assert_array_equal(to_numpy(layer(tensor_ids)), expected)
            np.testing.assert_array_equal(expected, weights[ids.astype("int32")])


@settings(max_examples=15, deadline=None)
@given(ids=st.lists(st.integers(-4, 13), min_size=6, max_size=6), adagrad=st.booleans())
def test_a_training_step_moves_only_the_rows_of_valid_ids(ids, adagrad):
    """`fit` with invalid ids under "zero" and `sparse_optimizer`, against a step computed
    by hand: the invalid ids' rows read zeros, and no row moves for them (not the row
    an invalid id is replaced by), however many there are."""
    vocabulary, width, lr = 10, 3, 0.1
    weights, ids = table(vocabulary, width), np.array(ids).reshape(2, 3)
    targets = np.array([[1.0], [-2.0]], "float32")
    optimizer = keras.optimizers.Adagrad(lr) if adagrad else keras.optimizers.SGD(lr)
    layer = kee.Embedding(vocabulary, width, weights=weights, invalid_ids="zero", sparse_optimizer=optimizer)
    model = keras.Sequential([keras.Input((3,), dtype="int32"), layer, keras.layers.Flatten(),
                              keras.layers.Dense(1, kernel_initializer="ones", use_bias=False, trainable=False)])
    model.compile(keras.optimizers.SGD(lr), "mse")
    model.train_on_batch(ids, targets)

    valid = (ids >= 0) & (ids < vocabulary)
    rows = np.where(valid[..., None], weights[np.clip(ids, 0, vocabulary - 1)], 0.0)
    # loss = mean((sum of a sample's rows - target)^2): each of its valid rows' gradient
    # is 2 (prediction - target) / 2 in every column.
    per_sample = 2 * (rows.sum(axis=(1, 2)) - targets[:, 0]) / 2
    gradient = np.zeros_like(weights)
    for (sample, _), row in zip(np.argwhere(valid), ids[valid]):
        gradient[row] += per_sample[sample]
    if adagrad:
        accumulator = 0.1 + gradient**2
        step = lr * gradient / np.sqrt(accumulator + 1e-7)
    else:
        step = lr * gradient
    expected = np.where(np.isin(np.arange(vocabulary), ids[valid])[:, None], weights - step, weights)
    np.testing.assert_allclose(to_numpy(layer.embeddings), expected, rtol=1e-5, atol=1e-6)


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


@pytest.mark.parametrize("ids,shown", [
    (np.array([2.0, np.nan]), "nan"),
    (np.array([2.0, np.inf]), "inf"),
    (np.array([2.0, -1.5]), "-1.5"),
    (np.array([2.0, 10.0]), "10.0"),
    (np.array([2.0, 1e10], "float32"), "10000000000.0"),
    (np.array([2, 2**32 + 3], "int64"), str(2**32 + 3)),
    (np.array([2, -(2**40)], "int64"), str(-(2**40))),
    (np.array([2, 2**63], "uint64"), str(2**63)),
])
def test_ids_are_checked_before_any_cast(ids, shown):
    """NaN, infinities and ids beyond int32 are named as given, never wrapped into range."""
    layer = kee.Embedding(10, 3, name="tokens")
    message = (f"Embedding layer 'tokens' got id {shown} at position (1,), outside [0, input_dim=10). "
               f"Ids must be integers with 0 <= id < 10.")
    with pytest.raises(ValueError, match=re.escape(message)):
        layer(ids)


def reference_rows(weights, ids):
    """Rows of ids truncated to integers, zeros where that integer is outside the table."""
    ids = np.asarray(ids)
    with np.errstate(invalid="ignore"):
        valid = (ids > -1) & (ids < len(weights))
    safe = np.where(valid, ids, 0).astype("int64")
    return np.where(valid[..., None], weights[safe], 0.0)


@settings(max_examples=25, deadline=None)
@given(ids=st.lists(st.one_of(st.integers(-2**62, 2**62), st.integers(-3, 12)), min_size=1, max_size=10))
def test_zero_policy_with_int64_ids_beyond_int32(ids):
    weights = table(10, 3)
    layer = kee.Embedding(10, 3, weights=weights, invalid_ids="zero")
    ids = np.array(ids, "int64")
    np.testing.assert_array_equal(to_numpy(layer(ids)), reference_rows(weights, ids))


float_ids = st.lists(
    st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.floats(-2, 11, width=32)),
    min_size=1, max_size=10,
)


@settings(max_examples=25, deadline=None)
@given(ids=float_ids, as_tensor=st.booleans())
def test_zero_policy_with_float_ids(ids, as_tensor):
    """Float ids truncate as Keras casts them; NaN, infinities and huge values give zero rows."""
    weights = table(10, 3)
    layer = kee.Embedding(10, 3, weights=weights, invalid_ids="zero")
    ids = np.array(ids, "float32")
    given_ids = keras.ops.convert_to_tensor(ids) if as_tensor else ids
    np.testing.assert_array_equal(to_numpy(layer(given_ids)), reference_rows(weights, ids))


@pytest.mark.parametrize("policy", ["raise", "zero"])
def test_traced_float_ids_out_of_range_give_zero_rows(policy):
    weights = table(10, 3)
    layer = kee.Embedding(10, 3, weights=weights, invalid_ids=policy)
    ids = np.array([[np.nan, 4.7, 1e10, -0.5, -1.0, np.inf]], "float32")
    out = to_numpy(traced(lambda x: layer(x))(keras.ops.convert_to_tensor(ids)))
    np.testing.assert_array_equal(out, reference_rows(weights, ids))


@pytest.mark.parametrize("ids", [
    np.array([[True, False]]),
    np.array([[3, 9]], "uint8"),
    np.array([[3, 9]], "uint32"),
    np.array([[3, 9]], "int16"),
    [[3, 9]],
])
def test_ids_of_every_integer_kind_and_lists(ids):
    weights = table(10, 3)
    out = to_numpy(kee.Embedding(10, 3, weights=weights)(ids))
    np.testing.assert_array_equal(out, weights[np.asarray(ids).astype("int64")])


def test_fit_zeroes_a_bad_id_where_it_is_compiled_and_raises_where_it_runs_eagerly():
    # TensorFlow and JAX trace keras' train step; torch runs it eagerly unless compiled.
    model = keras.Sequential([keras.Input((2,), dtype="int32"), kee.Embedding(10, 3, sparse_optimizer="sgd")])
    model.compile("sgd", "mse")
    ids, y = np.array([[1, 10]], "int32"), np.zeros((1, 2, 3), "float32")
    if BACKEND == "torch":
        with pytest.raises(ValueError, match="got id 10 at position"):
            model.fit(ids, y, verbose=0)
    else:
        model.fit(ids, y, verbose=0)
        np.testing.assert_array_equal(to_numpy(model.predict(ids, verbose=0))[0, 1], np.zeros(3))


def test_a_symbolic_int64_input_warns_where_keras_wraps_it():
    # On JAX without x64 keras converts int64 inputs to int32 before any layer sees them.
    ids = keras.Input((2,), dtype="int64")
    wraps = BACKEND == "jax" and not __import__("jax").config.jax_enable_x64
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kee.Embedding(10, 3)(ids)
    said = [str(w.message) for w in caught if "jax_enable_x64" in str(w.message)]
    assert len(said) == (1 if wraps else 0), said

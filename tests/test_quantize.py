"""int8 and int4 tables against numpy, and weights moving both ways with keras' own layer."""

import keras
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import keras_embed_ext as kee
from conftest import table, to_numpy
import reference as ref

V, D = 40, 10
IDS = np.random.default_rng(3).integers(0, V, size=(3, 5))
PER_ROW = keras.quantizers.Int4QuantizationConfig(block_size=-1)


def quantized(mode, config=None, weights=None, **kwargs):
    layer = kee.Embedding(V, D, weights=table(V, D) if weights is None else weights, **kwargs)
    layer.quantize(mode, config=config)
    return layer


@settings(max_examples=15, deadline=None)
@given(weights=hnp.arrays("float32", (6, 5), elements=st.floats(-100, 100, width=32)))
def test_int8_matches_numpy_and_error_within_half_a_step(weights):
    layer = kee.Embedding(6, 5, weights=weights)
    layer.quantize("int8")
    values, scale = ref.int8_quantize(weights)
    stored = layer.get_weights()
    np.testing.assert_array_equal(stored[0], values)
    np.testing.assert_allclose(stored[1], scale, rtol=1e-6)
    ids = np.arange(6)
    out = to_numpy(layer(ids))
    np.testing.assert_allclose(out, ref.int8_rows(values, scale, ids), rtol=1e-6)
    half_step = 0.5 * np.abs(weights).max(axis=-1, keepdims=True) / 127
    assert np.all(np.abs(out - weights) <= half_step * (1 + 1e-5) + 1e-6)


def test_int4_per_row_matches_numpy_and_error_within_half_a_step():
    weights = table(V, D)
    layer = quantized("int4", PER_ROW, weights)
    stored = layer.get_weights()
    assert [w.shape for w in stored] == [(V, (D + 1) // 2), (V,)]
    out = to_numpy(layer(IDS))
    np.testing.assert_allclose(out, ref.int4_rows(stored, IDS, D), rtol=1e-6)
    half_step = 0.5 * np.abs(weights[IDS]).max(axis=-1, keepdims=True) / 7
    assert np.all(np.abs(out - weights[IDS]) <= half_step * (1 + 1e-5))


@pytest.mark.parametrize("dim", [7, 10])
def test_int4_per_row_odd_and_even_dims(dim):
    weights = table(V, dim)
    layer = kee.Embedding(V, dim, weights=weights)
    layer.quantize("int4", config=PER_ROW)
    out = to_numpy(layer(IDS))
    np.testing.assert_allclose(out, ref.int4_rows(layer.get_weights(), IDS, dim), rtol=1e-6)


@pytest.mark.parametrize("dim,block_size", [(10, None), (10, 4), (10, 3), (12, 4), (12, 6), (9, 3), (16, 16)])
def test_int4_block_wise_matches_numpy(dim, block_size):
    weights = table(V, dim)
    config = None if block_size is None else keras.quantizers.Int4QuantizationConfig(block_size=block_size)
    layer = kee.Embedding(V, dim, weights=weights)
    layer.quantize("int4", config=config)
    block = block_size or 128
    stored = layer.get_weights()
    groups = -(-dim // block)
    assert [w.shape for w in stored] == [(V, (dim + 1) // 2), (V, groups), (V, groups), (dim,)]
    values, scale, zero = ref.int4_grouped_quantize(weights, block)
    np.testing.assert_array_equal(ref.unpack_int4(stored[0], dim), values)
    np.testing.assert_allclose(stored[1], scale, rtol=1e-6)
    np.testing.assert_array_equal(stored[2], zero)
    out = to_numpy(layer(IDS))
    np.testing.assert_allclose(out, ref.int4_rows(stored, IDS, dim), rtol=1e-6, atol=1e-6)
    assert layer.dtype_policy.name == f"int4/{block}_from_float32"


@pytest.mark.parametrize("mode,config", [("int8", None), ("int4", None), ("int4", PER_ROW)])
def test_weights_move_both_ways_with_keras_embedding(mode, config, tmp_path):
    weights = table(V, D)
    theirs = keras.layers.Embedding(V, D, weights=weights)
    theirs.quantize(mode, config=config)
    ours = kee.Embedding(V, D)
    ours.build()
    ours.quantize(mode, config=config)
    assert [(w.path.split("/")[-1], tuple(w.shape), w.dtype) for w in ours.weights] == \
           [(w.path.split("/")[-1], tuple(w.shape), w.dtype) for w in theirs.weights]
    ours.set_weights(theirs.get_weights())
    np.testing.assert_allclose(to_numpy(ours(IDS)), to_numpy(theirs(IDS)), rtol=1e-6, atol=1e-7)
    # ... and back, through a .weights.h5 file.
    back = keras.layers.Embedding(V, D)
    back.build()
    back.quantize(mode, config=config)
    model_ours = keras.Sequential([keras.Input((5,), dtype="int32"), ours])
    model_back = keras.Sequential([keras.Input((5,), dtype="int32"), back])
    model_ours.save_weights(str(tmp_path / "w.weights.h5"))
    model_back.load_weights(str(tmp_path / "w.weights.h5"))
    np.testing.assert_allclose(to_numpy(back(IDS)), to_numpy(ours(IDS)), rtol=1e-6, atol=1e-7)


def test_float_weights_move_both_ways_through_weights_file(tmp_path):
    theirs = keras.Sequential([keras.Input((5,), dtype="int32"), keras.layers.Embedding(V, D)])
    ours = keras.Sequential([keras.Input((5,), dtype="int32"), kee.Embedding(V, D)])
    theirs.save_weights(str(tmp_path / "k.weights.h5"))
    ours.load_weights(str(tmp_path / "k.weights.h5"))
    np.testing.assert_array_equal(to_numpy(ours(IDS)), to_numpy(theirs(IDS)))


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_model_quantize_reaches_the_layer_and_mask_and_dtype_hold(mode):
    keras.config.set_dtype_policy("mixed_bfloat16")
    inputs = keras.Input((5,), dtype="int32")
    layer = kee.Embedding(V, D, mask_zero=True)
    model = keras.Model(inputs, layer(inputs))
    model.quantize(mode)
    assert layer.quantization_mode == mode
    assert layer.dtype_policy.name.endswith("_from_mixed_bfloat16")
    ids = np.array([[0, 3, 0, 1, 2]])
    out = layer(ids)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    np.testing.assert_array_equal(to_numpy(layer.compute_mask(ids)), ids != 0)
    np.testing.assert_allclose(to_numpy(out).astype("float32"), to_numpy(layer.embeddings)[ids], rtol=1e-2, atol=1e-2)


def test_embeddings_property_is_the_dequantized_table():
    layer = quantized("int8")
    values, scale = layer.get_weights()
    np.testing.assert_allclose(to_numpy(layer.embeddings), values / scale[:, None], rtol=1e-6)


def test_misuse_errors():
    layer = quantized("int8")
    with pytest.raises(ValueError, match="already quantized"):
        layer.quantize("int4")
    fresh = kee.Embedding(V, D)
    fresh.build()
    with pytest.raises(ValueError, match="int2"):
        fresh.quantize("int2")
    with pytest.raises(ValueError, match="isn't yet built"):
        kee.Embedding(V, D).quantize("int8")


@pytest.mark.parametrize("source,target", [("float", "int8"), ("int8", "int4"), ("int4", "float")])
def test_loading_weights_of_another_state_names_expected_and_found(source, target, tmp_path):
    def model(state):
        layer = kee.Embedding(V, D, name="emb")
        m = keras.Sequential([keras.Input((5,), dtype="int32"), layer])
        if state != "float":
            layer.quantize(state)
        return m

    model(source).save_weights(str(tmp_path / "w.weights.h5"))
    with pytest.raises(ValueError, match=r"Layer 'emb' cannot load these weights. Expected .*embeddings.* Found"):
        model(target).load_weights(str(tmp_path / "w.weights.h5"))


@settings(max_examples=30, deadline=None)
@given(
    low=st.floats(-1e3, 1e3), width=st.floats(0, 1e3), dim=st.sampled_from([8, 12, 128]),
    block=st.sampled_from([4, 8, 128]), seed=st.integers(0, 2**16),
)
def test_int4_block_wise_decodes_every_row_within_one_step(low, width, dim, block, seed):
    # Rows whose blocks do not straddle 0 (all in [1, 2]; a constant row) included.
    rows = np.random.default_rng(seed).uniform(low, low + width, size=(6, dim)).astype("float32")
    rows[0] = low
    layer = kee.Embedding(6, dim, weights=rows)
    layer.quantize("int4", config=keras.quantizers.Int4QuantizationConfig(block_size=block))
    decoded = to_numpy(layer(np.arange(6)))
    step = np.repeat(to_numpy(layer.embeddings_scale), block, axis=-1)[:, :dim]
    assert (np.abs(decoded - rows) <= step * 1.0001 + 1e-6).all()

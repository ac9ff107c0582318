"""ReversibleEmbedding: keras' layer of language models, in every state, both directions."""

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import keras_embed_ext as kee
from conftest import table, to_numpy
import reference as ref

V, D, R = 30, 12, 3
IDS = np.random.default_rng(0).integers(0, V, size=(2, 5))
HIDDEN = np.random.default_rng(1).standard_normal((2, 4, D)).astype("float32")


def untied_kernel(layer):
    """`reverse_embeddings` decoded in numpy from its stored arrays (keras' layout)."""
    stored = [to_numpy(v) for v in layer._output_table.format.variables()]
    if layer.quantization_mode is None:
        return stored[0]
    if layer.quantization_mode == "int8":
        return stored[0].astype("float32") / stored[1][None, :]
    values = ref.unpack_int4(stored[0].T, D).T.astype("float32")  # packed along D
    if len(stored) == 2:
        return values / stored[1][None, :]
    groups = np.arange(D) // layer._output_table.format.block_size
    return (values - stored[2][groups].astype("float32")) * stored[1][groups]


def keras_pair(tie_weights, **kwargs):
    """keras' layer and ours holding the same float weights."""
    theirs = keras.layers.ReversibleEmbedding(V, D, tie_weights=tie_weights, **kwargs)
    theirs.build()
    theirs.embeddings.assign(table(V, D))
    if not tie_weights:
        theirs.reverse_embeddings.assign(table(D, V, seed=2))
    ours = kee.ReversibleEmbedding(V, D, tie_weights=tie_weights, **kwargs)
    ours.build()
    ours.set_weights(theirs.get_weights())
    return theirs, ours


@pytest.mark.parametrize("tie_weights", [True, False])
@pytest.mark.parametrize("soft_cap", [None, 3.0])
def test_float_layer_equals_keras_in_both_directions(tie_weights, soft_cap):
    theirs, ours = keras_pair(tie_weights, logit_soft_cap=soft_cap)
    np.testing.assert_array_equal(to_numpy(ours(IDS)), to_numpy(theirs(IDS)))
    np.testing.assert_allclose(to_numpy(ours(HIDDEN, reverse=True)), to_numpy(theirs(HIDDEN, reverse=True)),
                               rtol=1e-5, atol=1e-5)
    kernel = table(V, D).T if tie_weights else table(D, V, seed=2)
    logits = HIDDEN @ kernel
    if soft_cap:
        logits = np.tanh(logits / soft_cap) * soft_cap
    np.testing.assert_allclose(to_numpy(ours(HIDDEN, reverse=True)), logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("state", ["float", "int8", "int4"])
def test_tied_reverse_includes_the_adapter(state):
    layer = kee.ReversibleEmbedding(V, D, embeddings_initializer="normal")
    layer.build()
    if state != "float":
        layer.quantize(state)
    layer.enable_lora(R, lora_alpha=6.0)
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((V, R)).astype("float32"), rng.standard_normal((R, D)).astype("float32")
    layer.lora_embeddings_a.assign(a)
    layer.lora_embeddings_b.assign(b)
    stored = [to_numpy(v) for v in layer._table.format.variables()]
    everything = np.arange(V)
    if state == "float":
        base = stored[0]
    elif state == "int8":
        base = ref.int8_rows(stored[0], stored[1], everything)
    else:
        base = ref.int4_rows(stored, everything, D)
    effective = base + (6.0 / R) * a @ b
    # The adapter's logits are the float inputs'; the quantized table's, of inputs rounded as keras does.
    logits = ref.projected_inputs(layer, HIDDEN) @ base.T + HIDDEN @ (effective - base).T
    np.testing.assert_allclose(to_numpy(layer(HIDDEN, reverse=True)), logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(to_numpy(layer(IDS)), effective[IDS], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode, block_size", [("int8", None), ("int4", -1), ("int4", 4), ("int4", 5)])
def test_untied_quantized_output_table_decodes_within_a_step(mode, block_size):
    layer = kee.ReversibleEmbedding(V, D, tie_weights=False)
    layer.build()
    kernel = table(D, V, seed=2)
    layer.reverse_embeddings.assign(kernel)
    config = keras.quantizers.Int4QuantizationConfig(block_size=block_size) if mode == "int4" else None
    layer.quantize(mode, config=config)
    decoded = untied_kernel(layer)
    logits = ref.projected_inputs(layer, HIDDEN) @ decoded
    np.testing.assert_allclose(to_numpy(layer(HIDDEN, reverse=True)), logits, rtol=1e-4, atol=1e-4)
    levels = 127 if mode == "int8" else 7
    if block_size in (None, -1):  # one step per column: max|column| / levels
        step = np.abs(kernel).max(axis=0, keepdims=True) / levels
    else:
        step = np.abs(kernel).max() / 7.0  # at most the widest block's step
    assert np.all(np.abs(decoded - kernel) <= step * 0.5 + 1e-6)


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("tie_weights", [True, False])
def test_weights_move_both_ways_with_keras_layer(tmp_path, mode, tie_weights):
    theirs, ours = keras_pair(tie_weights)
    theirs.quantize(mode)
    ours.quantize(mode)
    their_model = keras.Sequential([keras.Input((5,), dtype="int32"), theirs])
    our_model = keras.Sequential([keras.Input((5,), dtype="int32"), ours])
    their_model.save_weights(str(tmp_path / "theirs.weights.h5"))
    our_model.load_weights(str(tmp_path / "theirs.weights.h5"))
    np.testing.assert_allclose(to_numpy(ours(IDS)), to_numpy(theirs(IDS)), rtol=1e-6)
    if not tie_weights:
        np.testing.assert_array_equal(to_numpy(ours.reverse_embeddings), to_numpy(theirs.reverse_embeddings))
    our_model.save_weights(str(tmp_path / "ours.weights.h5"))
    their_model.load_weights(str(tmp_path / "ours.weights.h5"))
    np.testing.assert_allclose(to_numpy(theirs(IDS)), to_numpy(ours(IDS)), rtol=1e-6)


@pytest.mark.parametrize("state", ["float", "int4"])
def test_keras_file_round_trip_keeps_state_and_config(tmp_path, state):
    layer = kee.ReversibleEmbedding(V, D, tie_weights=False, logit_soft_cap=5.0, mask_zero=True)
    model = keras.Sequential([keras.Input((5,), dtype="int32"), layer])
    if state != "float":
        layer.quantize(state)
    model.save(str(tmp_path / "m.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "m.keras")).layers[-1]
    assert isinstance(loaded, kee.ReversibleEmbedding)
    assert (loaded.tie_weights, loaded.logit_soft_cap, loaded.quantization_mode) == (False, 5.0, layer.quantization_mode)
    np.testing.assert_array_equal(to_numpy(loaded(HIDDEN, reverse=True)), to_numpy(layer(HIDDEN, reverse=True)))


def test_mask_on_forward_calls_only():
    layer = kee.ReversibleEmbedding(V, D, mask_zero=True)
    ids = np.array([[3, 0, 2]])
    mask = keras.src.backend.get_keras_mask(layer(ids))
    np.testing.assert_array_equal(to_numpy(mask), ids != 0)
    assert keras.src.backend.get_keras_mask(layer(HIDDEN, reverse=True)) is None


def test_reverse_dtype_is_the_output_dtype():
    layer = kee.ReversibleEmbedding(V, D, reverse_dtype="float32", dtype="mixed_bfloat16")
    assert keras.backend.standardize_dtype(layer(HIDDEN, reverse=True).dtype) == "float32"
    assert keras.backend.standardize_dtype(layer(IDS).dtype) == "bfloat16"


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(1, 3), min_size=0, max_size=3))
def test_reverse_takes_any_leading_shape(leading):
    layer = kee.ReversibleEmbedding(V, D, tie_weights=False)
    x = np.ones((*leading, D), "float32")
    logits = to_numpy(layer(x, reverse=True))
    assert logits.shape == (*leading, V)
    np.testing.assert_allclose(logits, x @ to_numpy(layer.reverse_embeddings), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tie_weights", [True, False])
def test_a_dtype_policy_map_gives_the_block_size_of_the_layers_path(tmp_path, tie_weights):
    # keras-hub saves a quantized model's policies as a DTypePolicyMap keyed by layer path.
    policies = keras.dtype_policies.DTypePolicyMap(default_policy="float32")
    policies["token_embedding"] = keras.dtype_policies.get("int4/4_from_float32")
    theirs = keras.layers.ReversibleEmbedding(V, D, tie_weights=tie_weights, dtype=policies, name="token_embedding")
    ours = kee.ReversibleEmbedding(V, D, tie_weights=tie_weights, dtype=policies, name="token_embedding")
    theirs.build()
    ours.build()
    assert [(v.path, tuple(v.shape)) for v in ours.weights] == [(v.path, tuple(v.shape)) for v in theirs.weights]
    assert ours._table.format.block_size == 4
    ours.set_weights(theirs.get_weights())
    np.testing.assert_allclose(to_numpy(ours(IDS)), to_numpy(theirs(IDS)), rtol=1e-6)


def untied_with_adapters(state, alpha=6.0, lora_first=False, **kwargs):
    """An untied layer in `state` with random adapters on the table and the kernel."""
    layer = kee.ReversibleEmbedding(V, D, tie_weights=False, embeddings_initializer="normal", **kwargs)
    layer.build()
    if lora_first:
        layer.enable_lora(R, lora_alpha=alpha)
    if state != "float":
        layer.quantize(state)
    if not lora_first:
        layer.enable_lora(R, lora_alpha=alpha)
    rng = np.random.default_rng(4)
    for variable in (layer.lora_embeddings_a, layer.lora_embeddings_b,
                     layer.lora_reverse_embeddings_a, layer.lora_reverse_embeddings_b):
        variable.assign(rng.standard_normal(tuple(variable.shape)).astype("float32"))
    return layer


def untied_effective_kernel(layer):
    delta = to_numpy(layer.lora_reverse_embeddings_a) @ to_numpy(layer.lora_reverse_embeddings_b)
    return untied_kernel(layer) + (layer.lora_alpha / layer.lora_rank) * delta


@pytest.mark.parametrize("state", ["float", "int8", "int4"])
@pytest.mark.parametrize("lora_first", [False, True])
def test_untied_output_table_takes_its_own_adapter(state, lora_first):
    layer = untied_with_adapters(state, lora_first=lora_first)
    kernel = untied_effective_kernel(layer)
    base = untied_kernel(layer)
    logits = ref.projected_inputs(layer, HIDDEN) @ base + HIDDEN @ (kernel - base)
    np.testing.assert_allclose(to_numpy(layer(HIDDEN, reverse=True)), logits, rtol=1e-4, atol=1e-4)
    trainable = {v.path.split("/")[-1] for v in layer.trainable_weights}
    assert trainable == {"lora_embeddings_a", "lora_embeddings_b", "lora_reverse_embeddings_a",
                         "lora_reverse_embeddings_b"}
    layer.merge_lora()
    assert not layer.lora_enabled and not hasattr(layer, "lora_reverse_embeddings_a")
    assert layer.quantization_mode == (None if state == "float" else state)
    assert layer.reverse_embeddings.trainable == (state == "float")
    merged = untied_kernel(layer)
    if state == "float":
        np.testing.assert_allclose(merged, kernel, rtol=1e-5, atol=1e-5)
    else:  # encoded again: within one step of its column (int4 per-row: 1/7 of the column's max)
        levels = 127 if state == "int8" else 7
        step = np.abs(kernel).max(axis=0, keepdims=True) / levels
        assert np.all(np.abs(merged - kernel) <= step)


def test_lora_rank_argument_adapts_an_untied_kernel_too():
    layer = kee.ReversibleEmbedding(V, D, tie_weights=False, lora_rank=R)
    layer.build()
    assert tuple(layer.lora_reverse_embeddings_a.shape) == (D, R)
    assert tuple(layer.lora_reverse_embeddings_b.shape) == (R, V)
    np.testing.assert_array_equal(to_numpy(layer.lora_reverse_embeddings_b), 0)  # a zero delta at first


@pytest.mark.parametrize("state", ["float", "int4"])
def test_untied_adapters_round_trip_through_files(tmp_path, state):
    layer = untied_with_adapters(state, name="tokens")
    model = keras.Sequential([keras.Input((5,), dtype="int32"), layer])
    model.save(str(tmp_path / "m.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "m.keras")).layers[-1]
    loaded_weights = {v.path: v for v in loaded.weights}
    assert sorted(loaded_weights) == sorted(v.path for v in layer.weights)
    for ours in layer.weights:
        np.testing.assert_array_equal(to_numpy(loaded_weights[ours.path]), to_numpy(ours))
    np.testing.assert_array_equal(to_numpy(loaded(HIDDEN, reverse=True)), to_numpy(layer(HIDDEN, reverse=True)))
    # A layer built without adapters (as keras-hub rebuilds a model) takes both.
    model.save_weights(str(tmp_path / "w.weights.h5"))
    fresh = kee.ReversibleEmbedding(V, D, tie_weights=False, name="tokens")
    fresh_model = keras.Sequential([keras.Input((5,), dtype="int32"), fresh])
    if state != "float":
        fresh.quantize(state)
    fresh_model.load_weights(str(tmp_path / "w.weights.h5"))
    assert fresh.lora_enabled and fresh.lora_alpha == 6.0
    np.testing.assert_array_equal(to_numpy(fresh(HIDDEN, reverse=True)), to_numpy(layer(HIDDEN, reverse=True)))
    np.testing.assert_array_equal(to_numpy(fresh(IDS)), to_numpy(layer(IDS)))

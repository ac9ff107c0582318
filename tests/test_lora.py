"""Gather-first LoRA on float and quantized tables, merging, and saving with the adapter."""

import keras
import numpy as np
import pytest

import keras_embed_ext as kee
from conftest import gradients, table, to_numpy, traced
import reference as ref

V, D, R = 40, 10, 3
IDS = np.random.default_rng(4).integers(0, V, size=(3, 5))
STATES = ["float", "int8", "int4"]


def with_adapter(state, alpha=None, lora_first=False, **kwargs):
    """A layer in `state` with a random (non-zero) adapter; returns (layer, a, b)."""
    layer = kee.Embedding(V, D, weights=table(V, D), **kwargs)
    if lora_first:
        layer.enable_lora(R, lora_alpha=alpha)
    if state != "float":
        layer.quantize(state)
    if not lora_first:
        layer.enable_lora(R, lora_alpha=alpha)
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((V, R)).astype("float32"), rng.standard_normal((R, D)).astype("float32")
    layer.lora_embeddings_a.assign(a)
    layer.lora_embeddings_b.assign(b)
    return layer, a, b


def base_rows(layer, ids):
    """The base rows decoded in numpy from the stored arrays."""
    stored = [to_numpy(v) for v in layer._table.format.variables()]
    if layer.quantization_mode is None:
        return stored[0][ids]
    if layer.quantization_mode == "int8":
        return ref.int8_rows(stored[0], stored[1], ids)
    return ref.int4_rows(stored, ids, D)


def test_lookup_compiled_once_sees_the_variables_of_later_states():
    # On TensorFlow the lookup is compiled by XLA; a compiled function that kept the
    # variables of its first trace would read the removed adapter after merge_lora
    # and the float table after quantize.
    layer, a, b = with_adapter("float")
    ids = keras.ops.convert_to_tensor(IDS)
    np.testing.assert_allclose(
        to_numpy(layer(ids)), base_rows(layer, IDS) + ref.lora_delta(a, b, IDS, R, R), rtol=1e-5, atol=1e-6
    )
    first = layer._table._fused_lookup.compiled
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        assert isinstance(first, tf.types.experimental.PolymorphicFunction)
    else:
        assert first is None
    for change in (lambda: layer.merge_lora(), lambda: layer.enable_lora(2, 4.0, b_initializer="ones"),
                   lambda: layer.quantize("int8")):
        change()
        expected = base_rows(layer, IDS)
        if layer.lora_enabled:
            a, b = to_numpy(layer.lora_embeddings_a), to_numpy(layer.lora_embeddings_b)
            expected = expected + ref.lora_delta(a, b, IDS, 4.0, 2)
        np.testing.assert_allclose(to_numpy(layer(ids)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("combiner", [None, "sum"])
@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("state", STATES)
def test_one_layer_takes_ids_of_any_rank_call_after_call(state, lora, combiner):
    # On TensorFlow quantized and LoRA lookups and float bags are compiled by XLA; one
    # compiled function generalised over ids of several ranks would lose the rank.
    if lora:
        layer, a, b = with_adapter(state, combiner=combiner)
    else:
        layer = kee.Embedding(V, D, weights=table(V, D), combiner=combiner)
        if state != "float":
            layer.quantize(state)
    rng = np.random.default_rng(3)
    for shape in [(3, 4), (5, 4), (2, 3, 6), (7,), (3, 4)]:
        ids = rng.integers(0, V, shape)
        expected = base_rows(layer, ids)
        if lora:
            expected = expected + ref.lora_delta(a, b, ids, R, R)
        if combiner:
            expected = expected.sum(axis=-2)
        got = layer(keras.ops.convert_to_tensor(ids.astype("int32")))
        np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lora_first", [False, True])
@pytest.mark.parametrize("state", STATES)
def test_rows_are_base_plus_scaled_low_rank_delta(state, lora_first):
    layer, a, b = with_adapter(state, alpha=6, lora_first=lora_first)
    expected = base_rows(layer, IDS) + ref.lora_delta(a, b, IDS, 6, R)
    np.testing.assert_allclose(to_numpy(layer(IDS)), expected, rtol=1e-5, atol=1e-5)
    assert layer.lora_enabled and layer.lora_rank == R and layer.lora_alpha == 6


@pytest.mark.parametrize("state", STATES)
def test_compiled_rows_are_base_plus_scaled_low_rank_delta(state):
    layer, a, b = with_adapter(state, alpha=6)
    expected = base_rows(layer, IDS) + ref.lora_delta(a, b, IDS, 6, R)
    out = traced(lambda ids: layer(ids), compiled=True)(keras.ops.convert_to_tensor(IDS))
    np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("state", STATES)
def test_invalid_ids_get_zero_rows_adapter_included(state, compiled):
    layer, a, b = with_adapter(state, invalid_ids="raise" if compiled else "zero")
    ids = np.array([[-1, 4, V, 0], [7, V + 3, 2, -5]], dtype="int32")
    valid = (ids >= 0) & (ids < V)
    safe = np.where(valid, ids, 0)
    expected = np.where(valid[..., None], base_rows(layer, safe) + ref.lora_delta(a, b, safe, R, R), 0.0)
    call = traced(lambda ids: layer(ids), compiled=True) if compiled else layer
    out = to_numpy(call(keras.ops.convert_to_tensor(ids)))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert np.all(out[~valid] == 0)


def test_alpha_defaults_to_rank_and_adapter_starts_at_zero_delta():
    weights = table(V, D)
    layer = kee.Embedding(V, D, weights=weights, lora_rank=R)
    assert layer.lora_alpha == R
    np.testing.assert_array_equal(to_numpy(layer(IDS)), weights[IDS])
    assert [v.path.split("/")[-1] for v in layer.trainable_weights] == ["lora_embeddings_a", "lora_embeddings_b"]
    assert keras.backend.standardize_dtype(layer.lora_embeddings_a.dtype) == "float32"


@pytest.mark.parametrize("state", STATES)
def test_fine_tune_changes_only_the_adapter(state):
    layer, _, _ = with_adapter(state)
    layer.lora_embeddings_b.assign(np.zeros((R, D), "float32"))
    model = keras.Sequential([keras.Input((5,), dtype="int32"), layer, keras.layers.Flatten(), keras.layers.Dense(1)])
    model.layers[-1].trainable = False
    model.compile(keras.optimizers.Adam(0.05), "mse")
    base_before = [to_numpy(v).copy() for v in layer._table.format.variables()]
    b_before = to_numpy(layer.lora_embeddings_b).copy()
    rng = np.random.default_rng(0)
    model.fit(rng.integers(0, V, (32, 5)), rng.standard_normal((32, 1)), epochs=2, verbose=0)
    for before, variable in zip(base_before, layer._table.format.variables()):
        np.testing.assert_array_equal(to_numpy(variable), before)
    assert not np.allclose(to_numpy(layer.lora_embeddings_b), b_before)


def test_merge_float_is_exact_to_rounding_and_makes_table_trainable():
    layer, a, b = with_adapter("float", alpha=6)
    before = to_numpy(layer(IDS))
    layer.merge_lora()
    np.testing.assert_allclose(to_numpy(layer.embeddings), table(V, D) + (6 / R) * a @ b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(to_numpy(layer(IDS)), before, rtol=1e-5, atol=1e-5)
    assert not layer.lora_enabled and len(layer.weights) == 1 and layer.trainable_weights == [layer._embeddings]
    assert not hasattr(layer, "lora_embeddings_a")


@pytest.mark.parametrize("state,levels", [("int8", 127), ("int4", 15)])
def test_merge_quantized_requantizes_within_one_step(state, levels):
    layer, a, b = with_adapter(state)
    merged = to_numpy(layer.embeddings)
    layer.merge_lora()
    assert layer.quantization_mode == state and not layer.lora_enabled
    spread = np.abs(merged).max(-1, keepdims=True) if state == "int8" else np.ptp(merged, -1, keepdims=True)
    step = spread / levels
    assert np.all(np.abs(to_numpy(layer.embeddings) - merged) <= step)
    assert [w.path.split("/")[-1] for w in layer.weights] == [w.path.split("/")[-1] for w in layer._table.format.variables()]


@pytest.mark.parametrize("state", STATES + ["int8_lora", "int4_lora", "lora"])
def test_keras_file_keeps_the_adapter_bit_exact(state, tmp_path):
    mode = state.split("_")[0] if state.startswith("int") else "float"
    inputs = keras.Input((5,), dtype="int32")
    if "lora" in state or state == "lora":
        layer, _, _ = with_adapter(mode, alpha=5, name="emb")
    else:
        layer = kee.Embedding(V, D, weights=table(V, D), name="emb")
        if mode != "float":
            layer.quantize(mode)
    model = keras.Model(inputs, layer(inputs))
    model.save(str(tmp_path / "m.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "m.keras")).get_layer("emb")
    assert loaded.lora_enabled == layer.lora_enabled and loaded.quantization_mode == layer.quantization_mode
    for ours, theirs in zip(layer.weights, loaded.weights):
        np.testing.assert_array_equal(to_numpy(ours), to_numpy(theirs))
        assert ours.trainable == theirs.trainable
    np.testing.assert_array_equal(to_numpy(loaded(IDS)), to_numpy(layer(IDS)))


def test_merged_file_loads_into_keras_embedding(tmp_path):
    layer, _, _ = with_adapter("int8")
    layer.merge_lora()
    model = keras.Sequential([keras.Input((5,), dtype="int32"), layer])
    model.save_weights(str(tmp_path / "w.weights.h5"))
    theirs = keras.layers.Embedding(V, D)
    theirs.build()
    theirs.quantize("int8")
    keras.Sequential([keras.Input((5,), dtype="int32"), theirs]).load_weights(str(tmp_path / "w.weights.h5"))
    np.testing.assert_allclose(to_numpy(theirs(IDS)), to_numpy(layer(IDS)), rtol=1e-6)


def test_loads_keras_lora_weights_with_merged_table(tmp_path):
    theirs = keras.layers.Embedding(V, D, weights=table(V, D))  # keras rejects weights= with lora_rank=
    theirs.enable_lora(R)
    theirs.lora_embeddings_b.assign(np.ones((R, D), "float32"))
    model = keras.Sequential([keras.Input((5,), dtype="int32"), theirs])
    model.save(str(tmp_path / "k.keras"))
    expected = to_numpy(theirs(IDS))
    config = theirs.get_config()
    ours = kee.Embedding.from_config(config)
    keras.Sequential([keras.Input((5,), dtype="int32"), ours]).load_weights(str(tmp_path / "k.keras"))
    assert ours.lora_enabled
    np.testing.assert_allclose(to_numpy(ours(IDS)), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(to_numpy(ours.lora_embeddings_b), 0)


def test_misuse_errors():
    layer, _, _ = with_adapter("float")
    with pytest.raises(ValueError, match="already enabled"):
        layer.enable_lora(2)
    plain = kee.Embedding(V, D)
    plain.build()
    with pytest.raises(ValueError, match="merge_lora\\(\\) needs LoRA"):
        plain.merge_lora()
    with pytest.raises(ValueError, match="isn't yet built"):
        kee.Embedding(V, D).enable_lora(2)
    constrained = kee.Embedding(V, D, embeddings_constraint="non_neg")
    with pytest.raises(ValueError, match="incompatible with embedding constraints"):
        constrained.enable_lora(2)  # built or not, as keras names it
    constrained.build()
    with pytest.raises(ValueError, match="constraint"):
        constrained.enable_lora(2)
    with pytest.raises(ValueError, match="rank=0"):
        plain.enable_lora(0)


@pytest.mark.parametrize("state", STATES)
def test_mixed_precision_with_lora(state):
    keras.config.set_dtype_policy("mixed_bfloat16")
    layer, a, b = with_adapter(state)
    out = layer(IDS)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    expected = base_rows(layer, IDS) + ref.lora_delta(a, b, IDS, R, R)
    np.testing.assert_allclose(to_numpy(out).astype("float32"), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("state", STATES)
def test_adapter_gradients_equal_the_hand_computed_ones(state, compiled):
    layer, a, b = with_adapter(state, alpha=6)
    upstream = np.random.default_rng(6).standard_normal((*IDS.shape, D)).astype("float32")
    scale = 6 / R
    flat_ids, flat_upstream = IDS.reshape(-1), upstream.reshape(-1, D)
    expected_a = np.zeros_like(a)
    np.add.at(expected_a, flat_ids, scale * flat_upstream @ b.T)
    expected_b = scale * a[flat_ids].T @ flat_upstream
    grad_a, grad_b = gradients(layer, IDS, upstream, compiled)
    np.testing.assert_allclose(grad_a, expected_a, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grad_b, expected_b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("state", ["float", "int8", "int4"])
def test_a_layer_built_without_an_adapter_takes_the_files_adapter(state, tmp_path):
    # keras-hub rebuilds a model from its own config, which does not record LoRA.
    layer, a, b = with_adapter(state, alpha=5, name="emb")
    model = keras.Sequential([keras.Input((5,), dtype="int32"), layer])
    model.save_weights(str(tmp_path / "w.weights.h5"))
    fresh = kee.Embedding(V, D, name="emb")
    fresh.build()
    if state != "float":
        fresh.quantize(state)
    keras.Sequential([keras.Input((5,), dtype="int32"), fresh]).load_weights(str(tmp_path / "w.weights.h5"))
    assert (fresh.lora_enabled, fresh.lora_rank, fresh.lora_alpha) == (True, R, 5)
    expected = base_rows(layer, IDS) + (5 / R) * (a @ b)[IDS]
    np.testing.assert_allclose(to_numpy(fresh(IDS)), expected, rtol=1e-5, atol=1e-6)
    assert [v.trainable for v in fresh.trainable_weights] == [True, True]

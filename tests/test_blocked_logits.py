"""Logits against a quantized table read in blocks: values and input gradients equal
the product with the whole decoded table, for any block size, and keras' logits
where the inputs are quantized as keras quantizes them."""

import contextlib

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import keras_embed_ext as kee
from conftest import BACKEND, gradients, table, to_numpy, traced
import reference as ref
from keras_embed_ext import blocked_logits as blocked


def input_gradients(fn, inputs, upstream, compiled=False):
    """d sum(fn(*inputs) * upstream) / d each input, as numpy arrays."""
    inputs = [keras.ops.convert_to_tensor(x) for x in inputs]
    if BACKEND == "tensorflow":
        import tensorflow as tf

        def tape_gradients(*inputs):
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                loss = tf.reduce_sum(tf.cast(fn(*inputs), "float32") * upstream)
            return tape.gradient(loss, inputs)

        return [to_numpy(g) for g in (traced(tape_gradients) if compiled else tape_gradients)(*inputs)]
    if BACKEND == "jax":
        import jax

        loss = lambda *inputs: (fn(*inputs).astype("float32") * upstream).sum()  # noqa: E731
        gradient = jax.grad(loss, argnums=tuple(range(len(inputs))))
        return [to_numpy(g) for g in (jax.jit(gradient) if compiled else gradient)(*inputs)]
    inputs = [x.clone().requires_grad_(True) for x in inputs]
    (fn(*inputs).float() * keras.ops.convert_to_tensor(upstream)).sum().backward()
    return [to_numpy(x.grad) for x in inputs]


def input_gradient(fn, x, upstream, compiled=False):
    """d sum(fn(x) * upstream) / dx, as a numpy array."""
    return input_gradients(fn, [x], upstream, compiled)[0]


def set_plan(patch, rows, dim, accelerator):
    """Blocks of `rows` rows, however few, planned as for a CPU or an accelerator
    (where int8 values multiply at once), whichever device runs the test."""
    patch.setattr(blocked, "BLOCK_BYTES", 4 * dim * rows)
    patch.setattr(blocked, "ACCELERATOR_BLOCK_BYTES", 4 * dim * rows)
    patch.setattr(blocked, "MAX_BLOCKS", 10**9)
    patch.setattr(blocked, "on_accelerator", lambda array: accelerator)


def plan_device(accelerator):
    """Where a test of a plan runs: the CPU's plan on the host, as `on_accelerator` chooses it,
    also on a machine with an accelerator, whose XLA int8 products of some feature counts
    are wrong (`benchmarks/xla_int8_dot.py`)."""
    return contextlib.nullcontext() if accelerator else keras.device("cpu:0")


@pytest.fixture(params=[False, True], ids=["cpu_plan", "accelerator_plan"])
def rows_per_block(monkeypatch, request):
    """Sets the rows of each block, in each plan."""
    return lambda rows, dim: set_plan(monkeypatch, rows, dim, request.param)


@given(
    vocabulary=st.integers(1, 40),
    dim=st.integers(1, 9),
    rows=st.integers(1, 45),
    leading=st.lists(st.integers(0, 3), max_size=2),
    quantized_inputs=st.booleans(),
    columns=st.booleans(),
    rank=st.sampled_from([None, 1, 3]),
    value_kind=st.sampled_from(["float", "int8", "stored"]),
    accelerator=st.booleans(),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None)
def test_any_blocking_equals_the_whole_decoded_table(
    vocabulary, dim, rows, leading, quantized_inputs, columns, rank, value_kind, accelerator, seed
):
    """Rows or `(D, V)` columns, with or without an adapter's logits `projected @ factor.T`,
    in blocks or multiplied at once as int8 values."""
    with pytest.MonkeyPatch.context() as patch, plan_device(accelerator):
        set_plan(patch, rows, dim, accelerator)
        rng = np.random.default_rng(seed)
        values = rng.integers(-127, 128, (vocabulary, dim)).astype("int8")
        scale = rng.uniform(0.5, 2.0, vocabulary).astype("float32")
        decoded = values / scale[:, None]
        x = rng.standard_normal((*leading, dim)).astype("float32")
        upstream = rng.standard_normal((*leading, vocabulary)).astype("float32")
        quantizer = keras.quantizers.AbsMaxQuantizer(axis=-1) if quantized_inputs else None
        stored = values.T if columns else values

        projected = rng.standard_normal((*leading, rank or 1)).astype("float32")
        factor = rng.standard_normal((vocabulary, rank or 1)).astype("float32")

        def logits(x, projected, factor):
            adapter = None if rank is None else (projected, keras.ops.transpose(factor) if columns else factor)
            return blocked.blocked_logits(
                x, [stored, scale], lambda v, s: (v, s), "float32", axis=-1 if columns else 0,
                inputs_quantizer=quantizer, value_kind=value_kind, adapter=adapter,
            )

        if quantized_inputs:
            rounded, inputs_scale = ref.abs_max_inputs(x)
            expected = (rounded @ values.T.astype("float32")) / inputs_scale / scale
        else:
            expected = x @ decoded.T
        if rank is not None:
            expected = expected + projected @ factor.T
        np.testing.assert_allclose(to_numpy(logits(x, projected, factor)), expected, rtol=1e-5, atol=1e-4)
        x_grad, projected_grad, factor_grad = input_gradients(logits, [x, projected, factor], upstream)
        # Straight through the inputs' rounding: the float product's gradient.
        np.testing.assert_allclose(x_grad, upstream @ decoded, rtol=1e-5, atol=1e-4)
        if rank is not None:
            flat_upstream = upstream.reshape(-1, vocabulary)
            np.testing.assert_allclose(projected_grad, upstream @ factor, rtol=1e-5, atol=1e-4)
            np.testing.assert_allclose(factor_grad, flat_upstream.T @ projected.reshape(-1, rank), rtol=1e-5,
                                       atol=1e-4)


def test_blocks_bound_the_graph_and_fit_a_cache():
    assert blocked.block_rows(256_000, 512) == 4_000  # 64 blocks
    assert blocked.block_rows(256_000, 128) == 8_192  # 4 MiB of float32 each
    assert blocked.block_rows(10, 2**30) == 1
    assert blocked.block_rows(256_000, 2048, accelerator=True) == 32_768  # 256 MiB of float32 each


V, D = 70, 12
X = np.random.default_rng(3).standard_normal((2, 5, D)).astype("float32")
UPSTREAM = np.random.default_rng(4).standard_normal((2, 5, V)).astype("float32")
CONFIGS = {
    "int8": ("int8", None),  # inputs quantized, as keras' default
    "int8_float_inputs": ("int8", keras.quantizers.Int8QuantizationConfig(activation_quantizer=None)),
    "int4": ("int4", None),
    "int4_per_row": ("int4", keras.quantizers.Int4QuantizationConfig(block_size=-1)),
    "int4_per_row_int8_inputs": (
        "int4", keras.quantizers.Int4QuantizationConfig(block_size=-1, activation_quantizer=keras.quantizers.AbsMaxQuantizer())
    ),
    "int4_blocks_of_4": ("int4", keras.quantizers.Int4QuantizationConfig(block_size=4)),
    "int4_blocks_of_5": ("int4", keras.quantizers.Int4QuantizationConfig(block_size=5)),
}


def quantized(cls, tie, state):
    layer = cls(V, D, tie_weights=tie)
    layer.build()
    layer.set_weights([table(V, D)] if tie else [table(V, D), table(D, V, seed=1)])
    mode, config = CONFIGS[state]
    layer.quantize(mode, config=config)
    return layer


def decoded_table(layer):
    """The `(V, D)` table the reverse projection multiplies, decoded whole."""
    if layer.tie_weights:
        return to_numpy(layer.embeddings)
    return to_numpy(layer._output_table.format.dequantize()).T


# Every config eagerly in the CPU's plan, and in the accelerator's those with int8 values (int8, per-row
# int4), which it multiplies at once (the others differ only in block size); traced, the default int8
# (rounded inputs) multiplied at once as on a GPU, and the block-wise int4 whose last block is partial,
# because torch.compile costs seconds per case.
INT8_VALUES = ("int8", "int8_float_inputs", "int4_per_row", "int4_per_row_int8_inputs")
CASES = [(state, False, False) for state in CONFIGS] + [(state, False, True) for state in INT8_VALUES]
CASES += [("int8", True, True), ("int4_blocks_of_5", True, False)]
CASE_IDS = [f"{s}-{'traced' if c else 'eager'}-{'accelerator' if a else 'cpu'}_plan" for s, c, a in CASES]


@pytest.mark.parametrize(("state", "compiled", "accelerator"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_quantized_reverse_projection_in_blocks(monkeypatch, tie, state, compiled, accelerator):
    ours = quantized(kee.ReversibleEmbedding, tie, state)
    set_plan(monkeypatch, 16, D, accelerator)  # 5 blocks, the last one partial

    def project(x):
        return ours(x, reverse=True)

    run = traced(project) if compiled else project
    if ours.inputs_quantizer is None:
        expected = X @ decoded_table(ours).T
    else:
        # keras' layer, with the same stored values, quantizes the inputs the same way.
        keras_layer = quantized(keras.layers.ReversibleEmbedding, tie, state)
        keras_layer.set_weights(ours.get_weights())
        expected = to_numpy(keras_layer(X, reverse=True))
        assert np.abs(expected - X @ decoded_table(ours).T).max() > 1e-3  # the inputs' rounding shows
    np.testing.assert_allclose(to_numpy(run(X)), expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(
        input_gradient(project, X, UPSTREAM, compiled=compiled), UPSTREAM @ decoded_table(ours), rtol=1e-5, atol=1e-4
    )


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_float16_logits_are_computed_in_float32(rows_per_block, tie):
    layer = quantized(kee.ReversibleEmbedding, tie, "int8_float_inputs")
    layer.reverse_dtype = "float16"
    rows_per_block(16, D)
    x = 100 * X  # logits beyond float16's precision, within its range
    logits = layer(x, reverse=True)
    assert keras.backend.standardize_dtype(logits.dtype) == "float16"
    np.testing.assert_allclose(to_numpy(logits).astype("float32"), x @ decoded_table(layer).T, rtol=2e-3, atol=0.5)


@pytest.mark.parametrize("state", ["int8", "int4_blocks_of_5"])
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_adapter_gradients_through_blocks(rows_per_block, tie, state):
    """The adapter added to each block gets `d/dA` and `d/dB` of `x @ (s * A @ B).T`
    (untied: `x @ (s * A @ B)`), computed by hand."""
    rank, alpha = 3, 6.0
    ours = quantized(kee.ReversibleEmbedding, tie, state)
    ours.enable_lora(rank, lora_alpha=alpha)
    rng = np.random.default_rng(5)
    names = ("lora_embeddings_a", "lora_embeddings_b") if tie else ("lora_reverse_embeddings_a",
                                                                    "lora_reverse_embeddings_b")
    a, b = (rng.standard_normal(getattr(ours, name).shape).astype("float32") for name in names)
    for name, value in zip(names, (a, b)):
        getattr(ours, name).assign(value)
    rows_per_block(16, D)
    x, upstream, s = X.reshape(-1, D), UPSTREAM.reshape(-1, V), alpha / rank
    grads = dict(zip((v.path.split("/")[-1] for v in ours.trainable_variables),
                     gradients(ours, x, upstream, reverse=True)))
    if tie:
        expected = {names[0]: s * upstream.T @ (x @ b.T), names[1]: s * (upstream @ a).T @ x}
    else:
        expected = {names[0]: s * x.T @ (upstream @ b.T), names[1]: s * (x @ a).T @ upstream}
    for name, value in expected.items():
        np.testing.assert_allclose(grads[name], value, rtol=1e-4, atol=1e-4)

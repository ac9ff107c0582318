"""No eager call, in any state, runs an op whose result is as large as the table:
each op of a lookup is recorded as it runs (JAX's eager primitives, torch's aten ops)
and none may write `input_dim` rows. TensorFlow's eager lookups of quantized and LoRA
tables are XLA-compiled, checked on their optimized HLO in test_backends.py."""

import contextlib

import numpy as np
import pytest

import keras_embed_ext as kee
from conftest import BACKEND, table

V, D = 5003, 24  # no other axis of a lookup has V entries


@contextlib.contextmanager
def recorded_shapes():
    """The shapes of the results of every op run eagerly inside the block."""
    shapes = []
    if BACKEND == "jax":
        from jax._src import core

        original = core.EvalTrace.process_primitive

        def recording(self, primitive, args, params):
            out = original(self, primitive, args, params)
            shapes.extend(tuple(o.shape) for o in (out if primitive.multiple_results else [out]))
            return out

        core.EvalTrace.process_primitive = recording
        try:
            yield shapes
        finally:
            core.EvalTrace.process_primitive = original
    else:
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        class Recording(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                shapes.extend(tuple(o.shape) for o in (out if isinstance(out, (tuple, list)) else [out])
                              if isinstance(o, torch.Tensor))
                return out

        with Recording():
            yield shapes


STATES = ["float", "lora", "int8", "int8_lora", "int4", "int4_rowwise", "int4_lora"]


def layer_in(state, **kwargs):
    import keras

    layer = kee.Embedding(V, D, weights=table(V, D), **kwargs)
    if state.startswith("int4"):
        block_size = -1 if state == "int4_rowwise" else 8
        layer.quantize("int4", config=keras.quantizers.Int4QuantizationConfig(block_size=block_size))
    elif state.startswith("int8"):
        layer.quantize("int8")
    if state.endswith("lora"):
        layer.enable_lora(4)
    return layer


if BACKEND in ("jax", "torch"):

    @pytest.mark.parametrize("combiner", [None, "mean"])
    @pytest.mark.parametrize("state", STATES)
    def test_an_eager_call_writes_no_table_sized_result(state, combiner):
        layer = layer_in(state, combiner=combiner, mask_zero=combiner is not None)
        ids = np.random.default_rng(0).integers(0, V, size=(16, 5)).astype("int32")
        layer(ids)  # first call: builds what is built once
        with recorded_shapes() as shapes:
            layer(ids)
        assert shapes, "no op was recorded"
        assert not [shape for shape in shapes if shape and shape[0] == V], shapes

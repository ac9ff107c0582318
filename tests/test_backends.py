"""The backend-specific paths: each one checked on its own backend against the generic one."""

import keras
import numpy as np
import pytest

import keras_embed_ext as kee
from conftest import BACKEND, table, to_numpy
from keras_embed_ext.formats import FloatRows

IDS = np.random.default_rng(0).integers(0, 50, size=(6, 7)).astype("int32")


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_fused_quantized_gather_equals_op_by_op_decode(mode):
    layer = kee.Embedding(50, 12, weights=table(50, 12))
    layer.quantize(mode)
    fused = to_numpy(layer._format.gather(layer, keras.ops.convert_to_tensor(IDS)))
    op_by_op = to_numpy(FloatRows.gather(layer._format, layer, keras.ops.convert_to_tensor(IDS)))
    np.testing.assert_allclose(fused, op_by_op, rtol=1e-6, atol=1e-7)
    compiled = layer._format._fused_gather
    if BACKEND == "tensorflow":
        import tensorflow as tf

        assert isinstance(compiled, tf.types.experimental.PolymorphicFunction)
    else:
        assert not hasattr(compiled, "get_concrete_function")


if BACKEND == "jax":
    def test_traced_ids_are_recognised_under_jit():
        import jax

        from keras_embed_ext.backends import is_traced

        assert jax.jit(lambda x: np.int32(is_traced(x)) + x * 0)(np.int32(1)) == 1
        assert not is_traced(jax.numpy.ones(2))

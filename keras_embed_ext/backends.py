"""The few things `keras.ops` cannot say: is this call traced, and what is ragged or sparse."""

import keras


def is_traced(x) -> bool:
    """Whether `x` belongs to a traced or compiled function (no concrete values)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return not tf.executing_eagerly()
    if backend == "jax":
        import jax

        return isinstance(x, jax.core.Tracer)
    if backend == "torch":
        import torch

        return torch.compiler.is_compiling() or x.device.type == "meta"
    return False

"""How the current call runs: traced or eager, compiled by XLA, and whether a
TensorFlow gather sums a repeated id's gradient slices."""

import contextlib
import contextvars

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

        if torch.compiler.is_compiling() or x.device.type == "meta":
            return True
        # A compiled function that Dynamo runs eagerly (past its recompile limit, or
        # after a graph break) still has Dynamo's frame callback installed.
        from torch._C._dynamo.eval_frame import get_eval_frame_callback

        return get_eval_frame_callback() is not None
    return False


def eager_on_torch_cpu(x) -> bool:
    """Whether `x` is a torch tensor on the CPU, outside any traced or compiled
    function: where each op is a pass of its own, and reading a value costs no wait."""
    return keras.backend.backend() == "torch" and x.device.type == "cpu" and not is_traced(x)


def compiled_by_xla() -> bool:
    """Whether TensorFlow is tracing a function that XLA compiles (eager: no)."""
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util

    return not tf.executing_eagerly() and control_flow_util.GraphOrParentsInXlaContext(
        tf.compat.v1.get_default_graph()
    )


def shapes_are_static() -> bool:
    """Whether a step's arrays keep the shapes the batch gives them (no selection of a
    data-dependent size): on JAX, traced or not, and in a TensorFlow function that XLA
    compiles."""
    backend = keras.backend.backend()
    return backend == "jax" or (backend == "tensorflow" and compiled_by_xla())


_SUMMING_REPEATS = contextvars.ContextVar("summing_repeats", default=False)


@contextlib.contextmanager
def gradients_summed_per_id(enabled):
    """Within it, a TensorFlow gather from a trainable variable (`take_rows`) has a
    gradient with one summed slice per distinct id; the layer turns it on in training."""
    token = _SUMMING_REPEATS.set(bool(enabled))
    try:
        yield
    finally:
        _SUMMING_REPEATS.reset(token)


def summing_repeats() -> bool:
    """Whether the call runs within `gradients_summed_per_id(True)`."""
    return _SUMMING_REPEATS.get()

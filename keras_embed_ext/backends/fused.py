"""XLA-compiled functions for TensorFlow's eager calls and uncompiled graphs."""

import contextvars
import sys

import keras

from keras_embed_ext.backends.context import compiled_by_xla
from keras_embed_ext.backends.context import summing_repeats


class Fused:
    """`fn` compiled by XLA on TensorFlow, as is elsewhere.

    TensorFlow runs each op of a decode, of the LoRA product or of a bag as its own
    pass over memory, where XLA fuses them (figures: docs/performance.md), in eager
    calls and in graphs that XLA does not compile (keras' `fit` on a CPU). Inside a
    function XLA compiles, and in a graph that `model.export` traces, `fn` runs
    inline. JAX is compiled by its caller and torch runs eagerly.

    The variables `fn` reads are arguments of the compiled function, not captures,
    and `key` holds every other value its trace depends on: layers and states with
    the same key and shapes share one compiled function. TensorFlow keeps each
    executable XLA compiles for as long as the process runs, so one function per
    layer, or per `enable_lora`, would grow memory with each. A compiled function is
    traced per rank of the arguments (and whether gradients are summed per id): one
    for several ranks would take tensors of unknown rank. A plain object:
    TensorFlow's tracking would save a `tf.function` held by the layer.
    """

    def __init__(self, fn):
        self.fn = fn
        self.compiled = None  # the function of the latest call, for inspection
        self.variables = ()  # and the variables it was given
        self._concrete = {}

    def compiles(self) -> bool:
        """Whether a call now runs `fn` compiled by XLA of its own (TensorFlow, outside a
        function XLA compiles, a `tf.distribute` strategy and an export's trace)."""
        if keras.backend.backend() != "tensorflow":
            return False
        import tensorflow as tf

        return not (compiled_by_xla() or tf.distribute.has_strategy()
                    or (not tf.executing_eagerly() and _traced_by_keras_export()))

    def __call__(self, key, variables, *args):
        if not self.compiles():
            return self.fn(*args)
        import tensorflow as tf

        ranks = (*(getattr(arg, "ndim", None) for arg in args), summing_repeats())
        # The variables' shapes too: a trace reads them as static shapes, and TensorFlow's
        # relaxed retracing would hand one table's trace another table's variables.
        shapes = tuple(tuple(v.shape) for v in variables)
        shared_key = (getattr(self.fn, "__qualname__", None) or self.fn.func.__qualname__, key, ranks, shapes)
        if shared_key not in _COMPILED:
            _COMPILED[shared_key] = tf.function(_call_current, jit_compile=True, reduce_retracing=True)
        # The tf.Variable under each keras Variable: TensorFlow traces a keras Variable
        # as a tensor (a read of the whole table, and its reads in `fn` captures).
        self.compiled = _COMPILED[shared_key]
        self.variables = tuple(getattr(v, "_value", v) for v in variables)
        token = _CURRENT_FN.set(self.fn)
        try:
            # Calling the concrete function skips matching the arguments to a trace.
            signature = (shared_key, *(_spec(v) for v in self.variables), *(_spec(arg) for arg in args))
            concrete = self._concrete.get(signature)
            if concrete is None:
                concrete = self._concrete[signature] = self.compiled.get_concrete_function(self.variables, *args)
            return concrete(self.variables, *args)
        finally:
            _CURRENT_FN.reset(token)


def _traced_by_keras_export() -> bool:
    """Whether `model.export` is tracing this call: its graph then runs the lookup's
    ops itself, which exporters (tf2onnx) can convert, where an XLA call they cannot.
    Read from the stack, once per trace."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith("keras.src.export."):
            return True
        frame = frame.f_back
    return False


_COMPILED = {}
_CURRENT_FN = contextvars.ContextVar("fused_fn")


def _spec(x):
    if isinstance(x, (list, tuple)):
        return tuple(_spec(item) for item in x)
    return (tuple(x.shape), x.dtype) if hasattr(x, "shape") else x


def _call_current(variables, *args):
    """The traced body of a `Fused` function: the calling layer's `fn`, which reads
    exactly `variables` (passed so that the trace takes them as arguments)."""
    del variables
    return _CURRENT_FN.get()(*args)

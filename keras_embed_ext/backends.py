"""What `keras.ops` cannot say, or says measurably slower: is this call traced, where the
table lives, and the backends' own gathers and row arithmetic."""

import sys

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


def take_rows(table, ids):
    """`table[ids]` along axis 0, for a variable or tensor `table` and ids known to be in range.

    `keras.ops.take` first wraps negative ids, which the validated ids never are,
    and on TensorFlow reads the whole variable before gathering. A variable that a
    sparse update (an optimizer step on `IndexedSlices`) has touched is copied in
    full by every such read; `tf.gather` on the variable reads only the rows.
    """
    backend = keras.backend.backend()
    if isinstance(table, keras.Variable):
        table = table.value
    if backend == "torch":
        import torch

        if table.ndim == 2:
            return torch.nn.functional.embedding(ids, table)
        rows = torch.index_select(table, 0, ids.reshape(-1))
        return rows.reshape(*ids.shape, *table.shape[1:])
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.gather(table, ids)
    if backend == "jax":
        import jax.numpy as jnp

        return jnp.take(table, ids, axis=0, mode="clip")
    return keras.ops.take(table, ids, axis=0)


_TORCH_IN_PLACE = {"add": "add_", "subtract": "sub_", "multiply": "mul_", "divide": "div_"}


def in_place(op, fresh, other):
    """`keras.ops.<op>(fresh, other)`; on torch written into `fresh`, a float tensor just made.

    On a CPU each new output of a row-sized op costs fresh pages from the allocator:
    decoding 4,096 int8 rows of 256 takes 2.7 ms as cast-then-divide and 0.1 ms with
    the divide in place. `fresh` keeps its shape and dtype.
    """
    if keras.backend.backend() == "torch" and fresh.dtype == other.dtype:
        import torch

        if torch.broadcast_shapes(fresh.shape, other.shape) == fresh.shape:
            return getattr(fresh, _TORCH_IN_PLACE[op])(other)
    return getattr(keras.ops, op)(fresh, other)


def add_matmul(fresh, a, b):
    """`fresh + a @ b` for `fresh (..., D)`, `a (..., r)`, `b (r, D)`; in place on torch."""
    if keras.backend.backend() == "torch" and fresh.dtype == a.dtype == b.dtype and fresh.is_contiguous():
        fresh.view(-1, fresh.shape[-1]).addmm_(a.reshape(-1, a.shape[-1]), b)
        return fresh
    return fresh + keras.ops.matmul(a, b)


def interleave_int8(even, odd):
    """`[even[..., 0], odd[..., 0], even[..., 1], ...]` as int8, for int16 `even`, `odd` in [-128, 127].

    On torch each pair is written as one little-endian int16 and its bytes read as
    int8: elementwise ops only, where stacking on a new last axis is a strided copy
    (int4 lookups of 4,096 x 256 values: 1.08 ms to 0.86 ms on 2 CPU cores).
    """
    if keras.backend.backend() == "torch" and sys.byteorder == "little":
        import torch

        pairs = torch.bitwise_or(torch.bitwise_and(even, 0xFF), torch.bitwise_left_shift(odd, 8))
        return pairs.view(torch.int8).reshape(*even.shape[:-1], 2 * even.shape[-1])
    shape = keras.ops.shape(even)
    pairs = keras.ops.stack([even, odd], axis=-1)
    return keras.ops.cast(keras.ops.reshape(pairs, (*shape[:-1], 2 * shape[-1])), "int8")


def on_device_of(variable, ids, gather):
    """`gather(ids)` run where `variable` lives, the result moved back to where `ids` were.

    A table built under `keras.device("cpu:0")` stays in host memory: its rows are
    gathered there and only the rows move.
    """
    moved = to_device_of(ids, variable)
    if moved is ids:
        return gather(ids)
    return to_device_of(gather(moved), ids)


def to_device_of(x, reference):
    """`x` moved to the device of `reference` (a tensor or variable) when they differ.

    TensorFlow places ops by itself; under jax.jit the placement is XLA's, so on
    JAX this applies to eager arrays on one device only.
    """
    backend = keras.backend.backend()
    reference = getattr(reference, "value", reference)
    if backend == "torch":
        return x if x.device == reference.device else x.to(reference.device)
    if backend == "jax":
        import jax

        if isinstance(x, jax.core.Tracer) or isinstance(reference, jax.core.Tracer):
            return x
        devices = reference.devices()
        if len(devices) != 1 or x.devices() == devices:
            return x  # same place, or a sharded table: the sharding decides
        return jax.device_put(x, next(iter(devices)))
    return x


def fused(fn):
    """`fn` compiled by XLA on TensorFlow, as is elsewhere.

    TensorFlow runs each op of a decode as its own pass over memory (int4 rows:
    6.1 ms eager vs 0.8 ms fused for 4,096 x 256 rows on 2 CPU cores); JAX is
    already compiled by its caller and torch runs eagerly.
    """
    if keras.backend.backend() != "tensorflow":
        return fn
    import tensorflow as tf

    return tf.function(fn, jit_compile=True, reduce_retracing=True)

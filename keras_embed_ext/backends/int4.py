"""Signed 4-bit values packed two per int8 byte: unpacking, and gathering rows of them."""

import sys

import keras

from keras_embed_ext.backends.context import compiled_by_xla
from keras_embed_ext.backends.context import is_traced
from keras_embed_ext.backends.rows import take_rows


def take_int4_rows(packed, ids=None):
    """Signed 4-bit values as int8 of the rows `ids` (all rows for `None`) of a table
    of bytes packed two per byte along its last axis, low nibble first.

    XLA unpacks int4 natively: on JAX the rows are gathered as int32 words and
    bitcast to int4, faster than shifting the gathered bytes. Bitcasting the gathered
    bytes is slower, and XLA rejects two bitcasts in a row, so a whole table takes the
    generic path. TensorFlow has no int4 type; there an XLA-compiled lookup (`Fused`,
    or the caller's) shifts the whole table, which XLA fuses into the gather, so only
    the gathered values are computed, each from its byte in the table; any other
    TensorFlow graph shifts the gathered bytes.

    The bitcast is for JAX's traced calls, where XLA fuses it into the gather: run op
    by op, or compiled on its own, it is a pass over the whole table in every call.
    Eager calls shift the gathered bytes. So do ids of a shape known
    only symbolically (an exported signature): exporters reject a bitcast of dynamic
    shape, and ONNX has no bitcast.
    """
    table = packed.value if isinstance(packed, keras.Variable) else packed
    width = table.shape[-1]
    backend = keras.backend.backend()
    if ids is not None and backend == "tensorflow" and compiled_by_xla():
        return take_rows(unpack_int4(table), ids)
    if (
        ids is not None and backend == "jax" and sys.byteorder == "little" and width % 4 == 0
        and is_traced(ids) and all(isinstance(size, int) for size in ids.shape)
    ):
        import jax.numpy as jnp
        from jax import lax

        words = lax.bitcast_convert_type(table.reshape(*table.shape[:-1], width // 4, 4), jnp.int32)
        nibbles = lax.bitcast_convert_type(jnp.take(words, ids, axis=0, mode="clip"), jnp.int4)
        return nibbles.reshape((*ids.shape, 2 * width)).astype(jnp.int8)
    return unpack_int4(table if ids is None else take_rows(table, ids))


def unpack_int4(packed, axis=-1):
    """Signed 4-bit values as int8 from int8 bytes packed two per byte along `axis`
    (-1 or 0), low nibble first.

    Along the first axis, packed row `i` gives whole rows `2i` (low nibbles) and
    `2i + 1`: interleaving them copies contiguous rows. Along the last, on torch, the
    shifts run on int16 in place and each (low, high) pair is written as one
    little-endian int16 whose bytes are read as int8, where stacking on a new last
    axis is a strided copy.
    """
    if axis == 0:
        return keras.ops.reshape(keras.ops.stack(_nibbles(packed), axis=1), (-1, *packed.shape[1:]))
    if keras.backend.backend() == "torch" and sys.byteorder == "little":
        import torch

        shape = (*packed.shape[:-1], 2 * packed.shape[-1])
        if packed.numel() == 0:  # empty results of scalar shifts can have stride 0
            return packed.new_empty(shape)
        wide = packed.to(torch.int16, memory_format=torch.contiguous_format)  # any strides
        low = torch.bitwise_left_shift(wide, 12).bitwise_right_shift_(12).bitwise_and_(0xFF)
        pairs = low.bitwise_or_(wide.bitwise_right_shift_(4).bitwise_left_shift_(8))
        return pairs.view(torch.int8).reshape(shape)
    shape = keras.ops.shape(packed)
    pairs = keras.ops.stack(_nibbles(packed), axis=-1)
    return keras.ops.reshape(pairs, (*shape[:-1], 2 * shape[-1]))


def _nibbles(packed):
    """`(low, high)`: the signed 4-bit values of int8 bytes as int8 arrays of their shape."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.bitwise_left_shift(packed, 4).bitwise_right_shift_(4), torch.bitwise_right_shift(packed, 4)
    # Arithmetic on non-negative integers rather than bitwise ops, which ONNX
    # exporters lack or translate as logical shifts (or a division that truncates):
    # `byte + 128 = 16 * (high + 8) + low`, with `low` in [0, 16).
    shifted = keras.ops.add(keras.ops.cast(packed, "int32"), 128)
    high = keras.ops.floor_divide(shifted, 16)
    low = keras.ops.subtract(shifted, keras.ops.multiply(high, 16))
    return keras.ops.cast(keras.ops.where(low > 7, low - 16, low), "int8"), keras.ops.cast(high - 8, "int8")

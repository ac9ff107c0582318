"""Keras 1 word dropout: whole vocabulary rows dropped for one call.

Whether a row survives is a hash of its id and a per-call seed, so every
occurrence of an id in the call gets the same decision and the cost follows the
ids looked up, not the vocabulary size.
"""

import keras
from keras import ops

_INT32_MAX = 2**31 - 1


def _int32(constant):
    """A 32-bit constant as the signed int32 with the same bits."""
    return constant - 2**32 if constant >= 2**31 else constant


def _shift_right(x, bits):
    """Logical right shift of int32 values (arithmetic shift, then mask)."""
    return ops.bitwise_and(ops.right_shift(x, bits), (1 << (32 - bits)) - 1)


def _hash(x):
    """lowbias32 (Chris Wellons' integer hash), in wrapping int32 arithmetic."""
    x = ops.bitwise_xor(x, _shift_right(x, 16))
    x = ops.multiply(x, _int32(0x7FEB352D))
    x = ops.bitwise_xor(x, _shift_right(x, 15))
    x = ops.multiply(x, _int32(0x846CA68B))
    return ops.bitwise_xor(x, _shift_right(x, 16))


def row_keep_scale(ids, rate, seed_generator):
    """Per-id factor: 0 for a dropped row, `1 / (1 - rate)` for a kept one."""
    call_seed = keras.random.randint((), 0, _INT32_MAX, seed=seed_generator)
    x = _hash(ops.add(ops.cast(ids, "int32"), _hash(call_seed)))
    uniform = ops.cast(_shift_right(x, 8), "float32") / float(1 << 24)
    keep = ops.greater_equal(uniform, rate)
    return ops.where(keep, 1.0 / (1.0 - rate), 0.0)

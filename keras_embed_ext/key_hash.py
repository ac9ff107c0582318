"""Hashing a dynamic table's raw keys: each key's bucket and sighting-sketch cells.

A key hashes to the same int32 on every backend (murmur3's 32-bit finalizer, applied
to its low word, then with its high word mixed in), so a saved key map loads on any.
On a torch CPU, eager, the same arithmetic runs in numpy on the keys' own memory:
numpy's integer ops on a step's keys cost a fraction of torch's, and its division by
one number is a multiply.
"""

import numpy as np
from keras import ops

from keras_embed_ext.backends.context import eager_on_torch_cpu

# murmur3's 32-bit finalizer constants, as signed int32.
MIX = (0x85EBCA6B - 2**32, 0xC2B2AE35 - 2**32)
SEEDS = (0x2545F491, 0x6A09E667)


def hash_keys(keys, seed_index=0):
    """A nonnegative int32 hash of each key."""
    keys = ops.convert_to_tensor(keys)
    if eager_on_torch_cpu(keys):
        import torch

        return torch.from_numpy(hash_on_host(keys.numpy(), seed_index))
    low, high = _words(keys)
    mixed = _mix(ops.bitwise_xor(_mix(ops.bitwise_xor(low, SEEDS[seed_index])), high))
    return ops.bitwise_and(mixed, 0x7FFFFFFF)


def remainder(hashes, count):
    """`hashes % count` of nonnegative int32 `hashes` and a positive int `count`."""
    if eager_on_torch_cpu(hashes):
        import torch

        return torch.from_numpy(remainder_on_host(hashes.numpy().copy(), count))
    return ops.mod(hashes, count)


def sketch_cells(keys, width: int, tables=None):
    """The two count-min cells of each key in a `(2 * width,)` sighting sketch: in a
    stack, a key of each table has cells of its own."""
    hashes = [hash_keys(keys, 0), hash_keys(keys, 1)]
    if tables is not None:
        hashes = [ops.bitwise_and(ops.bitwise_xor(h, _mix(ops.cast(tables, "int32") + 1)), 0x7FFFFFFF) for h in hashes]
    return remainder(hashes[0], width), width + remainder(hashes[1], width)


def _words(keys):
    """A key's low and high 32 bits as int32: the same for a key given as int32 or int64
    (its sign extended), so a key has one bucket on every backend."""
    if "int64" in str(keys.dtype):
        return ops.cast(ops.bitwise_and(keys, 0xFFFFFFFF), "int32"), ops.cast(ops.right_shift(keys, 32), "int32")
    keys = ops.cast(keys, "int32")
    return keys, ops.right_shift(keys, 31)


def _shifted_out(x, bits):
    """`x >>> bits`: a logical shift of int32 `x`."""
    return ops.bitwise_and(ops.right_shift(x, bits), (1 << (32 - bits)) - 1)


def _mix(x):
    """murmur3's finalizer, in int32 arithmetic that wraps alike on every backend."""
    x = ops.bitwise_xor(x, _shifted_out(x, 16)) * MIX[0]
    x = ops.bitwise_xor(x, _shifted_out(x, 13)) * MIX[1]
    return ops.bitwise_xor(x, _shifted_out(x, 16))


def hash_on_host(keys, seed_index=0):
    """`hash_keys` of int32 or int64 numpy `keys`, in uint32 arithmetic, which wraps as
    int32's does, in place in one new array (and one scratch array for the shifts)."""
    mixed = np.empty(keys.shape, np.uint32)
    np.copyto(mixed, keys, casting="unsafe")  # the low word (a cast alone costs less than within the xor)
    mixed ^= np.uint32(SEEDS[seed_index])
    shifted = np.empty_like(mixed)
    _mix_on_host(mixed, shifted)
    np.right_shift(keys, 32 if keys.dtype.itemsize == 8 else 31, out=shifted, casting="unsafe")  # int32: its sign
    mixed ^= shifted
    _mix_on_host(mixed, shifted)
    mixed &= np.uint32(0x7FFFFFFF)
    return mixed.view(np.int32)


def _mix_on_host(x, shifted):
    """`_mix` of a uint32 numpy array, in place (`shifted`: scratch of its shape)."""
    for bits, factor in ((16, MIX[0]), (13, MIX[1]), (16, None)):
        x ^= np.right_shift(x, np.uint32(bits), out=shifted)
        if factor is not None:
            x *= np.uint32(factor % 2**32)


def remainder_on_host(hashes, count):
    """`hashes % count` of nonnegative int32 numpy `hashes`, in place: numpy divides
    unsigned integers by one number as a multiply."""
    unsigned = hashes.view(np.uint32)
    quotient = unsigned // np.uint32(count)
    quotient *= np.uint32(count)
    unsigned -= quotient
    return hashes

"""Finding a step's keys in a dynamic table's map (`key_slots.find`) compiled by numba:
eager torch's on a CPU, where numba is installed (the `numba` extra).

numpy's find (`host_find.find`) makes a pass over all the keys for each of its steps,
21 of them to hash; compiled, one loop hashes and buckets each key and a second
compares it with its bucket's slots, each key read once. Importing this module
fails where numba does not import (absent, or not built for this numpy) or cannot
cache what it compiles on disk.
"""

import numba
import numpy as np

from keras_embed_ext.key_hash import MIX
from keras_embed_ext.key_hash import SEEDS
from keras_embed_ext.key_slots import Found
from keras_embed_ext.key_slots import KeyLayout

_LOW_WORD = np.uint64(0xFFFFFFFF)
_NONNEGATIVE = np.uint64(0x7FFFFFFF)
_SEED = np.uint64(SEEDS[0] % 2**32)
_FIRST_FACTOR, _SECOND_FACTOR = (np.uint64(factor % 2**32) for factor in MIX)
_SIXTEEN, _THIRTEEN = np.uint64(16), np.uint64(13)


def find(keys, tables, stored_keys, scores, clock: int, layout: KeyLayout, ttl_steps=None) -> Found:
    """`key_slots.find` of numpy arrays: the same arguments, the same rows."""
    keys = keys.astype(stored_keys.dtype, copy=False)
    if not layout.stacked:  # as `KeyLayout.buckets_on_host`
        buckets = _buckets(keys, layout.buckets, 1.0 / layout.buckets)
    else:
        counts = layout.bucket_counts
        buckets = _stacked_buckets(keys, tables.astype(np.int32, copy=False), layout.bucket_offsets, counts,
                                   1.0 / counts)
    rows, found = _rows(keys, buckets, stored_keys, scores, layout.capacity, clock, ttl_steps is not None,
                        ttl_steps or 0)
    return Found(rows, found, buckets)


@numba.njit(cache=True, nogil=True, inline="always")
def _mix(x):
    """`key_hash._mix` of a uint32 held in a uint64."""
    x ^= x >> _SIXTEEN
    x = (x * _FIRST_FACTOR) & _LOW_WORD
    x ^= x >> _THIRTEEN
    x = (x * _SECOND_FACTOR) & _LOW_WORD
    return x ^ (x >> _SIXTEEN)


@numba.njit(cache=True, nogil=True, inline="always")
def _hash(key):
    """`key_hash.hash_keys` of an int32 or int64 key: an int32 key's high word is its
    sign, extended."""
    key = np.int64(key)
    low, high = np.uint64(key) & _LOW_WORD, np.uint64(key >> 32) & _LOW_WORD
    return np.int64(_mix(_mix(low ^ _SEED) ^ high) & _NONNEGATIVE)


@numba.njit(cache=True, nogil=True, inline="always")
def _remainder(hashed, count, inverse_count):
    """`hashed % count` by a float multiply, whose quotient errs by less than a
    `2**-52`th of itself: below 2**31 it truncates one short only where `hashed` is a
    multiple of `count`, the remainder then `count`."""
    remainder = hashed - np.int64(np.float64(hashed) * inverse_count) * count
    return remainder - count if remainder >= count else remainder


@numba.njit(cache=True, nogil=True)
def _buckets(keys, count, inverse_count):
    """`KeyLayout.buckets_of` of one table's `keys`."""
    buckets = np.empty(keys.size, np.int32)
    for i in range(keys.size):
        buckets[i] = _remainder(_hash(keys[i]), count, inverse_count)
    return buckets


@numba.njit(cache=True, nogil=True)
def _stacked_buckets(keys, tables, offsets, counts, inverse_counts):
    """`KeyLayout.buckets_of` of the keys of a stack's tables `tables`."""
    buckets = np.empty(keys.size, np.int32)
    for i in range(keys.size):
        table = tables[i]
        buckets[i] = offsets[table] + _remainder(_hash(keys[i]), np.int64(counts[table]), inverse_counts[table])
    return buckets


@numba.njit(cache=True, nogil=True)
def _rows(keys, buckets, stored_keys, scores, capacity, clock, expires, ttl_steps):
    """`backends.keys.first_holding_row`, then `find`'s TTL: each key's row in the first
    slot of its bucket that holds it, if the row exists, was given (a key 0 may fill a
    row never given, whose score is 0) and, where keys `expires`, was seen within
    `ttl_steps`; else 0. A score is read only where it decides."""
    slots = stored_keys.shape[1]
    rows, found = np.zeros(keys.size, np.int32), np.zeros(keys.size, np.bool_)
    for i in range(keys.size):
        key, bucket = keys[i], buckets[i]
        for slot in range(slots):
            if stored_keys[bucket, slot] == key:
                row = bucket * slots + slot
                if (row < capacity and (key != 0 or scores[bucket, slot] != 0)
                        and (not expires or clock - scores[bucket, slot] < ttl_steps)):
                    rows[i], found[i] = row, True
                break
    return rows, found

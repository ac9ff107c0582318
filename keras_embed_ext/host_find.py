"""Finding a step's keys in a dynamic table's map (`key_slots.find`) by numpy on the
host: eager torch's on a CPU.

There each torch op on a step's keys costs several times numpy's, and each keras op
the dispatch of a call: the find runs as one route of numpy calls on the tensors' own
memory, from the keys to their rows; or, where numba is installed, as its compiled
loops (`numba_find`), which do the same in two passes over the keys.
"""

import functools

import numpy as np

from keras_embed_ext.key_hash import hash_on_host
from keras_embed_ext.key_slots import Found
from keras_embed_ext.key_slots import KeyLayout


def find_tensors(keys, tables, stored_keys, scores, clock, layout: KeyLayout, ttl_steps=None) -> Found:
    """`find` of a step's torch tensors, on their own memory."""
    import torch

    def host(x):
        return None if x is None else x.detach().numpy()

    found = compiled_or_numpy_find()(host(keys), host(tables), host(stored_keys), host(scores), int(clock), layout,
                                     ttl_steps)
    return Found(*map(torch.from_numpy, found))


@functools.cache
def compiled_or_numpy_find():
    """`numba_find.find` where numba imports and can cache what it compiles (on disk,
    else it raises `RuntimeError`), else `find`: the same arguments and rows."""
    try:
        from keras_embed_ext import numba_find
    except (ImportError, RuntimeError):
        return find
    return numba_find.find


def find(keys, tables, stored_keys, scores, clock: int, layout: KeyLayout, ttl_steps=None) -> Found:
    """`key_slots.find` of numpy arrays: the same arguments, the same rows."""
    keys = keys.astype(stored_keys.dtype, copy=False)
    buckets = layout.buckets_on_host(hash_on_host(keys), tables)
    rows, found = first_holding_row(keys, buckets, stored_keys, scores, layout.capacity)
    if ttl_steps is not None:
        found &= clock - scores.reshape(-1)[rows] < ttl_steps
        rows *= found
    return Found(rows, found, buckets)


def first_holding_row(keys, buckets, stored_keys, scores, capacity: int):
    """`backends.keys.first_holding_row` of numpy arrays: `(rows, found)`, each key's
    row in the first slot of its bucket that holds it, if that slot was given and is
    below `capacity`, else 0.

    Where most keys live in their bucket's first two slots (a table not yet half
    full: a bucket's rows are given lowest free first), each key reads those two as
    one 16-byte element, and only the others search their whole bucket; elsewhere
    every key searches at once, which costs less than probing first (a full table
    holds a key in its first two slots 1 time in 8). The first keys decide."""
    slots = stored_keys.shape[1]
    if slots % 2 or not _mostly_in_first_two(keys[:_SAMPLE], buckets[:_SAMPLE], stored_keys):
        return _search_buckets(keys, buckets, stored_keys, scores, capacity)
    first_two = _first_two_slots(buckets, stored_keys)
    rows = buckets * np.int32(slots)
    found = first_two[:, 0] == keys
    in_second = np.greater(first_two[:, 1] == keys, found)  # and not in the first
    rows += in_second
    found |= in_second
    if _partial_last(stored_keys, capacity):
        found &= rows < capacity
    # A slot holding a key other than 0 was given; a key 0 is searched for, reading its slot's score.
    searching = np.flatnonzero(np.less_equal(found, keys == 0))  # not found, or key 0
    if searching.size:
        rows[searching], found[searching] = _search_buckets(keys[searching], buckets[searching], stored_keys, scores,
                                                            capacity)
    return rows, found


_SAMPLE = 1024  # the keys whose first two slots decide whether every key probes them


def _mostly_in_first_two(keys, buckets, stored_keys) -> bool:
    first_two = _first_two_slots(buckets, stored_keys)
    return 2 * np.count_nonzero((first_two[:, 0] == keys) | (first_two[:, 1] == keys)) >= keys.size


def _first_two_slots(buckets, stored_keys):
    """`(n, 2)`: the keys in each bucket's first two slots (of an even number), read as
    one element of twice their size (a complex128 of two int64, an int64 of two int32)."""
    pair = np.complex128 if stored_keys.itemsize == 8 else np.int64
    slots = stored_keys.shape[1]
    first_two = np.take(stored_keys.view(pair).reshape(-1), buckets * np.int32(slots // 2))
    return first_two.view(stored_keys.dtype).reshape(-1, 2)


def _search_buckets(keys, buckets, stored_keys, scores, capacity):
    """`first_holding_row` of keys that each compare their whole bucket."""
    slots = stored_keys.shape[1]
    slot, found = first_in_buckets(stored_keys, buckets, keys)
    rows = buckets * np.int32(slots) + slot  # the bucket's first row where none holds the key
    zeros = np.flatnonzero(keys == 0)  # a slot holding key 0 may be a row never given
    found[zeros] &= scores.reshape(-1)[rows[zeros]] != 0
    if _partial_last(stored_keys, capacity):
        found &= rows < capacity
    return rows * found, found


def _partial_last(stored_keys, capacity) -> bool:
    """Whether the last bucket is partly past the table (its rows there never given)."""
    return (stored_keys.shape[0] - 1) * stored_keys.shape[1] > capacity


def first_in_buckets(stored_keys, buckets, keys, chunk=8192):
    """`first_true` of each key compared with the slots of its bucket, in chunks of
    keys: a chunk's copy of its buckets is compared while still in the CPU's cache."""
    slot, held = np.empty(keys.shape, np.int32), np.empty(keys.shape, bool)
    for start in range(0, keys.shape[0], chunk):
        part = slice(start, start + chunk)
        slot[part], held[part] = first_true(np.take(stored_keys, buckets[part], axis=0) == keys[part, None])
    return slot, held


def first_true(matches):
    """`(first, any)` of a numpy bool `(n, m)` array, `m` at most 16: the column of
    each row's first True (0 where none), and whether it has one. A row's Trues are
    the bits of a uint16 (`np.packbits`, one pass), the first its lowest set bit, whose
    index is the exponent of that bit as a float: numpy's reductions over a few
    columns (`argmax`) cost several times as much."""
    n, m = matches.shape
    if m != 16:
        matches = np.concatenate([matches, np.zeros((n, 16 - m), bool)], axis=1)
    bits = np.packbits(matches.reshape(-1), bitorder="little").view("<u2")
    lowest = bits & -bits
    first = (lowest.astype(np.float32).view(np.int32) >> 23) - 127
    held = bits != 0
    return first * held, held

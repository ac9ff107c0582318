"""Finding a step's keys in a dynamic table's map (`key_slots.find`) by numpy on the
host: eager torch's on a CPU.

There each torch op on a step's keys costs several times numpy's, and each keras op
the dispatch of a call: the find runs as one route of numpy calls on the tensors' own
memory, from the keys to their rows. Each key first reads its bucket's first two slots
(16 bytes of one cache line), where most keys of a table that is not full live; only
the others compare their whole bucket.
"""

import numpy as np

from keras_embed_ext.key_hash import hash_on_host
from keras_embed_ext.key_hash import remainder_on_host
from keras_embed_ext.key_slots import Found
from keras_embed_ext.key_slots import KeyLayout


def find_tensors(keys, tables, stored_keys, scores, clock, layout: KeyLayout, ttl_steps=None) -> Found:
    """`find` of a step's torch tensors, on their own memory."""
    import torch

    def host(x):
        return None if x is None else x.detach().numpy()

    found = find(host(keys), host(tables), host(stored_keys), host(scores), int(clock), layout, ttl_steps)
    return Found(*map(torch.from_numpy, found))


def find(keys, tables, stored_keys, scores, clock: int, layout: KeyLayout, ttl_steps=None) -> Found:
    """`key_slots.find` of numpy arrays: the same arguments, the same rows."""
    keys = keys.astype(stored_keys.dtype, copy=False)
    hashes = hash_on_host(keys)
    if tables is None:
        buckets = remainder_on_host(hashes, layout.buckets)
    else:
        buckets = layout.bucket_offsets[tables] + hashes % layout.bucket_counts[tables]
    rows, found = first_holding_row(keys, buckets, stored_keys, scores, layout.capacity)
    if ttl_steps is not None:
        found &= clock - scores.reshape(-1)[rows] < ttl_steps
        rows *= found
    return Found(rows, found, buckets)


def first_holding_row(keys, buckets, stored_keys, scores, capacity: int):
    """`backends.keys.first_holding_row` of numpy arrays: `(rows, found)`, each key's
    row in the first slot of its bucket that holds it, if that slot was given and is
    below `capacity`, else 0.

    A bucket's rows are given lowest free first, so a slot holding a key other than 0
    was given. A key 0 is searched for in the whole bucket, which reads its slot's
    score (0: never given)."""
    slots = stored_keys.shape[1]
    rows = buckets * np.int32(slots)
    if slots % 2 == 0:
        # A pair of int64 read as one complex128 element (of int32, one int64).
        pair = np.complex128 if stored_keys.itemsize == 8 else np.int64
        first_two = np.take(stored_keys.view(pair).reshape(-1), rows >> 1)
        first_two = first_two.view(stored_keys.dtype).reshape(-1, 2)
        found = first_two[:, 0] == keys
        in_second = np.greater(first_two[:, 1] == keys, found)  # and not in the first
        rows += in_second
        found |= in_second
    else:
        found = stored_keys.reshape(-1)[rows] == keys
    partial_last = (stored_keys.shape[0] - 1) * slots > capacity  # a last bucket partly past the table
    if partial_last:
        found &= rows < capacity
    searching = np.flatnonzero(np.less_equal(found, keys == 0))  # not found, or key 0
    if searching.size:
        bucket, wanted = buckets[searching], keys[searching]
        slot, in_bucket = first_in_buckets(stored_keys, bucket, wanted)
        found_rows = bucket * np.int32(slots) + slot  # the bucket's first row where none holds the key
        zeros = np.flatnonzero(wanted == 0)
        in_bucket[zeros] &= scores.reshape(-1)[found_rows[zeros]] != 0
        if partial_last:
            in_bucket &= found_rows < capacity
        rows[searching] = found_rows * in_bucket
        found[searching] = in_bucket
    return rows, found


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

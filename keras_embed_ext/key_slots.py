"""Where raw keys live in a dynamic table: hashing, finding and admitting keys.

Values in, values out, in `keras.ops`, with static shapes (the same code runs under
`jax.jit`, `tf.function` and torch). A table of `capacity` rows is split into buckets of
`BUCKET_SIZE` rows (one bucket when the table is smaller); a key may live only in the
bucket its hash names, so finding it compares the key with one bucket's keys, and
admitting it frees the lowest-scored row of that bucket. Several dynamic tables of one
stack (`KeyLayout`) each have buckets of their own, side by side. Every per-row array
has one bucket more than the table: writes which change nothing go to its first row
(`capacity` in the flat numbering of writes, where row `r` is bucket `r // slots`, slot
`r % slots`).
"""

from typing import NamedTuple

import numpy as np
from keras import ops

from keras_embed_ext.backends.context import shapes_are_static
from keras_embed_ext.backends.keys import compress
from keras_embed_ext.backends.keys import first_holding_row
from keras_embed_ext.backends.keys import group_by_bucket_then_key
from keras_embed_ext.backends.keys import kth_smallest
from keras_embed_ext.backends.keys import segment_sum
from keras_embed_ext.backends.keys import spread
from keras_embed_ext.backends.rows import take_elements
from keras_embed_ext.backends.rows import take_rows
from keras_embed_ext.key_hash import hash_keys
from keras_embed_ext.key_hash import remainder
from keras_embed_ext.key_hash import remainder_on_host

BUCKET_SIZE = 16
# A row's eviction rank is `base * slots + slot`: unique, so no sort's tie-breaking
# decides. Rows a step looks up (and a last bucket's missing rows) get `PROTECTED`.
PROTECTED = (2**31 - 1) // BUCKET_SIZE - 1
MAX_SCORE = PROTECTED - 1  # an LFU score stops growing here


def bucket_layout(capacity: int):
    """`(buckets, slots)`: how many buckets, of how many rows each. A key map holds
    `(buckets + 1, slots)` arrays: a bucket's rows side by side, then one scratch bucket."""
    slots = min(BUCKET_SIZE, capacity)
    return -(-capacity // slots), slots


class KeyLayout:
    """Where the keys of the dynamic tables of one stack live: each table's buckets,
    side by side, so a key never leaves its table's rows.

    One table of `capacity` rows is laid out by `bucket_layout`. In a stack of several,
    every bucket has `BUCKET_SIZE` slots and each table starts at a bucket of its own:
    its rows are `row_offsets[t]` on, and the slots past its capacity are never given.
    `capacity` is the stack's rows (padding included) and its scratch row.
    """

    def __init__(self, capacities):
        self.capacities = tuple(int(c) for c in capacities)
        if len(self.capacities) == 1:
            buckets, self.slots = bucket_layout(self.capacities[0])
            self.bucket_counts = np.array([buckets], "int32")
            self.capacity = self.capacities[0]
        else:
            self.slots = BUCKET_SIZE
            self.bucket_counts = np.array([-(-c // BUCKET_SIZE) for c in self.capacities], "int32")
            self.capacity = int(self.bucket_counts.sum()) * BUCKET_SIZE
        self.buckets = int(self.bucket_counts.sum())
        self.bucket_offsets = (np.cumsum(self.bucket_counts) - self.bucket_counts).astype("int32")
        self.row_offsets = [int(offset) * self.slots for offset in self.bucket_offsets]
        self.row_ends = np.asarray(self.row_offsets, "int32") + np.asarray(self.capacities, "int32")

    @property
    def stacked(self) -> bool:
        return len(self.capacities) > 1

    def buckets_of(self, keys, tables=None):
        """The bucket of each key of table `tables` (int32, shaped as the keys)."""
        if not self.stacked:
            return remainder(hash_keys(keys), self.buckets)
        hashed = hash_keys(keys)
        offsets, counts = ops.convert_to_tensor(self.bucket_offsets), ops.convert_to_tensor(self.bucket_counts)
        return take_rows(offsets, tables) + ops.mod(hashed, take_rows(counts, tables))

    def buckets_on_host(self, hashes, tables=None):
        """`buckets_of` of numpy `hashes` (`key_hash.hash_on_host`, overwritten where
        not stacked) and `tables`."""
        if not self.stacked:
            return remainder_on_host(hashes, self.buckets)
        return self.bucket_offsets[tables] + hashes % self.bucket_counts[tables]

    def exists(self, rows, tables=None):
        """Whether each row of `rows` is one of its table's (not past its capacity)."""
        if not self.stacked:
            return rows < self.capacity
        return rows < take_rows(ops.convert_to_tensor(self.row_ends), tables)


class Found(NamedTuple):
    rows: object  # (n,) int32: the key's row, 0 where not found
    found: object  # (n,) bool
    buckets: object  # (n,) int32


def find(keys, tables, stored_keys, scores, clock, layout: KeyLayout, ttl_steps=None) -> Found:
    """Each key's row among the resident keys of its table (`tables`, in a stack), from
    `(buckets + 1, slots)` arrays:
    `scores` are a row's sightings (LFU) or last step seen (LRU, TTL), 0 for a free
    row; `clock` counts the training steps taken. With `ttl_steps`, a key unseen for
    that many steps is no longer resident.

    A resident key is the first of its bucket's slots to hold it, since a key admitted
    again takes the lowest free slot, before any it left behind
    (`backends.keys.first_holding_row`)."""
    bucket = layout.buckets_of(keys, tables)
    rows, found = first_holding_row(keys, bucket, stored_keys, scores, layout.capacity)
    if ttl_steps is None:
        return Found(rows, found, bucket)
    found = found & (clock - take_elements(scores, rows) < ttl_steps)
    return Found(ops.where(found, rows, 0), found, bucket)


class Admitted(NamedTuple):
    rows: object  # (n,) int32: each key's row after the step, 0 where it has none
    found: object  # (n,) bool: the key has a row
    admitted_rows: object  # (n,) int32: the rows given to new keys, `capacity` elsewhere
    admitted_keys: object  # (n,) their keys, 0 elsewhere
    admitted_scores: object  # (n,) their first scores, 0 elsewhere
    sightings: object  # (n,) int32: 1 for each occurrence of a key not resident, else 0


def none_admitted(keys, found: Found, capacity: int) -> Admitted:
    """`admit`'s result when every key is resident (or padding): nothing to write."""
    nowhere = ops.full(ops.shape(keys), capacity, "int32")
    zeros = ops.zeros(ops.shape(keys), "int32")
    return Admitted(found.rows, found.found, nowhere, keys, zeros, zeros)


def seen_rows(found: Found, capacity: int):
    """The rows of the resident keys, one entry per occurrence, `capacity` (a row no key
    holds) for the others: where a step adds to the keys' scores."""
    return ops.where(found.found, found.rows, capacity)


def admit(keys, tables, found: Found, unknown, scores, clock, layout: KeyLayout, lfu: bool, min_count: int = 1,
          sighted=None, ttl_steps=None):
    """One training step's admissions, for flat `keys (n,)` (of `tables`, in a stack)
    and `find`'s result, among rows of `scores` (as for `find`); `unknown (n,)` marks
    the keys that may be admitted: those not found, padding left out.

    A key not resident is admitted once its sightings (`sighted`, from the sketch, plus
    its occurrences now) reach `min_count`: it takes the lowest-scored row of its
    bucket that no key of this step holds, free rows first. Several new keys of one
    bucket take its rows in increasing key order; one left without a row reads zeros.
    An admitted key's first score is its occurrences (LFU) or the step. (Resident keys'
    scores are the caller's, at `seen_rows`.)

    With static shapes (JAX, TensorFlow's XLA) every key is sorted, the resident ones
    marking the slots they hold; elsewhere only the keys not resident, a fraction of a
    trained table's.
    """
    n = ops.shape(keys)[0]  # a tensor in a TensorFlow graph of unknown batch size
    slots, capacity = layout.slots, layout.capacity
    static = shapes_are_static()
    taking_part = None if static else compress(ops.arange(n, dtype="int32"), unknown)

    def part(x):
        return x if x is None or taking_part is None else take_rows(x, taking_part)

    part_keys = part(keys)
    m = ops.shape(part_keys)[0]
    positions = ops.arange(m, dtype="int32")
    # One order by bucket, then key: a key's occurrences side by side (its first one
    # represents it), a bucket's keys in a run, in increasing key order.
    order, position = group_by_bucket_then_key(part(found.buckets), part_keys)
    sorted_keys = take_rows(part_keys, order)

    def by_key(x):
        return None if x is None else take_rows(part(x), order)

    bucket_k, tables_k = by_key(found.buckets), by_key(tables)
    # A key's run ends with its bucket's: in a stack, one key of two tables has two buckets.
    bucket_starts = _starts(bucket_k)
    first = _starts(sorted_keys) | bucket_starts
    _, first_of, next_of = _runs(first, positions, m, static)
    occurrences = next_of - first_of
    counts = occurrences if sighted is None else by_key(sighted) + occurrences
    wants = first & (counts >= min_count)
    if static:
        found_k, rows_found = by_key(found.found), by_key(found.rows)
        wants = wants & by_key(unknown)
    bucket_run, start, _ = _runs(bucket_starts, positions, m, static)
    wanting = ops.concatenate([ops.zeros((1,), "int32"), ops.cumsum(ops.cast(wants, "int32"))])
    rank = take_rows(wanting, positions + 1) - 1 - take_rows(wanting, start)

    def candidates(at, held):
        """`base * slots + slot` of each slot of the buckets of the keys at `at`, lowest
        first to be given: free rows, then by score; rows `held` in the step, or past a
        table's capacity, never."""
        bucket = take_rows(bucket_k, at)
        slot_rows = ops.expand_dims(bucket * slots, -1) + ops.arange(slots, dtype="int32")
        exists = layout.exists(slot_rows, None if tables_k is None else ops.expand_dims(take_rows(tables_k, at), -1))
        slot_scores = take_rows(scores, bucket)
        live = exists & (slot_scores > 0)
        if ttl_steps is not None:
            live = live & (clock - slot_scores < ttl_steps)
        base = ops.where(live, ops.minimum(slot_scores, MAX_SCORE), 0)
        base = ops.where(held | ~exists, PROTECTED, base)
        return base * slots + ops.arange(slots, dtype="int32")

    slot_rank = ops.clip(rank, 0, slots - 1)
    if static:  # each key's bucket, ranked per key
        # The slots that keys of the step hold, as a bitmask per bucket: each resident
        # key adds its slot's bit once (no two keys share a row, so the sum is the union).
        bits = ops.where(first & found_k, ops.left_shift(ops.ones_like(rows_found), ops.mod(rows_found, slots)), 0)
        held_bits = ops.right_shift(ops.expand_dims(take_rows(segment_sum(bits, bucket_run, m), bucket_run), -1),
                                    ops.arange(slots, dtype="int32"))
        chosen = kth_smallest(candidates(positions, ops.bitwise_and(held_bits, 1) > 0), slot_rank)
    else:  # each bucket with a new key ranked once (a sort), read at each key's rank
        has_want = segment_sum(ops.cast(wants, "int32"), bucket_run, m) > 0
        at = compress(positions, bucket_starts & take_rows(has_want, bucket_run))
        count = ops.shape(at)[0]
        held = _slots_held(take_rows(bucket_k, at), found, slots)
        # A last row that gives nothing, read by the keys of buckets without a new key.
        ranked = ops.concatenate([ops.sort(candidates(at, held), axis=-1),
                                  ops.full((1, slots), PROTECTED * slots, "int32")])
        # The bucket runs with a new key, in order, are the rows of `ranked`.
        row_of_run = ops.where(has_want, ops.cumsum(ops.cast(has_want, "int32")) - 1, count)
        chosen = take_rows(ops.reshape(ranked, (-1,)), take_rows(row_of_run, bucket_run) * slots + slot_rank)
    admitted_k = wants & (rank < slots) & (chosen // slots < PROTECTED)
    # Every occurrence of a key takes its first one's row.
    group_admitted = take_rows(admitted_k, first_of)
    new_rows = take_rows(bucket_k * slots + ops.mod(chosen, slots), first_of)
    # An entry that gives no row writes zeros to the scratch row, as numpy's admission does.
    giving = first & admitted_k
    given = (ops.where(giving, new_rows, capacity), ops.where(giving, sorted_keys, 0),
             ops.where(giving, occurrences if lfu else clock + 1, 0))
    sightings = ops.cast(~found.found, "int32")
    if static:
        rows_k = ops.where(found_k, rows_found, ops.where(group_admitted, new_rows, 0))
        return Admitted(take_rows(rows_k, position), take_rows(found_k | group_admitted, position), *given, sightings)
    # The new keys' rows, plus one (0: none), at their places among all the keys.
    placed = spread(take_rows(ops.where(group_admitted, new_rows + 1, 0), position), taking_part, n)
    # What is written keeps the batch's length: a compiled write is not compiled per step.
    padding = (capacity, 0, 0)
    given = [ops.concatenate([x, ops.full((n - m,), fill, x.dtype)]) for x, fill in zip(given, padding)]
    return Admitted(ops.where(found.found, found.rows, ops.maximum(placed - 1, 0)), found.found | (placed > 0),
                    *given, sightings)


def _slots_held(buckets, found: Found, slots: int):
    """`(count, slots)` bools: which slots of `buckets` (`(count,)`, sorted and distinct)
    keys found in the step hold."""
    count = ops.shape(buckets)[0]
    # Each key's place among the buckets; `count` and a bucket none has where it is not one.
    place = ops.cast(ops.searchsorted(buckets, found.buckets), "int32")
    inside = found.found & (take_rows(ops.concatenate([buckets, ops.full((1,), -1, "int32")]), place) == found.buckets)
    cells = ops.where(inside, place * slots + ops.mod(found.rows, slots), count * slots)
    marks = segment_sum(ops.ones_like(cells), cells, count * slots + 1)
    return ops.reshape(marks[: count * slots] > 0, (count, slots))


def _starts(sorted_values):
    """Whether each position of `sorted_values (n,)` begins a run of equal values."""
    return ops.concatenate([ops.ones((1,), "bool"), sorted_values[1:] != sorted_values[:-1]])


def _runs(starts, positions, n, static: bool):
    """`(run, start, end)` of each position: its run's index, the run's first position and
    the one after its last, where `starts` marks each run's first position. The runs'
    starts listed (a run's index is a running count of `starts`), read back twice:
    cheaper than a binary search on torch's CPU."""
    run = ops.cumsum(ops.cast(starts, "int32")) - 1
    # Run r starts at `first[r]`, and the run after the last ends at `n`.
    if static:  # positions within a run go to a scratch element
        first = ops.scatter_update(ops.full((n + 2,), n, "int32"), ops.expand_dims(ops.where(starts, run, n + 1), -1),
                                   positions)
    else:  # the starts listed, where TensorFlow's scatter into a copy cost several times more
        first = ops.concatenate([compress(positions, starts), ops.full((1,), n, "int32")])
    return run, take_rows(first, run), take_rows(first, run + 1)


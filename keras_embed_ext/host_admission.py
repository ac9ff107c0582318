"""A training step's admissions (`key_slots.admit`) by numpy on the host: JAX's on a
CPU (in a compiled step too) and eager torch's on a CPU.

With static shapes (JAX) every key of a step takes part in `key_slots.admit`: sorted,
grouped, and each ranking its bucket's slots; on eager torch each of its passes over
the keys not resident costs several times numpy's. numpy sorts only the keys not
resident and ranks slots once per distinct new key, on the arrays where they lie.
"""

import keras
import numpy as np

from keras_embed_ext.backends.keys import order_on_host
from keras_embed_ext.key_slots import MAX_SCORE
from keras_embed_ext.key_slots import PROTECTED
from keras_embed_ext.key_slots import Admitted
from keras_embed_ext.key_slots import Found
from keras_embed_ext.key_slots import KeyLayout


def admit(keys, tables, found: Found, unknown, scores, clock, layout: KeyLayout, lfu: bool, min_count: int = 1,
          sighted=None, ttl_steps=None) -> Admitted:
    """`key_slots.admit` of numpy arrays (the same arguments, the same admissions): the
    given rows, keys and scores first, then `capacity`, 0 and 0."""
    n, slots, capacity = keys.shape[0], layout.slots, layout.capacity
    part = np.flatnonzero(unknown)
    at = part[order_on_host(found.buckets[part], keys[part])]  # the new keys by bucket, then key
    sorted_buckets = found.buckets[at]
    bucket_starts = _starts(sorted_buckets)
    is_first = _starts(keys[at]) | bucket_starts
    starts = np.flatnonzero(is_first)  # each key's (of a bucket) first occurrence: a group
    occurrences = np.diff(starts, append=at.size).astype(np.int32, copy=False)
    counts = occurrences if sighted is None else sighted[at[starts]] + occurrences
    wants = counts >= min_count
    # A group's rank: the wanting groups before it, less those before its bucket's first.
    before = np.cumsum(wants) - wants
    rank = before - before[np.maximum.accumulate(np.where(bucket_starts[starts], np.arange(starts.size), 0))]
    taking = np.flatnonzero(wants & (rank < slots))
    group_at = at[starts[taking]]
    buckets = found.buckets[group_at]
    held = _held_slots(buckets, found, slots)
    ranked = _candidates(buckets, None if tables is None else tables[group_at], held, scores, clock, layout,
                         ttl_steps)
    chosen = _kth_smallest(ranked, rank[taking])
    admitted = chosen // slots < PROTECTED
    new_rows = (buckets * slots + chosen % slots)[admitted]
    # Each group's row plus one (0: none), read at each of its keys.
    group_rows = np.zeros(starts.size, np.int32)
    group_rows[taking[admitted]] = new_rows + 1
    placed = np.repeat(group_rows, occurrences)
    rows, now_found = found.rows.copy(), found.found.copy()
    rows[at] = np.maximum(placed - 1, 0)
    now_found[at] = placed > 0
    count = new_rows.size
    given_rows = np.full(n, capacity, np.int32)
    given_rows[:count] = new_rows
    given_keys = np.zeros(n, keys.dtype)
    given_keys[:count] = keys[group_at[admitted]]
    given_scores = np.zeros(n, np.int32)
    given_scores[:count] = occurrences[taking[admitted]] if lfu else clock + 1
    return Admitted(rows, now_found, given_rows, given_keys, given_scores, (~found.found).astype(np.int32))


def _held_slots(buckets, found: Found, slots):
    """`(k, slots)` bools: which slots of `buckets (k,)` (sorted) keys found in the step
    hold. Each found key's bucket is searched among the distinct ones: the cost follows
    the step's keys, not the map's size."""
    held_at = np.flatnonzero(found.found)
    distinct_starts = _starts(buckets)
    distinct = buckets[distinct_starts]
    held = np.zeros((distinct.size, slots), bool)
    if held_at.size and distinct.size:
        found_buckets = found.buckets[held_at]
        place = np.minimum(np.searchsorted(distinct, found_buckets), distinct.size - 1)
        inside = distinct[place] == found_buckets
        held[place[inside], found.rows[held_at[inside]] % slots] = True
    return held[np.cumsum(distinct_starts) - 1]


def _candidates(buckets, tables, held, scores, clock, layout: KeyLayout, ttl_steps):
    """`key_slots.admit`'s ranking of the slots of `buckets (k,)`: `base * slots + slot`,
    lowest first to be given; free rows first, then by score; rows `held` in the step,
    or past a table's capacity, never."""
    slots = layout.slots
    slot_scores = scores[buckets]
    live = slot_scores > 0
    if ttl_steps is not None:
        live &= clock - slot_scores < ttl_steps
    base = np.minimum(slot_scores, MAX_SCORE)
    base *= live
    # The rows of each bucket within its table: all of them but in a table's last bucket.
    within = (layout.capacity if tables is None else layout.row_ends[tables]) - buckets * slots
    if within.size and within.min() < slots:
        held = held | (np.arange(slots, dtype=np.int32) >= within[:, None])
    base[held] = PROTECTED
    base *= slots
    base += np.arange(slots, dtype=np.int32)
    return base


def _kth_smallest(x, k):
    """`sort(x, axis=-1)[i, k[i]]` of `x (n, m)`: the smallest where `k` is 0, most often
    (a running minimum over columns: numpy's reductions over a few elements are slow)."""
    smallest = x[:, 0].copy()
    for column in range(1, x.shape[1]):
        np.minimum(smallest, x[:, column], out=smallest)
    later = np.flatnonzero(k > 0)
    if later.size:
        smallest[later] = np.sort(x[later], axis=1)[np.arange(later.size), k[later]]
    return smallest


def _starts(sorted_values):
    """Whether each element of 1-D `sorted_values` begins a run of equal values."""
    starts = np.ones(sorted_values.shape, bool)
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=starts[1:])
    return starts


def admit_tensors(keys, tables, found: Found, unknown, scores, clock, layout: KeyLayout, lfu: bool,
                  min_count: int = 1, sighted=None, ttl_steps=None) -> Admitted:
    """`admit` of a step's tensors where `backends.keys.admits_on_host`: eager torch's on
    their own memory; JAX's through a `buffer_callback`, which reads the arrays and
    writes the results where they lie (a `pure_callback` would copy every array, the
    map's scores included, at each step)."""
    policy = (layout, lfu, min_count)
    if keras.backend.backend() == "torch":
        import torch

        def host(x):
            return None if x is None else x.detach().numpy()

        admitted = admit(host(keys), host(tables), Found(*map(host, found)), host(unknown), host(scores), int(clock),
                         *policy, host(sighted), ttl_steps)
        return Admitted(*map(torch.from_numpy, admitted))
    import jax
    from jax.experimental.buffer_callback import buffer_callback

    names = ("keys", "tables", "buckets", "found", "rows", "unknown", "scores", "clock", "sighted")
    given = dict(zip(names, (keys, tables, found.buckets, found.found, found.rows, unknown, scores, clock, sighted)))

    def on_host(context, results, **arrays):
        arrays = {name: np.asarray(value) for name, value in arrays.items()}
        found_here = Found(arrays["rows"], arrays["found"], arrays["buckets"])
        admitted = admit(arrays["keys"], arrays.get("tables"), found_here, arrays["unknown"], arrays["scores"],
                         arrays["clock"].item(), *policy, arrays.get("sighted"), ttl_steps)
        for result, value in zip(results, admitted):
            np.asarray(result)[...] = value

    shapes = [jax.ShapeDtypeStruct(keys.shape, dtype) for dtype in ("int32", "bool", "int32", keys.dtype, "int32",
                                                                     "int32")]
    admit_here = buffer_callback(on_host, shapes, vmap_method="sequential")
    return Admitted(*admit_here(**{k: v for k, v in given.items() if v is not None}))

"""Sorting and selecting a step's keys for a dynamic table's map."""

import keras

from keras_embed_ext.backends.context import eager_on_torch_cpu
from keras_embed_ext.backends.rows import take_elements
from keras_embed_ext.backends.rows import take_rows


def group_by_bucket_then_key(buckets, keys):
    """`(order, position)`: `take(keys, order)` is sorted by `buckets`, then `keys`, so a
    key's repeats in one bucket are side by side; `position[i]` is a sorted position of
    key `i` (for a repeated (bucket, key), of any of its repeats: what is read there is
    the same for each). Elsewhere than on JAX, two stable sorts (key, then bucket),
    faster there than one of a pair."""
    ops = keras.ops
    n = keys.shape[0]
    if keras.backend.backend() == "jax" and n is not None:
        return _group_on_jax(buckets, keys, n)
    by_key = ops.argsort(keys)
    order = take_rows(by_key, ops.argsort(take_rows(buckets, by_key)))
    if keras.backend.backend() == "tensorflow":  # its scatter copies into a new tensor first
        import tensorflow as tf

        return order, tf.math.invert_permutation(order)
    positions = ops.arange(ops.shape(keys)[0], dtype="int32")
    return order, ops.scatter_update(ops.zeros_like(positions), ops.expand_dims(order, -1), positions)


def _group_on_jax(buckets, keys, n):
    """`group_by_bucket_then_key` on JAX: each key's rank among the keys and its
    bucket's rank among the buckets make one uint32 per key, sorted alone (XLA's CPU
    sort of one array is several times faster than of several, and a rank's repeats
    need no order among them). Ranks are positions below `n` while `n * n < 2**32`;
    beyond, ranks among the distinct values, if their counts' product fits in 32 bits,
    or else one sort of the three arrays."""
    import jax
    import jax.numpy as jnp

    positions = jnp.arange(n, dtype="int32")

    def rank(x, distinct):
        sorted_x = jax.lax.sort(x)
        at = jnp.searchsorted(sorted_x, x, side="left", method="scan").astype("int32")
        if not distinct:
            return at, n
        dense = jnp.cumsum(jnp.concatenate([jnp.zeros((1,), "int32"), (sorted_x[1:] != sorted_x[:-1]).astype("int32")]))
        return dense[at], dense[-1] + 1

    def by_one_sort(bucket_rank, key_rank, key_count):
        group = bucket_rank.astype("uint32") * jnp.asarray(key_count, "uint32") + key_rank.astype("uint32")
        sorted_groups = jax.lax.sort(group)
        position = jnp.searchsorted(sorted_groups, group, side="left", method="scan").astype("int32")
        # An occurrence of each (bucket, key) at its run's first position (repeats write
        # the same one), read back at each position of the run.
        occurrence = jnp.zeros((n,), "int32").at[position].set(positions)
        starts = jnp.concatenate([jnp.ones((1,), bool), sorted_groups[1:] != sorted_groups[:-1]])
        return occurrence[jax.lax.cummax(jnp.where(starts, positions, 0))], position

    def by_three_arrays():
        order = jax.lax.sort((buckets, keys, positions), num_keys=2)[2]
        return order, jnp.zeros((n,), "int32").at[order].set(positions)

    distinct = n * n >= 2**32
    (bucket_rank, bucket_count), (key_rank, key_count) = rank(buckets, distinct), rank(keys, distinct)
    if not distinct:
        return by_one_sort(bucket_rank, key_rank, n)
    # The largest group, `bucket_count * key_count - 1`, below 2**32, in uint32 arithmetic.
    key_count = key_count.astype("uint32")
    fits = (bucket_count - 1).astype("uint32") <= (jnp.uint32(2**32 - 1) - (key_count - 1)) // key_count
    return jax.lax.cond(fits, lambda: by_one_sort(bucket_rank, key_rank, key_count), by_three_arrays)


def first_holding_slot(keys, buckets, stored_keys, scores):
    """`(rows, held)` of flat `keys`: the row of the first slot of each key's bucket
    (in `(buckets + 1, slots)` arrays of stored keys and scores) that holds the key,
    and whether that slot was given (its score is not 0).

    A bucket's rows are given lowest free first, so its rows never given (score 0,
    key 0) are its last, and a slot holding a key other than 0 was given. On a torch
    CPU, eager, each key first reads its bucket's first slot, where most keys of a
    table that is not full live; only the others read and compare their whole bucket.
    Elsewhere every key compares its whole bucket at once (static shapes, and XLA
    fuses the passes)."""
    ops = keras.ops
    slots = stored_keys.shape[1]
    if eager_on_torch_cpu(keys):
        return _first_slot_then_bucket(keys.to(stored_keys.dtype), buckets, stored_keys, scores)
    holds = take_rows(stored_keys, buckets) == ops.expand_dims(ops.cast(keys, stored_keys.dtype), -1)
    # `slots - s` for the first slot `s` holding the key, 0 if none: a max over int8,
    # which TensorFlow's XLA reduces faster than an argmax over bools (on JAX an argmax
    # made the find alone faster but the jitted lookup no faster).
    first = ops.max(ops.cast(holds, "int8") * ops.cast(ops.arange(slots, 0, -1), "int8"), axis=-1)
    rows = buckets * slots + ops.mod(slots - ops.cast(first, "int32"), slots)

    def given_if_zero():  # a slot holding key 0 may be a row never given
        return (first > 0) & ((keys != 0) | (take_elements(scores, rows) > 0))

    # TensorFlow: a branch would capture the map's variable in the XLA function that
    # tables share; torch: a branch reads the condition on the host.
    if keras.backend.backend() != "jax":
        return rows, given_if_zero()
    # The scores are read (a random read per key) only when a key is 0.
    return rows, ops.cond(ops.any(keys == 0), given_if_zero, lambda: first > 0)


def _first_slot_then_bucket(keys, buckets, stored_keys, scores):
    """`first_holding_slot` on torch: each key reads its bucket's first slot. A slot
    never given holds key 0, so a first slot holding a key other than 0 was given;
    only the other keys compare their whole bucket, and read the score of the first
    slot holding them. That slot is the leading bit of a sum of powers of two, a
    matrix-vector product, not a reduction over the slots."""
    import torch

    slots = stored_keys.shape[1]
    first_rows = buckets * slots
    held = (stored_keys.reshape(-1).index_select(0, first_rows) == keys) & (keys != 0)
    searching = torch.nonzero(~held).squeeze(1)
    if not searching.numel():
        return first_rows, held
    buckets = buckets.index_select(0, searching)
    matches = stored_keys.index_select(0, buckets) == keys.index_select(0, searching).unsqueeze(1)
    powers = torch.pow(2.0, torch.arange(slots - 1, -1, -1, dtype=torch.float32))
    marks = matches.view(torch.uint8).to(torch.float32) @ powers  # exact: below 2**24
    leading_bit = (marks.view(torch.int32) >> 23) - 127  # the float's exponent
    rows = buckets * slots + torch.where(marks > 0, slots - 1 - leading_bit, 0).to(buckets.dtype)
    found = (marks > 0) & (scores.reshape(-1).index_select(0, rows) != 0)
    return first_rows.index_copy(0, searching, rows), held.index_copy_(0, searching, found)


def kth_smallest(x, k):
    """`sort(x, axis=-1)[i, k[i]]` of `x (n, m)` with distinct values in each row. On JAX
    each value's rank is counted (m * m comparisons that XLA fuses, 10x faster than its
    CPU sort); elsewhere by a sort."""
    ops = keras.ops
    if keras.backend.backend() == "jax":
        below = ops.sum(ops.cast(ops.expand_dims(x, 1) < ops.expand_dims(x, 2), "int32"), axis=-1)
        return ops.max(ops.where(below == ops.expand_dims(k, -1), x, ops.min(x)), axis=-1)
    return ops.take_along_axis(ops.sort(x, axis=-1), ops.expand_dims(k, -1), axis=-1)[:, 0]


def segment_sum(data, segment_ids, count):
    """`keras.ops.segment_sum` of 1-D int `data` into `count` segments, in `data`'s dtype:
    keras' torch version rounds through float32 and copies the ids per element."""
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        return torch.zeros(count, dtype=data.dtype, device=data.device).index_add_(0, segment_ids.long(), data)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.math.unsorted_segment_sum(data, segment_ids, count)
    return keras.ops.segment_sum(data, segment_ids, num_segments=count)


def compress(x, mask):
    """The entries of `x` where `mask` holds (a dynamic shape: TensorFlow and torch)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.boolean_mask(x, mask)
    return x[mask]

"""Sorting and selecting a step's keys for a dynamic table's map."""

import functools
import importlib.util

import keras
import numpy as np

from keras_embed_ext.backends.context import compiled_by_xla
from keras_embed_ext.backends.context import eager_on_torch_cpu
from keras_embed_ext.backends.rows import take_elements
from keras_embed_ext.backends.rows import take_rows


def group_by_bucket_then_key(buckets, keys):
    """`(order, position)`: `take(keys, order)` is sorted by `buckets`, then `keys`, so a
    key's repeats in one bucket are side by side; `position[i]` is a sorted position of
    key `i` (for a repeated (bucket, key), of any of its repeats: what is read there is
    the same for each). On TensorFlow's CPU outside XLA, where its sorts cost several
    times numpy's, by numpy in a host callback (`_group_on_host`); elsewhere than on
    JAX, two stable sorts (key, then bucket), faster there than one of a pair."""
    ops = keras.ops
    n = keys.shape[0]
    if _sorts_on_host():
        return _group_by_host_callback(buckets, keys)
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
    """`group_by_bucket_then_key` by XLA: each key's rank among the keys and its bucket's
    rank among the buckets make one uint32 per key, sorted alone (XLA's sort of one
    array is several times faster than of several, and a rank's repeats need no order
    among them). Ranks are positions below `n` while `n * n < 2**32`; beyond, ranks
    among the distinct values, if their counts' product fits in 32 bits, or else one
    sort of the three arrays."""
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


def _sorts_on_host() -> bool:
    """Whether a step's keys are grouped by numpy in a host callback: TensorFlow's on a
    CPU outside XLA (which cannot call the host). torch sorts its own, and on JAX on a
    CPU the whole admission is numpy's (`admits_on_host`)."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return not compiled_by_xla() and not tf.config.list_logical_devices("GPU")


def admits_on_host(keys) -> bool:
    """Whether a dynamic table's admission of `keys` runs in numpy on the host
    (`host_admission`): on eager torch on a CPU, and on JAX on a CPU outside a
    `keras.distribution` (whose sharded keys a host callback would not see whole),
    where jax has `jax.experimental.buffer_callback`."""
    if eager_on_torch_cpu(keys):
        return True
    if keras.backend.backend() != "jax":
        return False
    import jax

    return jax.default_backend() == "cpu" and keras.distribution.distribution() is None and _has_buffer_callback()


@functools.cache
def _has_buffer_callback() -> bool:
    return importlib.util.find_spec("jax.experimental.buffer_callback") is not None


def _group_by_host_callback(buckets, keys):
    """`_group_on_host` called from a TensorFlow graph (`tf.numpy_function`)."""
    import tensorflow as tf

    order, position = tf.numpy_function(_group_on_host, [buckets, keys], [tf.int32, tf.int32], stateful=False)
    return tf.ensure_shape(order, keys.shape), tf.ensure_shape(position, keys.shape)


def _group_on_host(buckets, keys):
    """`(order, position)` of `group_by_bucket_then_key` in numpy (`order_on_host`)."""
    order = order_on_host(np.asarray(buckets), np.asarray(keys)).astype(np.int32)
    position = np.empty(order.shape, np.int32)
    position[order] = np.arange(order.shape[0], dtype=np.int32)
    return order, position


def order_on_host(buckets, keys):
    """The order of numpy `keys` by `buckets`, then key: one sort of an int64 per key,
    its bucket then its key (int32 keys), or its bucket then its position among the
    sorted keys (wider keys), unique so no sort's tie-breaking decides. numpy's sort of
    integers is vectorized (AVX-512 where the CPU has it)."""
    buckets = buckets.astype(np.int64)
    n = keys.shape[0]
    if keys.dtype.itemsize <= 4:
        group = (buckets << 32) + keys.astype(np.int64)  # a key in [-2**31, 2**31) stays within its bucket
    else:
        key_rank = np.empty(n, np.int64)
        key_rank[np.argsort(keys)] = np.arange(n)
        group = buckets * n + key_rank
    return np.argsort(group)


def first_holding_row(keys, buckets, stored_keys, scores, capacity):
    """`(rows, found)` of flat `keys`: the row of the first slot of each key's bucket
    (in `(buckets + 1, slots)` arrays of stored keys and scores) that holds the key,
    if that slot was given (its score is not 0) and is below `capacity`, else 0.

    A bucket's rows are given lowest free first, so its rows never given (score 0,
    key 0) are its last, and a slot holding a key other than 0 was given. Every key
    compares its whole bucket at once (static shapes, and XLA fuses the passes); eager
    torch on a CPU finds keys in numpy instead (`host_find`)."""
    ops = keras.ops
    slots = stored_keys.shape[1]
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
        held = given_if_zero()
    else:  # the scores are read (a random read per key) only when a key is 0
        held = ops.cond(ops.any(keys == 0), given_if_zero, lambda: first > 0)
    found = held & (rows < capacity)
    return ops.where(found, rows, 0), found


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


def spread(values, positions, n):
    """`(n,)` zeros with `values` at `positions` (distinct): on TensorFlow a stitch, which
    costs half its scatter into a copy of the zeros."""
    ops = keras.ops
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.dynamic_stitch([tf.range(n), positions], [tf.zeros((n,), values.dtype), values])
    return ops.scatter_update(ops.zeros((n,), values.dtype), ops.expand_dims(positions, -1), values)


def compress(x, mask):
    """The entries of `x` where `mask` holds (a dynamic shape: TensorFlow and torch)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.boolean_mask(x, mask)
    if eager_on_torch_cpu(mask):
        return x.index_select(0, positions_of(mask))
    return x[mask]


def positions_of(mask, value=True):
    """The int64 positions where 1-D torch `mask` equals `value`: on a CPU, eager, by
    numpy, whose `flatnonzero` is several times faster than torch's `nonzero`."""
    import torch

    if eager_on_torch_cpu(mask):
        mask = mask.numpy()
        return torch.from_numpy(np.flatnonzero(mask if value else ~mask))
    return torch.nonzero(mask if value else ~mask).reshape(-1)

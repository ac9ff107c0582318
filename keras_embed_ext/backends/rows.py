"""Reads and writes of a table's rows: the backends' own gathers, where `keras.ops`
reads more than the rows (or is measurably slower), and in-place row writes."""

import functools
import operator

import keras
import numpy as np

from keras_embed_ext.backends.arithmetic import cast
from keras_embed_ext.backends.context import compiled_by_xla
from keras_embed_ext.backends.context import eager_on_torch_cpu
from keras_embed_ext.backends.context import is_traced
from keras_embed_ext.backends.context import summing_repeats
from keras_embed_ext.backends.fused import Fused


def take_rows(table, ids):
    """`table[ids]` along axis 0, for a variable or tensor `table` and ids known to be in range.

    `keras.ops.take` first wraps negative ids, which the validated ids never are,
    and on TensorFlow reads the whole variable before gathering. A variable that a
    sparse update (an optimizer step on `IndexedSlices`) has touched is copied in
    full by every such read; `sparse_read` reads only the rows. It is what
    `tf.gather` calls on axis 0, without its Python checks in every eager call.
    """
    backend = keras.backend.backend()
    if isinstance(table, keras.Variable):
        table = table.value
    if backend == "torch":
        import torch

        if table.ndim == 2:
            return torch.nn.functional.embedding(ids, table)
        rows = torch.index_select(table, 0, ids.reshape(-1))
        return rows.reshape((*ids.shape, *table.shape[1:]))
    if backend == "tensorflow":
        import tensorflow as tf

        if isinstance(table, tf.Variable):
            if table.trainable and summing_repeats():
                return _gather_summing_repeats(replica_local(table), ids)
            return replica_local(table).sparse_read(ids)
        return tf.raw_ops.GatherV2(params=table, indices=ids, axis=0)
    if backend == "jax":
        import jax.numpy as jnp

        return jnp.take(table, ids, axis=0, mode="clip")
    return keras.ops.take(table, ids, axis=0)


# A part of a row update on a torch CPU: as large as one core's L2 cache, so a part's
# rows are still cached when they are written; each part costs its ops' dispatch.
PART_BYTES = 1 << 21


def for_each_part(rows, grads, update, table, part_bytes=PART_BYTES):
    """`update(rows, grads)` for parts of `part_bytes` of `table`'s rows, one after
    another, on a torch CPU: a part's rows are still cached when the update writes
    them back, where a whole step's rows and the update's temporaries would not be.
    Elsewhere one update takes every row: graphs, `torch.compile` and accelerators
    take them at once (a TensorFlow `tf.while_loop` over parts measured no faster)."""
    if not eager_on_torch_cpu(rows):
        return update(rows, grads)
    row_bytes = functools.reduce(operator.mul, table.shape[1:], 1) * table.value.element_size()
    size = max(1, part_bytes // max(1, row_bytes))
    for start in range(0, rows.shape[0], size):
        update(rows[start : start + size], grads[start : start + size])


def take_elements(table, index):
    """`table.reshape(-1)[index]` of a 2-D variable or tensor, reading only those
    elements (on TensorFlow, a reshaped variable is read, and copied, in full)."""
    if isinstance(table, keras.Variable):
        table = table.value
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if isinstance(table, tf.Variable) and not compiled_by_xla():  # XLA has no ResourceGatherNd
            width = table.shape[1]
            return tf.raw_ops.ResourceGatherNd(resource=replica_local(table).handle, dtype=table.dtype,
                                               indices=tf.stack([index // width, index % width], axis=-1))
    return keras.ops.take(keras.ops.reshape(table, (-1,)), index)


def replica_local(variable):
    """A TensorFlow variable, or under a `tf.distribute` strategy the copy of a
    mirrored variable on this replica's device, whose reads and sparse updates TensorFlow
    takes there (a `MirroredVariable` has no `sparse_read` in a replica context)."""
    local = getattr(variable, "_get_on_device_or_primary", None)
    return variable if local is None else local()


def _gather_summing_repeats(variable, ids):
    """`variable.sparse_read(ids)`, whose gradient sums the slices of a repeated id.

    TensorFlow's own gradient of a gather has a slice per occurrence, and keras'
    Adagrad and Adam square each slice of a repeated id (the sum of squares, where the
    dense gradient gives the square of the sum). Here each distinct id is read once
    and its rows are copied out to its occurrences, so the gradient of the read has
    one slice per id (zeros at row 0 pad it to a static count, which XLA needs).
    """
    import tensorflow as tf

    flat_ids = tf.reshape(ids, [-1])
    count = tf.size(flat_ids)
    order = tf.argsort(flat_ids, stable=True)
    sorted_ids = tf.gather(flat_ids, order)
    first = tf.concat([[True], sorted_ids[1:] != sorted_ids[:-1]], axis=0)
    sorted_segment = tf.cumsum(tf.cast(first, "int32")) - 1
    distinct = tf.maximum(tf.math.unsorted_segment_max(sorted_ids, sorted_segment, count), 0)
    segment = tf.gather(sorted_segment, tf.math.invert_permutation(order))
    rows = tf.gather(variable.sparse_read(distinct), segment)
    return tf.reshape(rows, tf.concat([tf.shape(ids), tf.shape(rows)[1:]], axis=0))


def split_rows(rows, sizes):
    """`rows` split along axis 0 into parts of `sizes` (ints, or on TensorFlow scalar
    tensors of a batch size known only when run)."""
    if all(isinstance(size, int) for size in sizes):
        bounds = [sum(sizes[: i + 1]) for i in range(len(sizes) - 1)]
        return keras.ops.split(rows, bounds, axis=0)
    import tensorflow as tf

    return tf.split(rows, tf.stack(sizes), axis=0)


def weighted_bag_sum(table, ids, weights):
    """`sum over l of weights[..., l] * table[ids[..., l]]`: `(..., D)` for `ids (..., L)`
    known to be in range.

    torch's `embedding_bag` adds the rows up as it reads them, where a gather first
    writes all `(..., L, D)` rows. Under `jax.jit`, XLA fuses a sum of `L` gathers into
    one pass, where it writes the gathered rows before reducing them; the compile time
    grows with `L`, so it is written out up to `L = 64` (figures: docs/performance.md).
    """
    backend = keras.backend.backend()
    bag_size = ids.shape[-1] if ids.ndim > 0 else None
    if backend == "jax" and is_traced(ids) and bag_size and bag_size <= 64:
        weights = keras.ops.cast(weights, table.dtype)
        weighted = (take_rows(table, ids[..., i]) * weights[..., i, None] for i in range(bag_size))
        return functools.reduce(operator.add, weighted)
    if backend == "torch" and bag_size:
        import torch

        table = table.value if isinstance(table, keras.Variable) else table
        bags = ids.reshape(-1, ids.shape[-1])
        sums = torch.nn.functional.embedding_bag(
            bags, table, mode="sum", per_sample_weights=weights.reshape(bags.shape).to(table.dtype)
        )
        return sums.reshape((*ids.shape[:-1], table.shape[-1]))
    rows = take_rows(table, ids)
    return keras.ops.sum(rows * keras.ops.expand_dims(keras.ops.cast(weights, rows.dtype), -1), axis=-2)


def assign_here(variable, value):
    """`variable.assign(value)`; under a `tf.distribute` strategy, of this replica's copy
    (each replica computes the same value)."""
    if keras.backend.backend() == "tensorflow":
        return replica_local(variable.value).assign(value)
    return variable.assign(value)


def scatter_into(variable, rows, values):
    """`variable[rows] = values` in place: the rows alone are written (a whole copy on
    TensorFlow's `tensor_scatter_nd_update`, not here). Rows listed twice must get
    equal values, or be scratch. For a 2-D variable and 1-D values, `rows` number its
    elements, row-major."""
    _write_rows(variable, rows, values, add=False)


def add_into(variable, rows, values):
    """`variable[rows] += values` in place, a row listed twice getting both."""
    _write_rows(variable, rows, values, add=True)


def _write_rows(variable, rows, values, add):
    backend = keras.backend.backend()
    values = cast(values, variable.dtype)
    elements = len(variable.shape) == 2 and len(values.shape) == 1
    if backend == "tensorflow":
        import tensorflow as tf

        local = replica_local(variable.value)
        if elements:
            width = variable.shape[1]
            index = tf.stack([rows // width, rows % width], axis=-1)
            return local.scatter_nd_add(index, values) if add else local.scatter_nd_update(index, values)
        slices = tf.IndexedSlices(values, rows)
        return local.scatter_add(slices) if add else local.scatter_update(slices)
    if backend == "torch":
        import torch

        with torch.no_grad():
            target, index = variable.value, rows.long()
            target = target.view(-1) if elements else target
            if add:
                return target.index_add_(0, index, values)
            if eager_on_torch_cpu(target) and target.is_contiguous():
                return _copy_rows_on_host(target, index, values)
            wide = _widest_view(target)
            if wide is not None:
                return wide.index_copy_(0, index, values.contiguous().view(wide.dtype))
            return target.index_copy_(0, index, values)
    value = variable.value.reshape(-1) if elements else variable.value
    value = value.at[rows].add(values) if add else value.at[rows].set(values)
    variable.assign(value.reshape(variable.shape))


def _copy_rows_on_host(target, index, values):
    """`target[index] = values` of a contiguous CPU torch tensor, by numpy on its memory,
    each row one item of its bytes: numpy copies an item whole, where torch's
    `index_copy_` copies element by element."""
    import torch

    def items(tensor):  # as bytes: numpy has no bfloat16
        data = tensor.detach().contiguous().view(torch.uint8).numpy().reshape(tensor.shape[0], -1)
        return data.view(np.dtype((np.void, data.shape[1]))).reshape(-1)

    if index.shape[0]:
        items(target)[index.numpy()] = items(values)
        torch.autograd.graph.increment_version(target)  # as an in-place op of torch's would
    return target


def _widest_view(rows):
    """A contiguous 2-D torch tensor seen with the widest elements its rows hold whole:
    torch copies rows into it element by element, so fewer, wider elements copy faster."""
    import torch

    if rows.ndim != 2 or not rows.is_contiguous() or rows.dtype.is_complex:
        return None
    row_bytes = rows.shape[1] * rows.element_size()
    for dtype in (torch.complex128, torch.float64, torch.float32):
        if row_bytes % dtype.itemsize == 0 and rows.data_ptr() % dtype.itemsize == 0:
            return rows.view(dtype) if dtype.itemsize > rows.element_size() else None
    return None


def sum_slices_per_id(indices, values):
    """`(ids, sums)` of TensorFlow slices: the distinct `indices`, in the order they first
    come, and each one's `values` summed. The sum runs compiled by XLA, into a row per
    slice and then cut to the ids: TensorFlow's own `UnsortedSegmentSum` costs several
    times XLA's, and a sum into one row per id would be compiled for every count."""
    import tensorflow as tf

    ids, position = tf.unique(indices)
    return ids, _SUM_BY_POSITION((), (), values, position)[: tf.size(ids)]


def _sum_by_position(values, position):
    import tensorflow as tf

    return tf.math.unsorted_segment_sum(values, position, tf.shape(values)[0])


_SUM_BY_POSITION = Fused(_sum_by_position)

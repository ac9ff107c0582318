"""Each backend's lookup and write-back of a variable trained row-wise (`row_training`).

TensorFlow and torch: the lookup's gradient is the backend's own sparse value (an
`IndexedSlices`, a sparse tensor), divided by the loss scale on the way; the
variable's `assign` receives it from keras' optimizer, and the rows it reaches are
found and written back here. JAX: the lookup's backward pass computes the update and
returns the table (and its state) with the new rows scattered in.

Every training lookup also returns the loss-scale probe: a zero scalar that the layer
adds to its losses, so its gradient is the factor keras multiplied the loss by.
"""

import functools

import keras

from keras_embed_ext.backends.context import eager_on_torch_cpu
from keras_embed_ext.backends.keys import positions_of
from keras_embed_ext.backends.rows import replica_local
from keras_embed_ext.backends.rows import sum_slices_per_id
from keras_embed_ext.backends.rows import take_rows
from keras_embed_ext.ids import zero_invalid


def lookup_with_sparse_gradient(variable, ids, valid=None):
    """`(variable[ids], probe)` on TensorFlow and torch, the rows of invalid ids (where
    `valid` does not hold) zeroed: the rows' gradient reaches the variable as the
    backend's sparse value, divided by the probe's gradient."""
    if keras.backend.backend() == "torch":
        import torch

        if valid is not None and eager_on_torch_cpu(ids):
            rows = _torch_rows_of_valid_ids().apply(variable.value, ids, valid)
            return _torch_loss_scale_probe().apply(rows)
        rows, probe = _torch_loss_scale_probe().apply(torch.nn.functional.embedding(ids, variable.value, sparse=True))
        return zero_invalid(rows, valid), probe
    # TensorFlow: `IndexedSlices` of a slice per occurrence, which `assign` sums per row.
    rows, probe = _tensorflow_loss_scale_probe(replica_local(variable.value).sparse_read(ids))
    return zero_invalid(rows, valid), probe


@functools.cache
def _torch_rows_of_valid_ids():
    import torch

    class TorchRowsOfValidIds(torch.autograd.Function):
        """`weight[ids]` with the rows of invalid ids zeroed in place, and a sparse
        gradient of the valid ids' entries only: zeroing a copy of the rows, and of
        their gradient, would cost two new buffers the size of the rows."""

        @staticmethod
        def forward(ctx, weight, ids, valid):
            rows = torch.nn.functional.embedding(ids, weight)
            flat_valid = valid.reshape(-1)
            rows.view(-1, rows.shape[-1]).index_fill_(0, positions_of(flat_valid, False), 0)
            kept = positions_of(flat_valid)
            ctx.save_for_backward(ids.reshape(-1).index_select(0, kept), kept)
            ctx.weight_shape = weight.shape
            return rows

        @staticmethod
        def backward(ctx, grads):
            kept_ids, kept = ctx.saved_tensors
            values = grads.reshape(-1, grads.shape[-1]).index_select(0, kept)
            # Valid ids are in range: the invariants hold without torch checking them.
            gradient = torch.sparse_coo_tensor(kept_ids.unsqueeze(0), values, ctx.weight_shape, check_invariants=False)
            return gradient, None, None

    return TorchRowsOfValidIds


def _unscale(grads, loss_scale):
    """`grads` divided by the probe's gradient; by 1 where none arrived (a custom loop
    whose loss leaves out `model.losses`)."""
    return grads / keras.ops.where(loss_scale == 0, 1.0, loss_scale)


def _tensorflow_loss_scale_probe(rows):
    import tensorflow as tf

    @tf.custom_gradient
    def probe(rows):
        def gradient(row_grads, loss_scale):
            if loss_scale is None:
                return row_grads
            return _unscale(row_grads, tf.cast(loss_scale, row_grads.dtype))

        return (tf.identity(rows), tf.zeros([], "float32")), gradient

    return probe(rows)


@functools.cache
def _torch_loss_scale_probe():
    import torch

    class TorchLossScaleProbe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, rows):
            return rows.view_as(rows), rows.new_zeros((), dtype=torch.float32)

        @staticmethod
        def backward(ctx, row_grads, loss_scale):
            scale = loss_scale.to(row_grads.dtype)
            if scale.device.type == "cpu" and not torch.compiler.is_compiling() and scale.item() in (0, 1):
                return row_grads  # unscaled: a division would cost a pass over every row
            return row_grads / torch.where(scale == 0, torch.ones_like(scale), scale)

    return TorchLossScaleProbe


def replicas_in_sync():
    """How many replicas keras divides an added loss among (`tf.distribute`), else 1."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def first_positions_jax(positions, ids):
    """`(first, positions)`: for each of the flat `ids`, the position of the id's first
    occurrence among them, read from `positions` (a row's entry, reset and then
    written by a scatter-min, only for the rows looked up) after the update."""
    import jax.numpy as jnp

    flat_ids = ids.reshape(-1)
    order = jnp.arange(flat_ids.shape[0], dtype=positions.dtype)
    positions = positions.at[flat_ids].set(flat_ids.shape[0]).at[flat_ids].min(order)
    return positions[flat_ids], positions


def lookup_jax(table, slots, step, ids, first, update, renewal=None):
    """`(table[ids], probe)`, whose backward pass returns the table, slots and step
    count after the update: the gradients of an id's occurrences, divided by the loss
    scale, are summed at its first occurrence (`first`, from `first_positions_jax`), and
    each distinct row is updated there (the other positions name row `input_dim`, which
    the scatter drops). A step in which no row gets a gradient is not counted.

    `renewal`, for a dynamic table: `(renewed_at, admitted_at, draw, slot_values)`.
    A row given to its key after its last renewal (`admitted_at > renewed_at`) reads
    a new row (`draw(count)`, `_fresh_rows_jax`) and the optimizer's initial state,
    and is written so, with its renewal step, whatever its gradient."""
    import jax
    import jax.numpy as jnp

    input_dim = table.shape[0]

    def renewed(table, flat, stale, drawn, at):
        """The rows the flat ids read: a row that starts afresh reads its new row,
        `drawn[at]` (one pass with the table's gather, which XLA fuses)."""
        looked_up = take_rows(table, flat)
        if stale is None:
            return looked_up
        return jnp.where(stale[:, None], take_rows(drawn, at).astype(table.dtype), looked_up)

    @jax.custom_vjp
    def lookup(table, slots, step, renewed_at, flat, first, stamps, stale, drawn, at):
        rows = renewed(table, flat, stale, drawn, at)
        return rows.reshape(*ids.shape, -1), jnp.zeros((), "float32")

    def forward(table, slots, step, renewed_at, flat, first, stamps, stale, drawn, at):
        looked_up = renewed(table, flat, stale, drawn, at)
        outputs = (looked_up.reshape(*ids.shape, -1), jnp.zeros((), "float32"))
        return outputs, (table, slots, step, renewed_at, flat, first, stamps, stale, looked_up)

    def backward(saved, cotangents):
        # The update reads the rows the forward pass gathered (at each id's first
        # position, its row), not the table again.
        table, slots, step, renewed_at, flat, first, stamps, stale, looked_up = saved
        row_grads, loss_scale = cotangents
        count = flat.shape[0]
        rows = jnp.where(first == jnp.arange(count, dtype=first.dtype), flat, input_dim)
        row_grads = _unscale(row_grads.reshape(-1, row_grads.shape[-1]).astype("float32"), loss_scale)
        grads = jax.ops.segment_sum(row_grads, first, num_segments=count)
        step = step + jnp.any(grads).astype(step.dtype)
        old_slots = [take_rows(s, rows) for s in slots]
        if stale is not None:
            old_slots = [jnp.where(stale.reshape((-1,) + (1,) * (s.ndim - 1)), value, s)
                         for s, value in zip(old_slots, renewal[3])]
            renewed_at = renewed_at.at[rows].set(stamps, mode="drop")
        new_rows, new_slots = update(looked_up, grads, old_slots, step=step)
        new_slots = [s.at[rows].set(new, mode="drop") for s, new in zip(slots, new_slots)]
        table = table.at[rows].set(new_rows.astype(table.dtype), mode="drop")
        return table, new_slots, step, renewed_at, None, None, None, None, None, None

    lookup.defvjp(forward, backward)
    flat = ids.reshape(-1)
    renewed_at = stamps = stale = drawn = at = None
    if renewal is not None:
        renewed_at, admitted_at, draw = renewal[0].value, renewal[1], renewal[2]
        last_renewed = take_rows(renewed_at, flat)
        stale = admitted_at > last_renewed
        # The renewal steps as they will be written, computed from the ones read: the
        # write then depends on the read, which XLA otherwise orders by copying the
        # whole array (twice, on its CPU).
        stamps = jnp.maximum(admitted_at, last_renewed)
        drawn, at = _fresh_rows_jax(stale, first, draw, table.shape[1])
    return lookup(table.value, [s.value for s in slots], step.value, renewed_at, flat, first, stamps, stale, drawn, at)


def _fresh_rows_jax(stale, first, draw, dim):
    """`(drawn, at)`: `drawn[at[i]]` is the new row of position `i` if its row is `stale`
    (`first`: each position's first occurrence, whose draw its repeats read). One draw
    per distinct renewed row, in the fewest of n / 64, n / 8 or n rows that hold them
    (none in a step renewing no row), padded to n rows: once a table holds its frequent
    keys a step renews few rows, and a draw of the initializer costs more per row than
    the lookup."""
    import jax
    import jax.numpy as jnp

    n = first.shape[0]
    if n == 0:
        return jnp.zeros((0, dim), "float32"), first
    takes = stale & (first == jnp.arange(n, dtype=first.dtype))
    rank = jnp.cumsum(takes.astype("int32")) - 1
    count, at = rank[-1] + 1, jnp.maximum(rank[first], 0)
    sizes = sorted({-(-n // 64), -(-n // 8), n})

    def drawn(size):
        # Read where the rows are looked up, not gathered here: a branch's result is a
        # buffer of its own, and a gather into it a pass over every position.
        return lambda: jnp.pad(draw(size), ((0, n - size), (0, 0)))

    index = jnp.where(count == 0, 0, 1 + sum((count > size).astype("int32") for size in sizes[:-1]))
    return jax.lax.switch(index, [lambda: jnp.zeros((n, dim), "float32"), *map(drawn, sizes)]), at


def is_sparse(value) -> bool:
    """A TensorFlow `IndexedSlices` or a torch sparse tensor: a gradient of looked-up rows."""
    if keras.backend.backend() == "torch":
        return getattr(value, "is_sparse", False)
    return type(value).__name__ == "IndexedSlices"


def _by_row_tensorflow(slices):
    """`(rows, grads)`: the distinct rows of `IndexedSlices`, each with its slices summed."""
    return sum_slices_per_id(slices.indices, slices.values)


def _by_row_torch(gradient):
    """`(rows, grads)` of a sparse torch gradient: its distinct rows in increasing
    order, each with its entries summed in the order they came. A stable sort groups
    each row's entries; `embedding_bag` then sums each group in one pass, where
    `index_add_` scatters element by element."""
    import torch

    ids, values = gradient._indices()[0], gradient._values()
    if gradient.is_coalesced():
        return ids, values
    with torch.no_grad():
        # int32 sorts in about half the time of int64; a table's rows fit it.
        narrow = ids.int() if gradient.shape[0] <= 2**31 else ids
        sorted_ids, order = torch.sort(narrow, stable=True)
        rows, counts = torch.unique_consecutive(sorted_ids, return_counts=True)
        offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
        if values.dtype in (torch.float16, torch.bfloat16):
            values = values.float()
        summed = torch.nn.functional.embedding_bag(order, values, offsets, mode="sum", include_last_offset=True)
    return rows.long(), summed


def apply_across_replicas(apply, variable, gradient):
    """`apply(gradient)` on TensorFlow; under a `tf.distribute` strategy the replicas'
    gradients are summed first (keras scales each replica's loss to make their sum the
    global batch's gradient), and every replica's copy of the variables gets the update
    of that sum."""
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        apply(gradient)
        return gradient
    # Every replica's slices, one after another (`apply` sums a row's); then one call
    # per device, on its copies of the variables.
    every = tf.IndexedSlices(context.all_gather(gradient.values, axis=0),
                             context.all_gather(gradient.indices, axis=0), gradient.dense_shape)

    def update(strategy, every):
        strategy.extended.update(variable.value, lambda _, g: apply(g), args=(every,), group=False)

    context.merge_call(update, args=(every,))
    return gradient


def add_to_step(step, count):
    """`step + count`, assigned to the step variable (on TensorFlow, this device's copy)."""
    if keras.backend.backend() == "tensorflow":
        local = replica_local(step.value)
        local.assign_add(count)
        return keras.ops.convert_to_tensor(local.read_value())
    step.assign(step + count)
    return keras.ops.convert_to_tensor(step.value)


BY_ROW = {"tensorflow": _by_row_tensorflow, "torch": _by_row_torch}

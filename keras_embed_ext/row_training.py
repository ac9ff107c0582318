"""A table trained by its own row-wise optimizer, inside keras' own `fit`.

The trained variable (the table, or LoRA's `lora_embeddings_a`) has
`overwrite_with_gradient`, keras' mechanism for variables whose new value is computed
from their gradient (float8 scales in `Dense`): keras' optimizer hands the
variable's gradient to its `assign` and trains every other variable as usual.

On TensorFlow and torch the gradient is the backend's own sparse value, an
`IndexedSlices` or a sparse tensor of the looked-up rows; the variable's `assign`
sums it per row and applies the row-wise optimizer to those rows and their state, so
that gradients summed by autograd or across replicas make one update. On JAX, whose
gradients are dense arrays, the lookup's backward pass computes the update itself
and its "gradient" is the table with the new rows scattered in, which XLA writes in
place into the buffer keras' train step donates; the optimizer's state rides along
the same way, so there it is trainable too.

The state is the layer's (saved with it) but not among its `weights`: keras counts
those as the model's parameters, as it does not count its own optimizer's state.
"""

import functools
import weakref

import keras
from keras import initializers
from keras import ops

from keras_embed_ext.backends import replica_local
from keras_embed_ext.backends import take_rows


def _state_travels_as_gradient() -> bool:
    """Whether the optimizer state is updated through the gradient (JAX)."""
    return keras.backend.backend() == "jax"


class RowTraining:
    """The row-wise optimizer of one row variable: its slots, its step count, and the
    lookup through which the variable gets its update."""

    def __init__(self, add_weight, variable, optimizer):
        """Creates the optimizer's state through `add_weight` (the table's, which lays it out
        as the rows it belongs to)."""
        self.variable = variable
        self.optimizer = optimizer
        name = variable.path.split("/")[-1]
        as_gradient = _state_travels_as_gradient()
        self.slots = [
            add_weight(
                name=f"{name}_{slot}",
                shape=variable.shape[:1] if per_row else variable.shape,
                initializer=initializers.Constant(optimizer.slot_initial_value(slot)),
                dtype="float32",
                trainable=as_gradient,
                autocast=False,
            )
            for slot, per_row in optimizer.slots
        ]
        self.step = add_weight(
            name=f"{name}_step", shape=(), initializer="zeros", dtype="int32", trainable=False, autocast=False
        )
        # JAX and torch: for each row, where in the step's ids it was first looked up
        # (scratch, not saved): finding the distinct ids costs two scatters and a
        # gather, not a sort.
        self.first_positions = add_weight(
            name=f"{name}_first_positions", shape=variable.shape[:1], initializer="zeros", dtype="int32",
            trainable=False, autocast=False,
        ) if keras.backend.backend() in ("jax", "torch") else None
        self._differentiated_in = None
        variable.overwrite_with_gradient = True
        if as_gradient:
            for slot in self.slots:
                slot.overwrite_with_gradient = True
        else:
            variable.assign = self.assign

    def variables(self):
        """The optimizer's state, in the order it is saved."""
        return [*self.slots, self.step]

    def scratch_variables(self):
        """What a step works in, neither saved nor a parameter."""
        return [] if self.first_positions is None else [self.first_positions]

    def release(self, untrack):
        """Stops training the variable row-wise (it is frozen or gone) and drops the
        state, each variable through `untrack` (the owning layer's)."""
        self.variable.overwrite_with_gradient = False
        vars(self.variable).pop("assign", None)
        for state in self.variables() + self.scratch_variables():
            untrack(state)

    def lookup(self, ids):
        """The rows of `ids` (validated) in a training step, through which the variable
        gets its update. Rows whose gradient is zero in the step (invalid ids, whose
        rows the caller zeroes, padding, dropped rows) keep their values and state."""
        if not _state_travels_as_gradient():
            # TensorFlow's gather sums a repeated id's slices (`backends.take_rows`).
            return sparse_gradient_lookup(self.variable, ids)
        self._check_once_per_step()
        self.step.assign(self.step + 1)
        update = functools.partial(self._update, step=ops.convert_to_tensor(self.step.value))
        first, positions = _first_positions_jax(self.first_positions.value, ids)
        self.first_positions.assign(positions)
        return _lookup_jax(self.variable, self.slots, ids, first, update)

    def assign(self, value):
        """`variable.assign` on TensorFlow and torch. keras' optimizer assigns the
        variable's gradient, a sparse value: the optimizer's update of the rows it
        reaches is written into the variable and its state. Dense values (weights
        set or loaded) are assigned as they are."""
        if not _is_sparse(value):
            return type(self.variable).assign(self.variable, value)
        if keras.backend.backend() == "tensorflow":
            return _apply_across_replicas(self._apply, value)
        self._apply(value)
        return value

    def _apply(self, gradient):
        """The update of the rows `gradient` reaches, and of their state."""
        backend = keras.backend.backend()
        rows, grads = _BY_ROW[backend](gradient, self.first_positions)
        step = _increment(self.step)
        values = [self.variable, *self.slots]
        old = [take_rows(v, rows) for v in values]
        new_rows, new_slots = self._update(old[0], grads, old[1:], step=step)
        for variable, new in zip(values, (new_rows, *new_slots)):
            _SCATTER[backend](variable, rows, new)

    def _update(self, rows, grads, slots, step):
        """The optimizer's new `(rows, slots)`; a row whose gradient is zero keeps its values."""
        grads = ops.cast(grads, "float32")
        new_rows, new_slots = self.optimizer.update(ops.cast(rows, "float32"), grads, slots, step=step)
        if self.optimizer.still_at_zero_gradient():
            return ops.cast(new_rows, rows.dtype), new_slots
        touched = ops.any(ops.not_equal(grads, 0), axis=-1)
        kept = [
            ops.where(ops.reshape(touched, (-1,) + (1,) * (len(old.shape) - 1)), ops.cast(new, old.dtype), old)
            for old, new in zip((rows, *slots), (new_rows, *new_slots))
        ]
        return kept[0], kept[1:]

    def _check_once_per_step(self):
        """On JAX the updates of two lookups in one step would be summed: a clear error.
        Both lookups see the table as a tracer of the same differentiation."""
        from jax.interpreters import partial_eval

        value = self.variable.value
        trace = getattr(value, "_trace", None)
        if trace is None or isinstance(value, partial_eval.DynamicJaxprTracer):
            return
        if self._differentiated_in is not None and self._differentiated_in() is trace:
            raise ValueError(_called_twice(self.variable))
        self._differentiated_in = weakref.ref(trace)


def _first_positions_jax(positions, ids):
    """`(first, positions)`: for each of the flat `ids`, the position of the id's first
    occurrence among them, read from `positions` (a row's entry, reset and then
    written by a scatter-min, only for the rows looked up) after the update."""
    import jax.numpy as jnp

    flat_ids = ids.reshape(-1)
    order = jnp.arange(flat_ids.shape[0], dtype=positions.dtype)
    positions = positions.at[flat_ids].set(flat_ids.shape[0]).at[flat_ids].min(order)
    return positions[flat_ids], positions


def _lookup_jax(table, slots, ids, first, update):
    """`table[ids]`, whose backward pass returns the table and slots with the looked-up
    rows updated: the gradients of an id's occurrences are summed at its first
    occurrence (`first`, from `_first_positions_jax`), and each distinct row is
    updated there (the other positions name row `input_dim`, which the scatter drops)."""
    import jax

    input_dim = table.shape[0]

    @jax.custom_vjp
    def lookup(table, slots, ids, first):
        return take_rows(table, ids)

    def forward(table, slots, ids, first):
        rows = take_rows(table, ids)
        return rows, (table, slots, ids, first, rows)

    def backward(saved, row_grads):
        # The update reads the rows the forward pass gathered (at each id's first
        # position, its row), not the table again.
        table, slots, ids, first, looked_up = saved
        flat_ids = ids.reshape(-1)
        count = flat_ids.shape[0]
        rows = jax.numpy.where(first == jax.numpy.arange(count, dtype=first.dtype), flat_ids, input_dim)
        row_grads = row_grads.reshape(-1, row_grads.shape[-1]).astype("float32")
        grads = jax.ops.segment_sum(row_grads, first, num_segments=count)
        old_rows = looked_up.reshape(-1, looked_up.shape[-1])
        new_rows, new_slots = update(old_rows, grads, [take_rows(s, rows) for s in slots])
        new_slots = [s.at[rows].set(new, mode="drop") for s, new in zip(slots, new_slots)]
        return table.at[rows].set(new_rows.astype(table.dtype), mode="drop"), new_slots, None, None

    lookup.defvjp(forward, backward)
    return lookup(table.value, [s.value for s in slots], ids, first)


def _is_sparse(value) -> bool:
    """A TensorFlow `IndexedSlices` or a torch sparse tensor: a gradient of looked-up rows."""
    if keras.backend.backend() == "torch":
        return getattr(value, "is_sparse", False)
    return type(value).__name__ == "IndexedSlices"


def _by_row_tensorflow(slices, first_positions=None):
    """`(rows, grads)`: the distinct rows of `IndexedSlices`, each with its slices summed."""
    import tensorflow as tf

    rows, position = tf.unique(slices.indices)
    return rows, tf.math.unsorted_segment_sum(slices.values, position, tf.size(rows))


def _by_row_torch(gradient, first_positions):
    """`(rows, grads)` of a sparse torch gradient: its distinct rows, each with its
    entries summed (found with `first_positions`, as on JAX, without a sort)."""
    import torch

    ids, values = gradient._indices()[0], gradient._values()
    if gradient.is_coalesced():
        return ids, values
    with torch.no_grad():
        positions = first_positions.value
        order = torch.arange(ids.shape[0], device=ids.device, dtype=positions.dtype)
        positions.index_fill_(0, ids, ids.shape[0])
        positions.scatter_reduce_(0, ids, order, reduce="amin")
        first = positions[ids]
        is_first = first == order
        summed = torch.zeros_like(values).index_add_(0, first.long(), values)
    return ids[is_first], summed[is_first]


def _apply_across_replicas(apply, gradient):
    """`apply(gradient)` on TensorFlow; under a `tf.distribute` strategy the replicas'
    gradients are summed first (keras scales each replica's loss to make their sum the
    global batch's gradient), and every replica's copy of the variables gets the update
    of that sum."""
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        apply(gradient)
        return gradient
    variable = apply.__self__.variable.value
    # Every replica's slices, one after another (`apply` sums a row's); then one call
    # per device, on its copies of the variables.
    every = tf.IndexedSlices(context.all_gather(gradient.values, axis=0),
                             context.all_gather(gradient.indices, axis=0), gradient.dense_shape)

    def update(strategy, every):
        strategy.extended.update(variable, lambda _, g: apply(g), args=(every,), group=False)

    context.merge_call(update, args=(every,))
    return gradient


def _increment(step):
    """`step + 1`, assigned to the step variable (on TensorFlow, this device's copy)."""
    if keras.backend.backend() == "tensorflow":
        local = replica_local(step.value)
        local.assign_add(1)
        return ops.convert_to_tensor(local.read_value())
    step.assign(step + 1)
    return ops.convert_to_tensor(step.value)


def _scatter_tensorflow(variable, rows, new):
    import tensorflow as tf

    replica_local(variable.value).scatter_update(tf.IndexedSlices(new, rows))


def _scatter_torch(variable, rows, new):
    import torch

    with torch.no_grad():
        variable.value.index_copy_(0, rows, new.to(variable.value.dtype))


def sparse_gradient_lookup(variable, ids):
    """`variable[ids]` whose gradient is the backend's sparse value (TensorFlow, torch)."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.nn.functional.embedding(ids, variable.value, sparse=True)
    # TensorFlow: `IndexedSlices` of a slice per occurrence, which `assign` sums per row.
    return replica_local(variable.value).sparse_read(ids)


_BY_ROW = {"tensorflow": _by_row_tensorflow, "torch": _by_row_torch}
_SCATTER = {"tensorflow": _scatter_tensorflow, "torch": _scatter_torch}


def _called_twice(variable):
    return (
        f"Variable '{variable.path}' got two row updates in one training step: a layer with "
        "sparse_optimizer was called more than once in the step, which JAX cannot sum. Share "
        "the table with one call on the concatenated ids, or use sparse_optimizer=None."
    )

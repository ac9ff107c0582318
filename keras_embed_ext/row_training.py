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

from keras_embed_ext.backends import take_rows


def _state_travels_as_gradient() -> bool:
    """Whether the optimizer state is updated through the gradient (JAX)."""
    return keras.backend.backend() == "jax"


class RowTraining:
    """The row-wise optimizer of one row variable: its slots, its step count, and the
    lookup through which the variable gets its update."""

    def __init__(self, add_weight, variable, optimizer):
        """Creates the optimizer's state through `add_weight` (the owning layer's)."""
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

    def release(self, untrack):
        """Stops training the variable row-wise (it is frozen or gone) and drops the
        state, each variable through `untrack` (the owning layer's)."""
        self.variable.overwrite_with_gradient = False
        vars(self.variable).pop("assign", None)
        for state in self.variables():
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
        return _lookup_jax(self.variable, self.slots, ids, update)

    def assign(self, value):
        """`variable.assign` on TensorFlow and torch. keras' optimizer assigns the
        variable's gradient, a sparse value: the optimizer's update of the rows it
        reaches is written into the variable and its state. Dense values (weights
        set or loaded) are assigned as they are."""
        backend = keras.backend.backend()
        if not _is_sparse(value):
            return type(self.variable).assign(self.variable, value)
        rows, grads = _BY_ROW[backend](value)
        self.step.assign(self.step + 1)
        values = [self.variable, *self.slots]
        old = [take_rows(v, rows) for v in values]
        new_rows, new_slots = self._update(old[0], grads, old[1:], step=ops.convert_to_tensor(self.step.value))
        for variable, new in zip(values, (new_rows, *new_slots)):
            _SCATTER[backend](variable, rows, new)
        return value

    def _update(self, rows, grads, slots, step):
        """The optimizer's new `(rows, slots)`; a row whose gradient is zero keeps its values."""
        grads = ops.cast(grads, "float32")
        new_rows, new_slots = self.optimizer.update(ops.cast(rows, "float32"), grads, slots, step=step)
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


def _lookup_jax(table, slots, ids, update):
    """`table[ids]`, whose backward pass returns the table and slots with the looked-up
    rows updated: distinct rows (padded with `input_dim`, which the scatter drops)
    with their occurrences' gradients summed."""
    import jax

    input_dim = table.shape[0]

    @jax.custom_vjp
    def lookup(table, slots, ids):
        return take_rows(table, ids)

    def forward(table, slots, ids):
        return take_rows(table, ids), (table, slots, ids)

    def backward(saved, row_grads):
        table, slots, ids = saved
        flat_ids = ids.reshape(-1)
        rows, inverse = jax.numpy.unique(flat_ids, return_inverse=True, size=flat_ids.shape[0], fill_value=input_dim)
        row_grads = row_grads.reshape(-1, row_grads.shape[-1]).astype("float32")
        grads = jax.ops.segment_sum(row_grads, inverse.reshape(-1), num_segments=flat_ids.shape[0])
        new_rows, new_slots = update(take_rows(table, rows), grads, [take_rows(s, rows) for s in slots])
        new_slots = [s.at[rows].set(new, mode="drop") for s, new in zip(slots, new_slots)]
        return table.at[rows].set(new_rows.astype(table.dtype), mode="drop"), new_slots, None

    lookup.defvjp(forward, backward)
    return lookup(table.value, [s.value for s in slots], ids)


def _is_sparse(value) -> bool:
    """A TensorFlow `IndexedSlices` or a torch sparse tensor: a gradient of looked-up rows."""
    if keras.backend.backend() == "torch":
        return getattr(value, "is_sparse", False)
    return type(value).__name__ == "IndexedSlices"


def _by_row_tensorflow(slices):
    """`(rows, grads)`: the distinct rows of `IndexedSlices`, each with its slices summed."""
    import tensorflow as tf

    rows, position = tf.unique(slices.indices)
    return rows, tf.math.unsorted_segment_sum(slices.values, position, tf.size(rows))


def _by_row_torch(gradient):
    """`(rows, grads)` of a sparse torch gradient, summed per row by `coalesce`."""
    gradient = gradient.coalesce()
    return gradient.indices()[0], gradient.values()


def _scatter_tensorflow(variable, rows, new):
    import tensorflow as tf

    variable.value.scatter_update(tf.IndexedSlices(new, rows))


def _scatter_torch(variable, rows, new):
    import torch

    with torch.no_grad():
        variable.value.index_copy_(0, rows, new.to(variable.value.dtype))


def sparse_gradient_lookup(variable, ids):
    """`variable[ids]` whose gradient is the backend's sparse value (TensorFlow, torch)."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.nn.functional.embedding(ids, variable.value, sparse=True)
    return take_rows(variable, ids)  # TensorFlow: IndexedSlices, a repeated id's slices summed


_BY_ROW = {"tensorflow": _by_row_tensorflow, "torch": _by_row_torch}
_SCATTER = {"tensorflow": _scatter_tensorflow, "torch": _scatter_torch}


def _called_twice(variable):
    return (
        f"Variable '{variable.path}' got two row updates in one training step: a layer with "
        "sparse_optimizer was called more than once in the step, which JAX cannot sum. Share "
        "the table with one call on the concatenated ids, or use sparse_optimizer=None."
    )

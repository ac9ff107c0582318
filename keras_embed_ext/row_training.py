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

from keras_embed_ext import keras_optimizer
from keras_embed_ext import row_backends
from keras_embed_ext.backends.arithmetic import any_nonzero
from keras_embed_ext.backends.arithmetic import cast
from keras_embed_ext.backends.context import is_traced
from keras_embed_ext.backends.devices import all_true_on_host
from keras_embed_ext.backends.rows import for_each_part
from keras_embed_ext.backends.rows import scatter_into
from keras_embed_ext.backends.rows import take_rows
from keras_embed_ext.ids import zero_invalid


def _state_travels_as_gradient() -> bool:
    """Whether the optimizer state is updated through the gradient (JAX)."""
    return keras.backend.backend() == "jax"


class RowTraining:
    """The row-wise optimizer of one row variable: its slots, its step count, and the
    lookup through which the variable gets its update.

    Args:
        add_weight: Creates the state (the table's, which lays it out as the rows it
            belongs to).
        add_loss: Adds the loss-scale probe of a training lookup (the layer's).
        variable: The variable trained row-wise.
        optimizer: Its `keras_embed_ext.optimizers.RowOptimizer`.
        new_rows: For a dynamic table, the `fresh_rows.FreshRows` a renewed row starts from.
    """

    def __init__(self, add_weight, add_loss, variable, optimizer, new_rows=None):
        self.variable = variable
        self.optimizer = optimizer
        self.new_rows = new_rows
        self._add_loss = add_loss
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
        # A float count (exact to 2**24 steps): on JAX it travels as a gradient with the
        # slots, so a step that keras skips or that does not reach the table is not counted.
        self.step = add_weight(
            name=f"{name}_step", shape=(), initializer="zeros", dtype="float32", trainable=as_gradient,
            autocast=False,
        )
        # JAX: for each row, where in the step's ids it was first looked up (scratch, not
        # saved): finding the distinct ids costs two scatters and a gather, not a sort.
        self.first_positions = add_weight(
            name=f"{name}_first_positions", shape=variable.shape[:1], initializer="zeros", dtype="int32",
            trainable=False, autocast=False,
        ) if as_gradient else None
        # JAX, dynamic table: the step at which each row was last renewed, which travels
        # as a gradient: a renewal in a step that keras skips is made at the next lookup.
        self.renewed_at = add_weight(
            name=f"{name}_renewed_at", shape=variable.shape[:1], initializer="zeros", dtype="float32",
            trainable=True, autocast=False,
        ) if as_gradient and new_rows is not None else None
        self._differentiated_in = None
        self._checked_optimizers = weakref.WeakSet()
        variable.overwrite_with_gradient = True
        if as_gradient:
            for state in [*self.slots, self.step, *([self.renewed_at] if self.renewed_at is not None else [])]:
                state.overwrite_with_gradient = True
        else:
            variable.assign = self.assign

    def variables(self):
        """The optimizer's state, in the order it is saved."""
        return [*self.slots, self.step]

    def scratch_variables(self):
        """What a step works in, neither saved nor a parameter."""
        return [v for v in (self.first_positions, self.renewed_at) if v is not None]

    def release(self, untrack):
        """Stops training the variable row-wise (it is frozen or gone) and drops the
        state, each variable through `untrack` (the owning layer's)."""
        self.variable.overwrite_with_gradient = False
        vars(self.variable).pop("assign", None)
        for state in self.variables() + self.scratch_variables():
            untrack(state)

    def lookup(self, ids, admitted_at=None, valid=None):
        """The rows of `ids` (validated) in a training step, through which the variable
        gets its update; the rows of invalid ids (where `valid` does not hold) read zeros.
        Rows whose gradient is zero in the step (invalid ids, padding, dropped rows)
        keep their values and state.
        On JAX, for a dynamic table whose rows this lookup renews (`renews_in_lookup`),
        `admitted_at` (the step each row was given to its key) renews the rows given
        since their last renewal."""
        self._check_model_optimizer()
        if not _state_travels_as_gradient():
            # A repeated id's slices of the sparse gradient are summed in `assign`.
            rows, probe = row_backends.lookup_with_sparse_gradient(self.variable, ids, valid)
        else:
            self._check_once_per_step()
            first, positions = row_backends.first_positions_jax(self.first_positions.value, ids)
            self.first_positions.assign(positions)
            renewal = None
            if admitted_at is not None:
                slot_values = [self.optimizer.slot_initial_value(slot) for slot, _ in self.optimizer.slots]
                # The seed is drawn here, the rows only in a step that renews one.
                seed = self.new_rows.seed_generator.next()
                draw = functools.partial(self.new_rows, seed=seed)
                renewal = (self.renewed_at, admitted_at, draw, slot_values)
            rows, probe = row_backends.lookup_jax(self.variable, self.slots, self.step, ids, first, self._update,
                                                  renewal)
            rows = zero_invalid(rows, valid)
        # keras divides an added loss among `tf.distribute` replicas; the probe must read
        # the scale itself.
        self._add_loss(probe * row_backends.replicas_in_sync())
        return rows

    def renews_in_lookup(self) -> bool:
        """Whether the training lookup renews the rows given to new keys: on JAX in a step
        that differentiates the table, jitted or not (a write before the lookup would
        cut the rows it renews from the gradient that carries the table's update)."""
        return self.renewed_at is not None and is_traced(self.variable.value)

    def renew(self, rows, step=None):
        """`rows` (distinct) start afresh, drawn anew by the table's initializer, with the
        optimizer's initial state: on TensorFlow and torch, and on JAX outside a training
        step (`step`, the map's, is then their renewal step)."""
        count = ops.shape(rows)[0]
        if self.renewed_at is not None:
            scatter_into(self.renewed_at, rows, ops.full((count,), ops.cast(step, "float32")))
        scatter_into(self.variable, rows, self.new_rows(count))
        for slot, (name, per_row) in zip(self.slots, self.optimizer.slots):
            shape = (count,) if per_row else (count, *slot.shape[1:])
            scatter_into(slot, rows, ops.full(shape, self.optimizer.slot_initial_value(name)))

    def renewed_through(self, admitted):
        """JAX, after a map is loaded: rows given up to `admitted` (per row) count as
        renewed; their values were saved."""
        if self.renewed_at is not None:
            self.renewed_at.assign(ops.cast(admitted, "float32"))

    def assign(self, value):
        """`variable.assign` on TensorFlow and torch. keras' optimizer assigns the
        variable's gradient, a sparse value: the optimizer's update of the rows it
        reaches is written into the variable and its state. Dense values (weights
        set or loaded) are assigned as they are."""
        if not row_backends.is_sparse(value):
            return type(self.variable).assign(self.variable, value)
        if keras.backend.backend() == "tensorflow":
            return row_backends.apply_across_replicas(self._apply, self.variable, value)
        self._apply(value)
        return value

    def _apply(self, gradient):
        """The update of the rows `gradient` reaches, and of their state."""
        backend = keras.backend.backend()
        rows, grads = row_backends.BY_ROW[backend](gradient)
        grads = ops.cast(grads, "float32")
        step = row_backends.add_to_step(self.step, ops.cast(any_nonzero(grads), "float32"))
        values = [self.variable, *self.slots]

        def update(rows, grads):
            old = [take_rows(v, rows) for v in values]
            new_rows, new_slots = self._update(old[0], grads, old[1:], step=step)
            for variable, new in zip(values, (new_rows, *new_slots)):
                scatter_into(variable, rows, new)

        for_each_part(rows, grads, update, self.variable)

    def _update(self, rows, grads, slots, step):
        """The optimizer's new `(rows, slots)`; a row whose gradient is zero keeps its values."""
        grads = cast(grads, "float32")
        new_rows, new_slots = self.optimizer.update(cast(rows, "float32"), grads, slots, step=step)
        if self.optimizer.still_at_zero_gradient():
            return cast(new_rows, rows.dtype), new_slots
        touched = any_nonzero(grads, axis=-1)  # a NaN gradient counts: the row takes it
        pairs = list(zip((rows, *slots), (new_rows, *new_slots)))
        if all_true_on_host(touched):  # eager, as most steps are: no select
            kept = [cast(new, old.dtype) for old, new in pairs]
        else:
            kept = [ops.where(ops.reshape(touched, (-1,) + (1,) * (len(old.shape) - 1)), ops.cast(new, old.dtype), old)
                    for old, new in pairs]
        return kept[0], kept[1:]

    def _check_model_optimizer(self):
        """Once per model optimizer: refuses its settings that a row update cannot honour
        (`keras_optimizer`)."""
        optimizer = keras_optimizer.training_optimizer()
        if optimizer is None or optimizer in self._checked_optimizers:
            return
        keras_optimizer.check_model_optimizer(optimizer, self.variable, self.variable.path, self.optimizer)
        self._checked_optimizers.add(optimizer)

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


def _called_twice(variable):
    return (
        f"Variable '{variable.path}' got two row updates in one training step: a layer with "
        "sparse_optimizer was called more than once in the step, which JAX cannot sum. Share "
        "the table with one call on the concatenated ids, or use sparse_optimizer=None."
    )

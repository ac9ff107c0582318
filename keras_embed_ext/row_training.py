"""A table trained by its own row-wise optimizer, inside keras' own `fit`.

The table (or LoRA's `lora_embeddings_a`) and its optimizer slots are trainable
variables with `overwrite_with_gradient`, keras' mechanism for variables whose new
value is computed as their gradient (float8 scales in `Dense`). The lookup's
gradient is the step's update of the looked-up rows: keras' optimizer assigns it
and trains every other variable as usual.

What carries the update is the backend's own sparse value, so that a step costs what
the ids cost: on TensorFlow an `IndexedSlices` and on torch a sparse tensor of the new
rows, which the variable's assignment scatters; on JAX, whose gradients are dense
arrays, the table with the new rows scattered in, which XLA writes in place into the
buffer that keras' train step donates.
"""

import functools
import weakref

import keras
from keras import initializers
from keras import ops

from keras_embed_ext.backends import take_rows
from keras_embed_ext.tracking import unlocked


class RowTraining:
    """The row-wise optimizer of one row variable: its slots, its step count, and the
    lookup whose gradient is the update."""

    def __init__(self, layer, variable, optimizer):
        self.variable = variable
        self.optimizer = optimizer
        name = variable.path.split("/")[-1]
        self.slots = [
            layer.add_weight(
                name=f"{name}_{slot}",
                shape=variable.shape[:1] if per_row else variable.shape,
                initializer=initializers.Constant(optimizer.slot_initial_value(slot)),
                dtype="float32",
                trainable=True,
                autocast=False,
            )
            for slot, per_row in optimizer.slots
        ]
        self.step = layer.add_weight(
            name=f"{name}_step", shape=(), initializer="zeros", dtype="int32", trainable=False, autocast=False
        )
        self._differentiated_in = None
        self.backward_passes = 0  # torch: backward passes of the lookups since the last lookup
        for target in (variable, *self.slots):
            target.overwrite_with_gradient = True
            _accept_row_updates(target, self)

    def variables(self):
        """The optimizer's state, in the order it is saved."""
        return [*self.slots, self.step]

    def release(self, layer):
        """Stops training the variable row-wise (it is frozen or gone) and drops the state."""
        self.variable.overwrite_with_gradient = False
        vars(self.variable).pop("assign", None)
        for state in self.variables():
            layer._untrack_variable(state)

    def lookup(self, ids, valid=None):
        """The rows of in-range `ids` in a training step; their gradient is the update.

        Ids that `valid` marks invalid look up row 0 (zeroed by the caller) and
        update nothing.
        """
        self._check_once_per_step()
        self.backward_passes = 0
        self.step.assign(self.step + 1)
        input_dim = self.variable.shape[0]
        update_ids = ids if valid is None else ops.where(valid, ids, input_dim)
        update = functools.partial(self.optimizer.update, step=ops.convert_to_tensor(self.step.value))
        return _LOOKUPS[keras.backend.backend()](self, ids, update_ids, update)

    def _check_once_per_step(self):
        """On JAX the updates of two lookups in one step would be summed: a clear error.
        Both lookups see the table as a tracer of the same differentiation."""
        if keras.backend.backend() != "jax":
            return  # TensorFlow and torch check the update as it is assigned
        from jax.interpreters import partial_eval

        value = self.variable.value
        trace = getattr(value, "_trace", None)
        if trace is None or isinstance(value, partial_eval.DynamicJaxprTracer):
            return
        if self._differentiated_in is not None and self._differentiated_in() is trace:
            raise ValueError(_called_twice(self.variable))
        self._differentiated_in = weakref.ref(trace)


def _distinct_update(update, table, slots, row_grads, update_ids):
    """`(rows, new_rows, new_slot_rows)`: the distinct looked-up rows, with the
    gradients of their occurrences summed, updated by `update` (JAX, torch)."""
    row_grads = ops.reshape(ops.cast(row_grads, "float32"), (-1, row_grads.shape[-1]))
    rows, grads = _UNIQUE[keras.backend.backend()](ops.reshape(update_ids, (-1,)), row_grads, table.shape[0])
    new_rows, new_slots = update(ops.cast(take_rows(table, rows), "float32"), grads, [take_rows(s, rows) for s in slots])
    return rows, new_rows, new_slots


def attach(layer):
    """Puts `layer.sparse_optimizer` on the variable it trains now: the float table, or
    LoRA's `lora_embeddings_a`; none for a quantized table without LoRA. A variable
    that takes over starts with a fresh state."""
    if layer.sparse_optimizer is None:
        return
    if layer.lora_enabled:
        target = layer.lora_embeddings_a
    else:
        target = layer._embeddings if layer._format.mode is None else None
    current = layer._row_training
    if current is not None and current.variable is target:
        return
    if current is not None:
        current.release(layer)
    with unlocked(layer):
        layer._row_training = None if target is None else RowTraining(layer, target, layer.sparse_optimizer)


def _sum_unique_jax(ids, grads, input_dim):
    """Distinct ids (padded with `input_dim`, which updates drop) and summed grads."""
    import jax

    rows, inverse = jax.numpy.unique(ids, return_inverse=True, size=ids.shape[0], fill_value=input_dim)
    return rows, jax.ops.segment_sum(grads, inverse.reshape(-1), num_segments=ids.shape[0])


def _sum_unique_torch(ids, grads, input_dim):
    import torch

    counted = ids < input_dim
    rows, inverse = torch.unique(ids[counted], return_inverse=True)
    summed = grads.new_zeros((rows.shape[0], grads.shape[-1]))
    return rows, summed.index_add_(0, inverse, grads[counted])


def _lookup_jax(training, ids, update_ids, update):
    import jax

    table, slots = training.variable, training.slots

    @jax.custom_vjp
    def lookup(table, slots, ids, update_ids):
        return take_rows(table, ids)

    def forward(table, slots, ids, update_ids):
        return take_rows(table, ids), (table, slots, update_ids)

    def backward(saved, row_grads):
        table, slots, update_ids = saved
        rows, new_rows, new_slots = _distinct_update(update, table, slots, row_grads, update_ids)
        new_slots = [s.at[rows].set(new, mode="drop") for s, new in zip(slots, new_slots)]
        return table.at[rows].set(new_rows.astype(table.dtype), mode="drop"), new_slots, None, None

    lookup.defvjp(forward, backward)
    return lookup(table.value, [s.value for s in slots], ids, update_ids)


def _lookup_tensorflow(training, ids, update_ids, update):
    """Each distinct id's row (and slot rows) read once, then copied out to its
    occurrences: the gradient of those reads, the new rows, reaches the variables as
    `IndexedSlices`. (A custom gradient that captured the variables would read each of
    them whole.)"""
    import tensorflow as tf

    input_dim = training.variable.shape[0]
    distinct, position = tf.unique(tf.reshape(ids, [-1]))
    count = tf.size(distinct)
    counted = tf.math.unsorted_segment_max(
        tf.cast(tf.reshape(update_ids, [-1]) < input_dim, "int32"), position, count
    )
    reads = [v.value.sparse_read(distinct) for v in (training.variable, *training.slots)]

    @tf.custom_gradient
    def spread(table_rows, *slot_rows):
        def gradient(row_grads):
            grads = tf.math.unsorted_segment_sum(
                tf.reshape(tf.cast(row_grads, "float32"), [-1, row_grads.shape[-1]]), position, count
            )
            new_rows, new_slots = update(tf.cast(table_rows, "float32"), grads, list(slot_rows))
            # A row that only invalid ids reached keeps its values and state.
            return [
                tf.where(tf.reshape(counted > 0, [-1] + [1] * (len(old.shape) - 1)), tf.cast(new, old.dtype), old)
                for old, new in zip((table_rows, *slot_rows), (new_rows, *new_slots))
            ]

        return tf.gather(table_rows, position), gradient

    rows = spread(*reads)
    return tf.reshape(rows, tf.concat([tf.shape(ids), tf.shape(rows)[1:]], axis=0))


def _lookup_torch(training, ids, update_ids, update):
    values = (training.variable.value, *(s.value for s in training.slots))
    return _TorchLookup.apply(ids, update_ids, update, training, *values)


def _torch_lookup_class():
    import torch

    class TorchLookup(torch.autograd.Function):
        @staticmethod
        def forward(ctx, ids, update_ids, update, training, table, *slots):
            ctx.update, ctx.update_ids, ctx.training, ctx.table, ctx.slots = update, update_ids, training, table, slots
            return torch.nn.functional.embedding(ids, table)

        @staticmethod
        def backward(ctx, row_grads):
            ctx.training.backward_passes += 1
            with torch.no_grad():
                rows, new_rows, new_slots = _distinct_update(
                    ctx.update, ctx.table, list(ctx.slots), row_grads, ctx.update_ids
                )
            indices = rows.reshape(1, -1)
            sparse = [
                torch.sparse_coo_tensor(
                    indices, new.to(v.dtype), v.shape, is_coalesced=True, check_invariants=False
                )
                for v, new in zip((ctx.table, *ctx.slots), (new_rows, *new_slots))
            ]
            return None, None, None, None, *sparse

    return TorchLookup


class _LazyTorchLookup:
    """`TorchLookup.apply`, the class made on first use so that torch is imported only
    on the torch backend."""

    cls = None

    def apply(self, *args):
        if self.cls is None:
            self.cls = _torch_lookup_class()
        return self.cls.apply(*args)


_TorchLookup = _LazyTorchLookup()
_LOOKUPS = {"jax": _lookup_jax, "tensorflow": _lookup_tensorflow, "torch": _lookup_torch}
_UNIQUE = {"jax": _sum_unique_jax, "torch": _sum_unique_torch}


def _assign_rows(training, variable, value):
    """`variable.assign(value)`, where a sparse `value` of new rows is scattered in."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        if isinstance(value, tf.IndexedSlices):
            _check_distinct_tensorflow(value.indices, variable)
            variable.value.scatter_update(value)
            return value
    if backend == "torch" and getattr(value, "is_sparse", False):
        if training.backward_passes > 1:  # autograd summed the updates of several lookups
            raise ValueError(_called_twice(variable))
        variable.value.index_copy_(0, value._indices()[0], value._values())
        return value
    return type(variable).assign(variable, value)


def _check_distinct_tensorflow(indices, variable):
    import tensorflow as tf

    tf.debugging.assert_equal(
        tf.size(tf.unique(indices).y), tf.size(indices), message=_called_twice(variable)
    )


def _called_twice(variable):
    return (
        f"Variable '{variable.path}' got two row updates in one training step: a layer with "
        "sparse_optimizer was called more than once in the step. Share the table with one "
        "call on the concatenated ids, or use sparse_optimizer=None."
    )


def _accept_row_updates(variable, training):
    """Makes `variable.assign` take the backend's sparse new rows (TensorFlow, torch)."""
    if keras.backend.backend() in ("tensorflow", "torch"):
        variable.assign = functools.partial(_assign_rows, training, variable)

"""Where a row-trained table meets the model's keras optimizer.

A table trained by its own row-wise optimizer takes part in keras' training step at
two points, and only there:

- **The loss scale** is measured, not looked up: a training lookup adds a zero-valued
  probe to the layer's losses, whose gradient is the factor by which keras (a
  `loss_scale_factor`, a `LossScaleOptimizer`, a custom loop's `scale_loss`)
  multiplied the loss. The rows' gradients are divided by it before the row update.
- **The model's optimizer**, found when a keras `train_step` runs the lookup (keras
  hands a layer no reference to it), is checked once: a setting whose dense result a
  row update cannot give (accumulation, clipping, EMA, weight decay reaching the
  table) is a `ValueError` naming it and the table; a `LossScaleOptimizer` is taught
  to check a sparse gradient by its values, so that its skipped step on a non-finite
  gradient covers the table and costs what the rows cost.

A table trained by the model's own optimizer meets it once, on TensorFlow: the
optimizer is taught to sum a repeated id's slices of a gradient before applying it
(TensorFlow's tape concatenates the slices of two calls of one table, and keras'
Adagrad and Adam would square each slice instead of their sum).

`docs/design.md` lists every setting of keras' optimizer and trainer and how a
row-trained table takes part in it.
"""

import sys

import keras

from keras_embed_ext.backends.rows import sum_slices_per_id

# Settings of the model's optimizer that act on every gradient it is handed.
_REFUSED = (
    ("gradient_accumulation_steps", "accumulates gradients over steps, which a row update applied every step "
                                    "cannot follow"),
    ("clipnorm", "clips each gradient by its norm"),
    ("clipvalue", "clips gradient values"),
    ("global_clipnorm", "clips all gradients by their global norm"),
    ("use_ema", "keeps a moving average of every trained variable"),
)


def training_optimizer():
    """The optimizer of the keras model whose `train_step` is running on this thread,
    or None (an eager call, `predict`, a custom loop)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "train_step":
            model = frame.f_locals.get("self")
            if isinstance(model, keras.Model):
                return getattr(model, "optimizer", None)
        frame = frame.f_back
    return None


def check_model_optimizer(optimizer, variable, table, row_optimizer):
    """Refuses a setting of `optimizer` (and of the one a `LossScaleOptimizer` wraps)
    that would have to reach `variable`, which `row_optimizer` trains row-wise; teaches
    a `LossScaleOptimizer` to check sparse gradients by their values."""
    for current in _chain(optimizer):
        for name, what in _REFUSED:
            value = getattr(current, name, None)
            if value:
                raise ValueError(_refusal(current, name, value, what, table, row_optimizer))
        weight_decay = getattr(current, "weight_decay", None)
        if weight_decay and current._use_weight_decay(variable):
            raise ValueError(
                _refusal(current, "weight_decay", weight_decay, "decays every trained variable each step", table,
                         row_optimizer)
                + f" Or exclude the table: `optimizer.exclude_from_weight_decay(var_names=['{variable.name}'])`."
            )
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) and not hasattr(optimizer, _TAUGHT):
        optimizer.check_finite = _checking_sparse_values(optimizer.check_finite)
        setattr(optimizer, _TAUGHT, True)


def sum_repeated_slices(optimizer):
    """Teaches `optimizer` (TensorFlow) to apply each `IndexedSlices` gradient with one
    summed slice per id, as the dense gradient has it."""
    if optimizer is None or hasattr(optimizer, _SUMS):
        return
    apply = optimizer.apply

    def summing(grads, trainable_variables=None):
        return apply([_summed_per_id(g) for g in grads], trainable_variables)

    optimizer.apply = summing
    setattr(optimizer, _SUMS, True)


def _summed_per_id(gradient):
    if type(gradient).__name__ != "IndexedSlices":
        return gradient
    import tensorflow as tf

    ids, values = sum_slices_per_id(gradient.indices, gradient.values)
    return tf.IndexedSlices(values, ids, gradient.dense_shape)


def _chain(optimizer):
    while optimizer is not None:
        yield optimizer
        optimizer = getattr(optimizer, "inner_optimizer", None)


def _refusal(optimizer, name, value, what, table, row_optimizer):
    return (
        f"Table '{table}' is trained row-wise by its own {row_optimizer!r}, but the model's optimizer "
        f"{type(optimizer).__name__} sets `{name}={value!r}`, which {what}: a row update cannot give its "
        f"result. Remove `{name}` from the model's optimizer, or train the table with it (no sparse_optimizer)."
    )


_TAUGHT = "_keras_embed_ext_checks_sparse_values"
_SUMS = "_keras_embed_ext_sums_repeated_slices"


def _checking_sparse_values(check_finite):
    """`check_finite` that reads a sparse gradient's values (TensorFlow `IndexedSlices`,
    a torch sparse tensor) instead of its dense form: the same answer, at the rows' cost."""

    def check(grads):
        return check_finite([_values(g) for g in grads])

    return check


def _values(gradient):
    if type(gradient).__name__ == "IndexedSlices":
        return gradient.values
    if getattr(gradient, "is_sparse", False) is True:
        return gradient._values()
    return gradient

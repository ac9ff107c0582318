"""Row-wise table optimizers for `Embedding(sparse_optimizer=...)`.

Each optimizer updates only the rows a training step looked up, from the
gradient of each row summed over its occurrences in the step. Its state (the
slots) has one row per table row, and a step updates only the looked-up rows of
it too: SGD and Adagrad then equal keras' dense optimizers, Adam is lazy Adam and
FTRL is lazy FTRL (TensorFlow's sparse FTRL).
"""

import keras
from keras import ops

from keras_embed_ext.backends.arithmetic import add_product
from keras_embed_ext.backends.arithmetic import add_quotient

# Settings of keras' optimizers that a row-wise update does not have; unset, each is falsy.
_UNSUPPORTED = (
    "momentum", "nesterov", "amsgrad", "weight_decay", "clipnorm", "clipvalue", "global_clipnorm",
    "use_ema", "gradient_accumulation_steps", "loss_scale_factor",
)


class RowOptimizer:
    """Base class: a learning rate (a float or a `LearningRateSchedule`) and slots."""

    #: `(name, per_row)` of each slot: per-row slots hold one value per table row.
    slots = ()

    def __init__(self, learning_rate=0.001):
        if isinstance(learning_rate, dict):
            learning_rate = keras.optimizers.schedules.deserialize(learning_rate)
        if not isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
            if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)):
                raise ValueError(
                    "`learning_rate` must be a number or a keras LearningRateSchedule. "
                    f"Received: learning_rate={learning_rate!r}"
                )
            learning_rate = float(learning_rate)
        self.learning_rate = learning_rate

    def slot_initial_value(self, name):
        return 0.0

    def current_learning_rate(self, step):
        """The learning rate of the step numbered `step` (1 for the first), as keras
        evaluates a schedule at the count of steps taken before it."""
        if isinstance(self.learning_rate, keras.optimizers.schedules.LearningRateSchedule):
            return ops.cast(self.learning_rate(step - 1), "float32")
        return self.learning_rate

    def update(self, rows, grads, slots, step):
        """New `(rows, slots)` for float32 `rows (n, D)` with summed `grads (n, D)`."""
        raise NotImplementedError

    def still_at_zero_gradient(self) -> bool:
        """Whether a zero gradient leaves a row and its slots exactly as they are, so a
        step need not keep them apart (lazy Adam's momentum would move them)."""
        return False

    def get_config(self):
        learning_rate = self.learning_rate
        if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
            learning_rate = keras.optimizers.schedules.serialize(learning_rate)
        return {"learning_rate": learning_rate}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({arguments})"


@keras.saving.register_keras_serializable(package="keras_embed_ext")
class SGD(RowOptimizer):
    """`row -= learning_rate * grad`, as `keras.optimizers.SGD` without momentum."""

    def __init__(self, learning_rate=0.01):
        super().__init__(learning_rate)

    def update(self, rows, grads, slots, step):
        return rows - self.current_learning_rate(step) * grads, []

    def still_at_zero_gradient(self):
        return True


@keras.saving.register_keras_serializable(package="keras_embed_ext")
class Adagrad(RowOptimizer):
    """Adagrad with one accumulator per table value, as `keras.optimizers.Adagrad`:
    `acc += grad**2; row -= learning_rate * grad / sqrt(acc + epsilon)`."""

    slots = (("accumulator", False),)

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7):
        super().__init__(learning_rate)
        self.initial_accumulator_value = float(initial_accumulator_value)
        self.epsilon = float(epsilon)

    def slot_initial_value(self, name):
        return self.initial_accumulator_value

    def update(self, rows, grads, slots, step):
        accumulator = add_product(slots[0], grads, grads)
        denominator = ops.sqrt(accumulator + self.epsilon)
        return add_quotient(rows, grads, denominator, -self.current_learning_rate(step)), [accumulator]

    def still_at_zero_gradient(self):
        # `0 / sqrt(0)` would be NaN: only a positive denominator divides a zero gradient to zero.
        return self.epsilon > 0 or self.initial_accumulator_value > 0

    def get_config(self):
        return {
            **super().get_config(),
            "initial_accumulator_value": self.initial_accumulator_value,
            "epsilon": self.epsilon,
        }


@keras.saving.register_keras_serializable(package="keras_embed_ext")
class RowwiseAdagrad(Adagrad):
    """Adagrad with one accumulator per row (FBGEMM's exact row-wise Adagrad):
    `acc += mean(grad**2)`, `row -= learning_rate * grad / (sqrt(acc) + epsilon)`.
    Its state is one float per row instead of one per value."""

    slots = (("accumulator", True),)

    def __init__(self, learning_rate=0.01, initial_accumulator_value=0.0, epsilon=1e-8):
        super().__init__(learning_rate, initial_accumulator_value, epsilon)

    def update(self, rows, grads, slots, step):
        accumulator = slots[0] + ops.mean(ops.square(grads), axis=-1)
        scale = self.current_learning_rate(step) / (ops.sqrt(accumulator) + self.epsilon)
        return add_product(rows, ops.expand_dims(scale, -1), grads, -1.0), [accumulator]


@keras.saving.register_keras_serializable(package="keras_embed_ext")
class Adam(RowOptimizer):
    """Lazy Adam: keras' Adam update, with the moments and rows updated only at the
    rows looked up in a step (TF Addons' `LazyAdam`, torch's `SparseAdam`). The
    bias correction counts the layer's own training steps."""

    slots = (("momentum", False), ("velocity", False))

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
        super().__init__(learning_rate)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)

    def update(self, rows, grads, slots, step):
        momentum, velocity = slots
        step = ops.cast(step, "float32")
        alpha = (
            self.current_learning_rate(step)
            * ops.sqrt(1 - ops.power(self.beta_2, step))
            / (1 - ops.power(self.beta_1, step))
        )
        momentum = momentum + (grads - momentum) * (1 - self.beta_1)
        velocity = velocity + (ops.square(grads) - velocity) * (1 - self.beta_2)
        rows = rows - momentum * alpha / (ops.sqrt(velocity) + self.epsilon)
        return rows, [momentum, velocity]

    def get_config(self):
        return {
            **super().get_config(),
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
        }


@keras.saving.register_keras_serializable(package="keras_embed_ext")
class Ftrl(RowOptimizer):
    """FTRL-Proximal with keras' `Ftrl` update and hyperparameters, lazy as
    TensorFlow's sparse FTRL: only the rows looked up in a step move. keras' dense
    `Ftrl` recomputes every row from its state each step, which sets the rows never
    looked up to zero; a row once looked up follows both alike."""

    slots = (("accumulator", False), ("linear", False))

    def __init__(self, learning_rate=0.001, learning_rate_power=-0.5, initial_accumulator_value=0.1,
                 l1_regularization_strength=0.0, l2_regularization_strength=0.0,
                 l2_shrinkage_regularization_strength=0.0, beta=0.0):
        super().__init__(learning_rate)
        self.learning_rate_power = float(learning_rate_power)
        self.initial_accumulator_value = float(initial_accumulator_value)
        self.l1_regularization_strength = float(l1_regularization_strength)
        self.l2_regularization_strength = float(l2_regularization_strength)
        self.l2_shrinkage_regularization_strength = float(l2_shrinkage_regularization_strength)
        self.beta = float(beta)

    def slot_initial_value(self, name):
        return self.initial_accumulator_value if name == "accumulator" else 0.0

    def update(self, rows, grads, slots, step):
        accumulator, linear = slots
        lr = self.current_learning_rate(step)
        power = -self.learning_rate_power
        l2 = self.l2_regularization_strength + self.beta / (2.0 * lr)
        shrunk_grads = grads + 2 * self.l2_shrinkage_regularization_strength * rows
        new_accumulator = accumulator + ops.square(grads)
        linear = linear + shrunk_grads - (ops.power(new_accumulator, power) - ops.power(accumulator, power)) / lr * rows
        quadratic = ops.power(new_accumulator, power) / lr + 2 * l2
        l1 = self.l1_regularization_strength
        rows = (ops.clip(linear, -l1, l1) - linear) / quadratic
        return rows, [new_accumulator, linear]

    def get_config(self):
        names = ("learning_rate_power", "initial_accumulator_value", "l1_regularization_strength",
                 "l2_regularization_strength", "l2_shrinkage_regularization_strength", "beta")
        return {**super().get_config(), **{name: getattr(self, name) for name in names}}


_BY_NAME = {"sgd": SGD, "adagrad": Adagrad, "rowwise_adagrad": RowwiseAdagrad, "adam": Adam, "ftrl": Ftrl}
_FROM_KERAS = (
    (keras.optimizers.SGD, SGD, ()),
    (keras.optimizers.Adagrad, Adagrad, ("initial_accumulator_value", "epsilon")),
    (keras.optimizers.Adam, Adam, ("beta_1", "beta_2", "epsilon")),
    (keras.optimizers.Ftrl, Ftrl, ("learning_rate_power", "initial_accumulator_value", "l1_regularization_strength",
                                   "l2_regularization_strength", "l2_shrinkage_regularization_strength", "beta")),
)


def _from_keras(optimizer):
    """The row-wise optimizer with a keras optimizer's hyperparameters."""
    row_class, names = next((row, names) for cls, row, names in _FROM_KERAS if isinstance(optimizer, cls))
    for name in _UNSUPPORTED:
        value = getattr(optimizer, name, None)
        if value:
            raise ValueError(
                f"`sparse_optimizer` updates rows with plain {type(optimizer).__name__}; it "
                f"does not support `{name}`. Received: {name}={value!r}"
            )
    learning_rate = optimizer._learning_rate
    if not isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        if callable(learning_rate):
            raise ValueError(
                f"A row-wise update reads {type(optimizer).__name__}'s `learning_rate` as a number or a keras "
                f"LearningRateSchedule, evaluated at its own step count; a callable is neither. Received: "
                f"learning_rate={learning_rate!r}"
            )
        learning_rate = float(ops.convert_to_numpy(learning_rate))
    return row_class(learning_rate, **{name: getattr(optimizer, name) for name in names})


def get(identifier) -> RowOptimizer | None:
    """The row-wise optimizer that `sparse_optimizer=identifier` asks for."""
    if identifier is None or isinstance(identifier, RowOptimizer):
        return identifier
    if isinstance(identifier, str) and identifier in _BY_NAME:
        return _BY_NAME[identifier]()
    if isinstance(identifier, tuple(cls for cls, _, _ in _FROM_KERAS)):
        return _from_keras(identifier)
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier)
    raise ValueError(
        "`sparse_optimizer` must be None, one of "
        f"{', '.join(map(repr, _BY_NAME))}, an instance of keras.optimizers.SGD, Adagrad, "
        "Adam or Ftrl, or a keras_embed_ext.optimizers object. "
        f"Received: sparse_optimizer={identifier!r}"
    )

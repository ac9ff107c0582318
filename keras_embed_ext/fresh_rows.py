"""The values a dynamic table gives a row it frees for a new key: new draws of the
table's initializer, as if that row had been drawn with the whole table."""

import math

import keras
from keras import initializers

# Initializers whose values depend on the whole table, not on one row.
_WHOLE_TABLE = ("Orthogonal", "Identity", "STFT")


def check_row_initializer(initializer, layer_name):
    name = type(initializer).__name__
    if name in _WHOLE_TABLE:
        raise ValueError(
            f"Embedding layer '{layer_name}' is dynamic: it re-initializes a freed row on its own, "
            f"which `embeddings_initializer={name}` cannot do (it draws a whole table at once). Use a "
            "row-wise initializer such as 'uniform', 'normal' or 'glorot_uniform'."
        )


class FreshRows:
    """`(count, seed=None) -> (count, output_dim)` float32 rows, drawn from `initializer`:
    with `seed_generator` (new values on every call), or with `seed`, a seed drawn from it
    beforehand (JAX: drawn outside a `cond` whose branch draws the rows). A
    `VarianceScaling` initializer keeps the scale it has for the whole table's shape."""

    def __init__(self, initializer, table_shape, seed_generator):
        self.seed_generator = seed_generator
        self._dim = table_shape[1]
        self._draw = _draw_of(initializer, table_shape)

    def __call__(self, count, seed=None):
        return keras.ops.cast(self._draw((count, self._dim), self.seed_generator if seed is None else seed), "float32")


def _draw_of(initializer, table_shape):
    """`(shape, seed) -> values` of `initializer`."""
    if not isinstance(initializer, initializers.Initializer) or "seed" not in initializer.get_config():
        # A function, or Constant, Zeros, Ones: the same values every time.
        return lambda shape, seed: initializer(shape, "float32")
    if isinstance(initializer, initializers.VarianceScaling):
        return _variance_scaling_draw(initializer, table_shape)
    config = initializer.get_config()
    config["seed"] = None
    fresh = type(initializer).from_config(config)

    def draw(shape, seed):
        fresh.seed = seed
        return fresh(shape, "float32")

    return draw


def _variance_scaling_draw(initializer, table_shape):
    """`VarianceScaling`'s draw with the scale of the whole table's shape (its own call
    would take the fans of the rows drawn)."""
    fan_in, fan_out = table_shape
    fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[initializer.mode]
    scale = initializer.scale / max(1.0, fan)
    distribution = initializer.distribution

    def draw(shape, seed):
        if distribution == "truncated_normal":  # 0.8796...: the stddev of a standard normal truncated at 2
            return keras.random.truncated_normal(shape, stddev=math.sqrt(scale) / 0.87962566103423978, seed=seed)
        if distribution == "untruncated_normal":
            return keras.random.normal(shape, stddev=math.sqrt(scale), seed=seed)
        limit = math.sqrt(3.0 * scale)
        return keras.random.uniform(shape, minval=-limit, maxval=limit, seed=seed)

    return draw

"""The values a dynamic table gives a row it frees for a new key: new draws of the
table's initializer, as if that row had been drawn with the whole table."""

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


def row_initializer(initializer, table_shape, seed_generator):
    """A callable `(count) -> (count, output_dim)` float32 rows, drawn from `initializer`
    with `seed_generator` (new values on every call). A `VarianceScaling` initializer
    keeps the scale it has for the whole table's shape."""
    if not isinstance(initializer, initializers.Initializer):
        return lambda count: initializer((count, table_shape[1]), "float32")
    config = initializer.get_config()
    if "seed" not in config:  # Constant, Zeros, Ones: the same values every time
        return lambda count: initializer((count, table_shape[1]), "float32")
    config["seed"] = None
    fresh = type(initializer).from_config(config)
    fresh.seed = seed_generator
    if isinstance(initializer, initializers.VarianceScaling):
        # Its scale divided by the table's fan, then by `output_dim` (the rows' fan out).
        fan_in, fan_out = table_shape
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[initializer.mode]
        fresh.scale = initializer.scale * fan_out / max(1.0, fan)
        fresh.mode = "fan_out"
    return lambda count: keras.ops.cast(fresh((count, table_shape[1]), "float32"), "float32")

"""What a saved layer holds: its config, and its variables in keras' order, then the adapter."""

import keras
import numpy as np
from keras import constraints
from keras import initializers
from keras import ops
from keras import regularizers


def layer_config(layer, base_config):
    """`Embedding.get_config`: keras' keys, then this layer's own ones where they are set."""
    config = {
        **base_config,
        "input_dim": layer.input_dim,
        "output_dim": layer.output_dim,
        "embeddings_initializer": initializers.serialize(layer.embeddings_initializer),
        "embeddings_regularizer": regularizers.serialize(layer.embeddings_regularizer),
        "activity_regularizer": regularizers.serialize(layer.activity_regularizer),
        "embeddings_constraint": constraints.serialize(layer.embeddings_constraint),
        "mask_zero": layer.mask_zero,
        "quantization_config": keras.saving.serialize_keras_object(layer.quantization_config),
    }
    # Arguments keras.layers.Embedding lacks are written only when set,
    # so a default configuration stays loadable by keras' own layer.
    extras = {
        "dropout": (layer.dropout, 0.0),
        "combiner": (layer.combiner, None),
        "invalid_ids": (layer.invalid_ids, "raise"),
        "input_length": (layer.input_length, None),
        "seed": (layer.seed if isinstance(layer.seed, int) else None, None),
    }
    config.update({k: v for k, (v, default) in extras.items() if v != default})
    if layer.lora_rank:
        config["lora_rank"] = layer.lora_rank
        config["lora_alpha"] = layer.lora_alpha
    if layer.sparse_optimizer is not None:
        config["sparse_optimizer"] = keras.saving.serialize_keras_object(layer.sparse_optimizer)
    return config


def deserialize_config(config):
    """A config with its quantization config as an object again."""
    config = dict(config)
    config["quantization_config"] = keras.saving.deserialize_keras_object(
        config.get("quantization_config")
    )
    return config


def stored_variables(layer, optimizer_state=True):
    """The stored table(s) in keras 3.15's order, then the LoRA adapter(s), then the
    state of the `sparse_optimizer`."""
    variables = layer._table_variables()
    if layer.lora_enabled:
        variables = variables + layer._adapter_variables()
    if optimizer_state and layer._row_training is not None:
        variables = variables + layer._row_training.variables()
    return variables


_ALPHA_KEY = "lora_alpha"


def save_variables(layer, store):
    """The variables under keys `0` to `n - 1`; with an adapter, its `lora_alpha` too,
    so that a layer built without one (a keras-hub model's config does not record it)
    takes it whole."""
    if not layer.built:
        return
    for index, variable in enumerate(stored_variables(layer)):
        store[str(index)] = variable
    if layer.lora_enabled:
        store[_ALPHA_KEY] = np.asarray(layer.lora_alpha, "float32")


def load_variables(layer, store):
    """Loads this layer's own files, and keras' (whose adapter was merged at save)."""
    if not layer.built:
        return
    alpha = float(np.asarray(store[_ALPHA_KEY])) if _ALPHA_KEY in store.keys() else None
    keys = sorted((key for key in store.keys() if key != _ALPHA_KEY), key=lambda key: (len(str(key)), str(key)))
    if keys != [str(index) for index in range(len(keys))]:
        raise ValueError(
            f"Layer '{layer.name}' cannot load these weights: their keys must be 0 to "
            f"{len(keys) - 1}. Received keys {keys}."
        )
    found = [store[key] for key in keys]
    base = layer._table_variables()
    if not layer.lora_enabled and _is_adapter(layer, found[len(base):]) and _matches(base, found[: len(base)]):
        # An adapter the layer was not built with: it takes it.
        rank = tuple(found[len(base)].shape)[1]
        layer.enable_lora(rank, alpha if alpha is not None else rank)
    expected = stored_variables(layer)
    if _matches(expected, found):
        targets = expected
    elif _matches(stored_variables(layer, optimizer_state=False), found):
        # A file without the sparse_optimizer's state: the state starts afresh.
        targets = stored_variables(layer, optimizer_state=False)
    elif layer.lora_enabled and _matches(base, found):
        # The table already holds the merged adapter: start from a zero delta.
        targets = base
        layer.lora_embeddings_b.assign(ops.zeros(layer.lora_embeddings_b.shape))
    else:
        raise ValueError(
            f"Layer '{layer.name}' cannot load these weights. Expected "
            f"{len(expected)} variables: {_describe(expected)}. "
            f"Found {len(found)}: {_describe(found, indexed=True)}."
        )
    for variable, value in zip(targets, found):
        if variable.path.endswith("/g_idx"):
            _check_groups(layer, value)
        if variable is layer._format.row_variables(layer)[0] and layer.quantization_mode == "int4":
            _check_padding(layer, value)
        variable.assign(value)
    if alpha is not None and layer.lora_enabled and len(targets) > len(base):
        layer.lora_alpha = alpha  # the scale the saved adapter was trained with


def _is_adapter(layer, values):
    """Whether `values` are `lora_embeddings_a (V, r)` and `_b (r, D)` of this layer."""
    if len(values) < 2:
        return False
    a, b = (tuple(value.shape) for value in values[:2])
    return len(a) == 2 and len(b) == 2 and a[0] == layer.input_dim and b == (a[1], layer.output_dim)


def _check_groups(layer, g_idx):
    """`g_idx`, the block of each value of a row, follows from the block size; another
    one would decode values with another block's scale."""
    expected = np.arange(layer.output_dim) // layer._format.block_size
    if not np.array_equal(np.asarray(g_idx), expected):
        raise ValueError(
            f"Layer '{layer.name}' cannot load these weights: `g_idx` must be "
            f"arange({layer.output_dim}) // {layer._format.block_size}, the block of each value. "
            f"Received: {np.asarray(g_idx).tolist()}"
        )


def _check_padding(layer, packed):
    """With an odd `output_dim`, the last byte of each packed int4 row holds one value
    and a zero: anything else is a file of another `output_dim` (8 values in the
    shape of 7)."""
    if layer.output_dim % 2 == 0:
        return
    padding = (np.asarray(packed)[:, -1].astype("uint8") >> 4) != 0
    if padding.any():
        raise ValueError(
            f"Layer '{layer.name}' cannot load these weights: with output_dim="
            f"{layer.output_dim} the last int4 value of each packed row must be padding "
            f"(0), but row {int(np.flatnonzero(padding)[0])} holds a value there. The file "
            f"was saved with output_dim={layer.output_dim + 1}."
        )


def _dtype_class(dtype):
    """Integer dtypes match exactly (an int8 table stored as int32 would wrap); floats
    match any float."""
    name = keras.backend.standardize_dtype(dtype)
    return "float" if "float" in name else name


def _matches(variables, values):
    return len(variables) == len(values) and all(
        tuple(value.shape) == tuple(variable.shape) and _dtype_class(value.dtype) == _dtype_class(variable.dtype)
        for variable, value in zip(variables, values)
    )


def _describe(items, indexed=False):
    parts = []
    for index, item in enumerate(items):
        label = str(index) if indexed else item.path.split("/")[-1]
        parts.append(f"{label} {tuple(item.shape)} {keras.backend.standardize_dtype(item.dtype)}")
    return "[" + ", ".join(parts) + "]"

"""The layer's variables in a weights store: keras' order, then the adapter."""

import keras
import numpy as np
from keras import ops

from keras_embed_ext import lora


def stored_variables(layer):
    """The stored table in keras 3.15's order, then `lora_embeddings_a`, `_b`."""
    variables = layer._format.variables(layer)
    if layer.lora_enabled:
        variables = variables + lora.adapter_variables(layer)
    return variables


def save_variables(layer, store):
    if not layer.built:
        return
    for index, variable in enumerate(stored_variables(layer)):
        store[str(index)] = variable


def load_variables(layer, store):
    """Loads this layer's own files, and keras' (whose adapter was merged at save)."""
    if not layer.built:
        return
    expected = stored_variables(layer)
    found = [store[str(index)] for index in range(len(store.keys()))]
    base = layer._format.variables(layer)
    if _matches(expected, found):
        targets = expected
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
        variable.assign(value)


def _is_int(dtype):
    return np.dtype(keras.backend.standardize_dtype(dtype)).kind in "iu"


def _matches(variables, values):
    return len(variables) == len(values) and all(
        tuple(value.shape) == tuple(variable.shape) and _is_int(value.dtype) == _is_int(variable.dtype)
        for variable, value in zip(variables, values)
    )


def _describe(items, indexed=False):
    parts = []
    for index, item in enumerate(items):
        label = str(index) if indexed else item.path.split("/")[-1]
        parts.append(f"{label} {tuple(item.shape)} {keras.backend.standardize_dtype(item.dtype)}")
    return "[" + ", ".join(parts) + "]"

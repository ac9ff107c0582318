"""Checks of the constructor's arguments: each bad value named with what was expected."""

from numbers import Integral
from numbers import Real

import numpy as np
from keras import backend

from keras_embed_ext.combiners import COMBINERS
from keras_embed_ext.ids import INVALID_ID_POLICIES

BASE_LAYER_ARGUMENTS = ("activity_regularizer", "trainable", "dtype", "autocast", "name", "input_shape")


def is_positive_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool) and value > 0


def check_lora_alpha(lora_alpha):
    if lora_alpha is not None and (isinstance(lora_alpha, bool) or not isinstance(lora_alpha, Real)):
        raise ValueError(f"`lora_alpha` must be a number or None. Received: lora_alpha={lora_alpha!r}")


def check_arguments(input_dim, output_dim, dropout, combiner, invalid_ids, lora_rank, lora_alpha):
    for name, value in (("input_dim", input_dim), ("output_dim", output_dim)):
        if not is_positive_int(value):
            raise ValueError(
                f"`{name}` must be a positive integer. "
                f"Received: {name}={value!r} (of type {type(value).__name__})."
            )
    if isinstance(dropout, bool) or not isinstance(dropout, Real) or not 0 <= dropout < 1:
        raise ValueError(f"`dropout` must be a float in [0, 1). Received: dropout={dropout!r}")
    if combiner not in (None, *COMBINERS):
        raise ValueError(
            f"`combiner` must be one of None, {', '.join(map(repr, COMBINERS))}. "
            f"Received: combiner={combiner!r}"
        )
    if invalid_ids not in INVALID_ID_POLICIES:
        raise ValueError(
            f"`invalid_ids` must be one of {INVALID_ID_POLICIES}. Received: invalid_ids={invalid_ids!r}"
        )
    if lora_rank is not None and not is_positive_int(lora_rank):
        raise ValueError(f"`lora_rank` must be a positive integer or None. Received: lora_rank={lora_rank!r}")
    check_lora_alpha(lora_alpha)


def reject_unknown_arguments(kwargs):
    """A name that is neither Keras 3's nor Keras 1's is a TypeError, as in Python."""
    for name in kwargs:
        if name not in BASE_LAYER_ARGUMENTS:
            raise TypeError(f"Embedding.__init__() got an unexpected keyword argument {name!r}")


def check_float_dtype(dtype_policy, layer_name):
    """The table is float (or quantized from float); an integer dtype cannot hold it."""
    dtype = dtype_policy.variable_dtype
    if not backend.is_float_dtype(dtype):
        raise ValueError(
            f"Embedding layer '{layer_name}' stores a float table; its dtype must be a float "
            f"type (or a quantized or mixed policy of one). Received: dtype={dtype!r}"
        )


def initial_table(weights, shape, layer_name):
    """The table that `weights=` gives: an array of `shape` (or nested lists) alone, or a
    list holding only it."""
    several = isinstance(weights, (list, tuple)) and len(weights) > 1
    if several and any(np.ndim(w) != 1 for w in weights):  # not the rows of a nested list
        raise ValueError(
            f"`weights` must be the table, one array of shape {shape}, or a list holding "
            f"only it. Received: a list of {len(weights)} arrays."
        )
    if isinstance(weights, (list, tuple)) and len(weights) == 1:
        weights = weights[0]
    table = weights if hasattr(weights, "shape") else np.asarray(weights, "float32")
    if tuple(table.shape) != tuple(shape):
        raise ValueError(
            f"Layer {layer_name} weight shape {tuple(shape)} is not compatible with provided "
            f"weight shape {tuple(table.shape)}."
        )
    return table


def check_sparse_optimizer(optimizer, regularizer, constraint):
    """What a row-wise optimizer cannot train: a table read whole by a regularizer or a
    constraint."""
    if optimizer is None:
        return
    for name, value in (("embeddings_regularizer", regularizer), ("embeddings_constraint", constraint)):
        if value is not None:
            raise ValueError(
                f"`sparse_optimizer` updates only the rows looked up in a step; `{name}` acts "
                f"on the whole table. Use one or the other. Received: {name}={value!r}"
            )

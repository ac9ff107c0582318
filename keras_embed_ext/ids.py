"""Id validation: what out-of-range and negative ids get."""

import numpy as np
from keras import ops

from keras_embed_ext.backends import is_traced

INVALID_ID_POLICIES = ("raise", "zero")


def as_int_ids(ids):
    """Integer ids; float ids are truncated to int32, as Keras does."""
    ids = ops.convert_to_tensor(ids)
    if ops.dtype(ids) not in ("int32", "int64"):
        ids = ops.cast(ids, "int32")
    return ids


def first_invalid(ids, input_dim):
    """`(position, id)` of the first id outside `[0, input_dim)`, or None."""
    ids = np.asarray(ids)
    bad = np.flatnonzero((ids < 0) | (ids >= input_dim))
    if bad.size == 0:
        return None
    position = np.unravel_index(bad[0], ids.shape)
    return tuple(int(p) for p in position), int(ids.reshape(-1)[bad[0]])


def invalid_id_error(layer_name, input_dim, position, value):
    return ValueError(
        f"Embedding layer '{layer_name}' got id {value} at position "
        f"{position}, outside [0, input_dim={input_dim}). Ids must be "
        f"integers with 0 <= id < {input_dim}."
    )


def validate(ids, input_dim, policy, layer_name="embedding"):
    """Returns `(safe_ids, valid)`.

    `safe_ids` are always in range (invalid ones replaced by 0) and `valid` is a
    boolean mask of the ids that were in range, or `None` when all are known to be.
    With `policy="raise"`, an eager call with an invalid id raises `ValueError`;
    a traced call cannot, so it masks like `"zero"`.
    """
    if policy == "raise" and not is_traced(ids):
        # One transfer of the ids to the host; the check itself is numpy's.
        host = ops.convert_to_numpy(ids)
        if host.size == 0 or (host.min() >= 0 and host.max() < input_dim):
            return ids, None
        position, value = first_invalid(host, input_dim)
        raise invalid_id_error(layer_name, input_dim, position, value)
    valid = ops.logical_and(ops.greater_equal(ids, 0), ops.less(ids, input_dim))
    return ops.where(valid, ids, ops.zeros_like(ids)), valid


def zero_invalid(rows, valid):
    """`rows (..., n)` with the rows of invalid ids zeroed (`valid` from `validate`)."""
    if valid is None:
        return rows
    return ops.where(ops.expand_dims(valid, -1), rows, ops.zeros_like(rows))

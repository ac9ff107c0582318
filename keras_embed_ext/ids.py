"""Id validation: which dtypes are ids, and what out-of-range and negative ids get."""

import warnings

import numpy as np
from keras import backend
from keras import ops

from keras_embed_ext.backends.context import compiled_by_xla
from keras_embed_ext.backends.context import eager_on_torch_cpu
from keras_embed_ext.backends.context import is_traced
from keras_embed_ext.backends.devices import on_accelerator
from keras_embed_ext.backends.devices import to_host
from keras_embed_ext.backends.keys import positions_of

INVALID_ID_POLICIES = ("raise", "zero")


def dtype_name(x) -> str:
    """The dtype of a tensor, an array or nested lists, as Keras names it."""
    dtype = (x if ops.is_tensor(x) else np.asarray(x)).dtype
    if isinstance(dtype, np.dtype):
        return dtype.name
    try:
        return backend.standardize_dtype(dtype)
    except ValueError:
        return str(dtype)


def warn_if_keras_wraps(dtype, subject):
    """A warning where a symbolic input of `dtype` will reach the layer wrapped: keras
    converts int64 inputs to int32 on JAX without x64, before any layer sees them."""
    if backend.backend() != "jax" or backend.standardize_dtype(dtype) not in ("int64", "uint32", "uint64"):
        return
    import jax

    if not jax.config.jax_enable_x64:
        warnings.warn(
            f"{subject} takes {backend.standardize_dtype(dtype)} ids, which keras converts to int32 on JAX "
            "without jax_enable_x64 before the layer sees them: an id beyond int32 wraps around (another row, "
            "or a negative id's zero row). Use int32 ids, or enable x64 with "
            "`jax.config.update('jax_enable_x64', True)`.",
            stacklevel=3,
        )


def is_numeric(dtype: str) -> bool:
    return dtype == "bool" or dtype.startswith(("int", "uint", "float", "bfloat"))


def _checked_dtype(ids, subject):
    """`(ids, dtype)`: tensor ids as they are, host ids (numpy, lists) as a numpy array,
    booleans as int32; ids of any dtype but integer and float are a TypeError that
    names it."""
    array = ids if ops.is_tensor(ids) else np.asarray(ids)
    dtype = dtype_name(array)
    if dtype == "bool":
        cast = array.astype("int32") if isinstance(array, np.ndarray) else ops.cast(array, "int32")
        return cast, "int32"
    if is_numeric(dtype):
        return array, dtype
    received = "None" if ids is None else f"ids of dtype {dtype}"
    raise TypeError(
        f"{subject} expects integer ids (float ids are truncated "
        f"to integers, as Keras does). Received: {received}."
    )


def _in_range(ids, input_dim, dtype):
    """Which ids truncate to an integer in `[0, input_dim)`. Compared before any cast,
    so NaN and ids beyond int32 are out of range rather than wrapped into it."""
    lower = ids > -1 if "float" in dtype else ids >= 0
    return lower & (ids < input_dim)


def _min_and_max_in_range(ids, input_dim, dtype):
    """Whether eager tensor `ids` are all in range, from their least and greatest id: on
    an accelerator two numbers cross to the host where all the ids would."""
    if ops.size(ids) == 0:
        return True
    return bool(_in_range(to_host(ops.stack([ops.min(ids), ops.max(ids)])), input_dim, dtype).all())


def _as_int(ids, dtype):
    """In-range ids as int32 (int64 kept): floats truncate, as Keras casts them."""
    return ids if dtype in ("int32", "int64") else ops.cast(ids, "int32")


def invalid_id_error(subject, input_dim, host_ids, valid):
    """The ValueError for the first id that `valid` (host arrays) marks invalid."""
    first = np.flatnonzero(~valid)[0]
    position = tuple(int(p) for p in np.unravel_index(first, host_ids.shape))
    return ValueError(
        f"{subject} got id {host_ids.reshape(-1)[first].item()} at "
        f"position {position}, outside [0, input_dim={input_dim}). Ids must be integers "
        f"with 0 <= id < {input_dim}."
    )


def validate(ids, input_dim, policy, layer_name="embedding", subject=None):
    """Returns `(safe_ids, valid)`.

    `safe_ids` are integer and always in range (invalid ones replaced by 0) and
    `valid` is a boolean mask of the ids that were in range, or `None` when all are
    known to be. With `policy="raise"`, an eager call with an invalid id raises
    `ValueError`; a traced call cannot, so it masks like `"zero"`. Host ids (numpy,
    lists) are checked and cast on the host, before they become tensors. Errors name
    `subject`, by default the Embedding layer `layer_name`.
    """
    subject = subject or f"Embedding layer '{layer_name}'"
    ids, dtype = _checked_dtype(ids, subject)
    on_host = isinstance(ids, np.ndarray)
    if on_host or (policy == "raise" and not is_traced(ids)):
        if not on_host and on_accelerator(ids) and _min_and_max_in_range(ids, input_dim, dtype):
            return _as_int(ids, dtype), None
        # Tensor ids move to the host once; the check itself is numpy's.
        host = ids if on_host else to_host(ids)
        # min and max first: building the full mask costs more in every eager call.
        all_valid = host.size == 0 or (host.min() >= 0 and host.max() < input_dim)
        valid = None if all_valid else _in_range(host, input_dim, dtype)
        if all_valid or valid.all():
            int_ids = ops.convert_to_tensor(host.astype("int32", copy=False)) if on_host else _as_int(ids, dtype)
            return int_ids, None
        if policy == "raise":
            raise invalid_id_error(subject, input_dim, host, valid)
        # Only host ids under "zero" reach here.
        safe = np.where(valid, host, 0).astype("int32")
        return ops.convert_to_tensor(safe), ops.convert_to_tensor(valid)
    valid = _in_range(ids, input_dim, dtype)
    return _as_int(ops.where(valid, ids, ops.zeros_like(ids)), dtype), valid


def zero_invalid(rows, valid):
    """`rows (..., n)` with the rows of invalid ids zeroed (`valid` from `validate`)."""
    if valid is None:
        return rows
    if eager_on_torch_cpu(rows):
        # torch's CPU `where` over rows costs several copies of them; a copy zeroing
        # the invalid rows alone costs one.
        invalid = positions_of(valid.reshape(-1), False)
        if invalid.shape[0] == 0:
            return rows
        return rows.reshape(-1, rows.shape[-1]).index_fill(0, invalid, 0).reshape(rows.shape)
    if backend.backend() == "tensorflow" and not compiled_by_xla():
        import tensorflow as tf

        # Uncompiled, the select and its gradient's are each a pass over every row, and
        # most batches have no invalid id (XLA fuses the select into the gather).
        return tf.cond(tf.reduce_all(valid), lambda: tf.identity(rows), lambda: _zeroed(rows, valid))
    return _zeroed(rows, valid)


def _zeroed(rows, valid):
    return ops.where(ops.expand_dims(valid, -1), rows, ops.zeros_like(rows))

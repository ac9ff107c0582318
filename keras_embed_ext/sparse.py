"""Ragged (TensorFlow) and sparse (TensorFlow, JAX) ids: their lookup, on present ids only.

A ragged or sparse input becomes `FlatIds`: the present ids, their per-id weights,
and either the bag (segment) each belongs to, for a combiner, or its coordinates
in the dense result, for a plain lookup.
"""

import sys
from typing import Any
from typing import NamedTuple

import keras
import numpy as np
from keras import ops


class FlatIds(NamedTuple):
    ids: Any  # (n,) present ids
    weights: Any  # (n,) float weights, 1.0 unless given
    segments: Any  # (n,) the bag of each id, in [0, num_segments)
    num_segments: Any
    bag_shape: tuple  # the output shape without the embedding axis, with a combiner
    indices: Any = None  # (n, rank) coordinates in the dense ids (sparse only)
    dense_shape: Any = None  # the dense ids' shape (sparse only)


def _tf():
    """TensorFlow if it is in use here, without importing it for other backends."""
    return sys.modules.get("tensorflow")


def is_ragged(x) -> bool:
    """A `tf.RaggedTensor` on the TensorFlow backend."""
    return keras.backend.backend() == "tensorflow" and is_tf_ragged(x)


def is_tf_ragged(x) -> bool:
    """A `tf.RaggedTensor`, whatever the backend (a `tf.data` pipeline's, feeding JAX)."""
    tf = _tf()
    return tf is not None and isinstance(x, tf.RaggedTensor)


def is_sparse(x) -> bool:
    """A `tf.SparseTensor` on TensorFlow or a `jax.experimental.sparse.BCOO` on JAX."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return isinstance(x, _tf().SparseTensor)
    if backend == "jax":
        from jax.experimental import sparse as jax_sparse

        return isinstance(x, jax_sparse.BCOO)
    return False


def check_supported(x):
    """A clear error for a ragged or sparse tensor that this backend cannot take."""
    kind = ("sparse " if getattr(x, "is_sparse", False) else "") + type(x).__name__
    if kind in ("RaggedTensor", "SparseTensor", "BCOO") or kind.startswith("sparse "):
        raise ValueError(
            f"Embedding got a {kind} on the {keras.backend.backend()} backend, which has no such "
            "tensors in Keras: ragged ids need TensorFlow, sparse ids TensorFlow or JAX. Pad the ids "
            "with 0 and use mask_zero=True (with a combiner for bags) instead."
        )


def _parts(x):
    """`(indices, values, dense_shape)` of a tf.SparseTensor or a JAX BCOO."""
    tf = _tf()
    if tf is not None and isinstance(x, tf.SparseTensor):
        return x.indices, x.values, x.dense_shape
    if x.n_batch:  # batch dimensions (keras' own tests make them): one flat list of entries
        from jax.experimental import sparse as jax_sparse

        x = jax_sparse.bcoo_update_layout(x, n_batch=0)
    return x.indices, x.data, x.shape


def _padding_out(indices, shape, ids, weights):
    """BCOO pads its entries with indices out of the shape: their ids become 0 and
    their weights 0, and a lookup's scatter drops them."""
    if _tf() is not None and keras.backend.backend() == "tensorflow":
        return indices, ids, weights
    inside = ops.all(indices < ops.convert_to_tensor(shape, dtype=indices.dtype), axis=-1)
    clipped = ops.where(ops.expand_dims(inside, -1), indices, ops.zeros_like(indices))
    return clipped, ops.where(inside, ids, ops.zeros_like(ids)), weights * ops.cast(inside, weights.dtype)


def _flat_positions(indices, shape):
    """Row-major position of each index row within `shape`."""
    position = ops.zeros_like(indices[:, 0])
    for axis in range(len(shape)):
        position = position * ops.cast(shape[axis], position.dtype) + indices[:, axis]
    return position


def _static_shape(dense_shape, rank):
    return tuple(dense_shape[axis] for axis in range(rank))


def ragged_bags(ragged, weights=None) -> FlatIds:
    """A 2-D ragged batch of bags: each row's present ids form one bag."""
    if ragged.ragged_rank != 1 or len(ragged.shape) != 2:
        raise ValueError(
            "A combiner takes ragged ids of shape (batch, None). "
            f"Received a RaggedTensor of shape {ragged.shape}."
        )
    if weights is not None and not is_ragged(weights):
        raise ValueError(
            "Ragged ids take ragged per-id `weights` with the same row lengths. "
            f"Received: weights of type {type(weights).__name__}."
        )
    values = ragged.values
    weights = ops.ones_like(values, dtype="float32") if weights is None else weights.values
    nrows = ragged.nrows()
    return FlatIds(values, weights, ragged.value_rowids(), nrows, (nrows,))


def sparse_ids(x, weights=None, multi_hot=False) -> FlatIds:
    """Sparse ids (values are ids) or, with `multi_hot`, a `(..., input_dim)` sparse
    tensor whose last coordinate is the id and whose values are its weight."""
    indices, values, dense_shape = _parts(x)
    rank = len(x.shape)
    shape = _static_shape(dense_shape, rank)
    if multi_hot:
        ids, weights = indices[:, -1], ops.cast(values, "float32")
    else:
        ids = values
        weights = ops.ones_like(values, dtype="float32") if weights is None else ops.cast(_parts(weights)[1], "float32")
    entries, ids, weights = _padding_out(indices, shape, ids, weights)
    bag_shape = shape[:-1]
    segments = _flat_positions(entries[:, :-1], bag_shape) if rank > 1 else ops.zeros_like(entries[:, 0])
    num_segments = 1
    for size in bag_shape:
        num_segments = num_segments * size
    return FlatIds(ids, weights, segments, num_segments, bag_shape, indices, shape)


def map_ragged(fn, ragged):
    """`fn` applied to the flat values of a `tf.RaggedTensor`, keeping its row lengths."""
    return _tf().ragged.map_flat_values(fn, ragged)


def flat_ids(inputs, weights, combiner) -> FlatIds:
    """The present ids of ragged or sparse `inputs`, as a layer with `combiner` reads
    them: a 2-D ragged batch of bags needs one; sparse ids with float values are a
    multi-hot `(..., input_dim)` tensor of per-id weights, which needs one too."""
    if is_ragged(inputs):
        return ragged_bags(inputs, weights)
    multi_hot = "float" in keras.backend.standardize_dtype(inputs.dtype)
    if multi_hot and not combiner:
        raise ValueError(
            "Sparse ids with float values are read as a multi-hot (..., input_dim) "
            "tensor of per-id weights, which needs a combiner. Pass integer ids, "
            "or set combiner='sum', 'mean' or 'sqrtn'."
        )
    return sparse_ids(inputs, weights, multi_hot)


def ragged_to_dense_bags(ids, weights, bag_sizes):
    """Lists of ids and weights where each TensorFlow ragged bag is dense: padded to its
    bag size (`None`: the longest bag) with id 0 of weight 0, as numpy arrays; the
    other features' weights are ones where none were given."""
    dense_ids, dense_weights = [], []
    for index, (feature_ids, size) in enumerate(zip(ids, bag_sizes)):
        feature_weights = None if weights is None else weights[index]
        if is_tf_ragged(feature_ids):
            if feature_weights is None:
                feature_weights = _tf().ones_like(feature_ids, dtype="float32")
            shape = [None, size]
            dense_ids.append(feature_ids.to_tensor(0, shape=shape).numpy())
            dense_weights.append(feature_weights.to_tensor(0.0, shape=shape).numpy())
        else:
            dense_ids.append(feature_ids)
            dense_weights.append(np.ones(np.shape(feature_ids), "float32") if feature_weights is None
                                 else feature_weights)
    return dense_ids, dense_weights

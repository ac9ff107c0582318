"""Bag reductions over the last id axis: sum, mean and sqrtn."""

from keras import ops

COMBINERS = ("sum", "mean", "sqrtn")


def combine(rows, weights, combiner):
    """Reduces `rows (..., L, D)` with per-id `weights (..., L)` over L.

    `"sum"`: sum of `w * row`; `"mean"`: divided by the sum of `w`; `"sqrtn"`:
    divided by the square root of the sum of `w**2`, as TensorFlow's
    `embedding_lookup_sparse`. An empty bag (all weights 0) gives zeros.
    """
    weights = ops.cast(weights, rows.dtype)
    total = ops.sum(rows * ops.expand_dims(weights, -1), axis=-2)
    if combiner == "sum":
        return total
    if combiner == "mean":
        norm = ops.sum(weights, axis=-1, keepdims=True)
    else:
        norm = ops.sqrt(ops.sum(ops.square(weights), axis=-1, keepdims=True))
    return total / ops.where(ops.equal(norm, 0), ops.ones_like(norm), norm)

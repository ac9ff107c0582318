"""Bag reductions: sum, mean and sqrtn, over a padded axis or over segments.

`"sum"` is the sum of `w * row`; `"mean"` divides it by the sum of `w`;
`"sqrtn"` by the square root of the sum of `w**2`, as TensorFlow's
`embedding_lookup_sparse`. An empty bag (all weights 0) gives zeros.
"""

from keras import ops

COMBINERS = ("sum", "mean", "sqrtn")


def _reduce(rows, weights, combiner, reduce_sum):
    weights = ops.cast(weights, rows.dtype)
    total = reduce_sum(rows * ops.expand_dims(weights, -1))
    if combiner == "sum":
        return total
    norm = reduce_sum(weights if combiner == "mean" else ops.square(weights))
    if combiner == "sqrtn":
        norm = ops.sqrt(norm)
    norm = ops.expand_dims(norm, -1)
    return total / ops.where(ops.equal(norm, 0), ops.ones_like(norm), norm)


def combine(rows, weights, combiner):
    """Reduces `rows (..., L, D)` with per-id `weights (..., L)` over L."""
    bag_axis = len(weights.shape) - 1
    return _reduce(rows, weights, combiner, lambda x: ops.sum(x, axis=bag_axis))


def combine_segments(rows, weights, segments, num_segments, combiner):
    """Reduces flat `rows (n, D)` into `num_segments` bags given by `segments (n,)`."""
    return _reduce(
        rows, weights, combiner, lambda x: ops.segment_sum(x, segments, num_segments)
    )

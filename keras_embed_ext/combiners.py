"""Bags of ids, each reduced to one row: sum, mean and sqrtn, over a padded axis or
over segments.

`"sum"` is the sum of `w * row`; `"mean"` divides it by the sum of `w`;
`"sqrtn"` by the square root of the sum of `w**2`, as TensorFlow's
`embedding_lookup_sparse`. An empty bag (all weights 0) gives zeros.
"""

import numpy as np
from keras import ops

from keras_embed_ext.backends.devices import on_device_of
from keras_embed_ext.backends.devices import to_device_of
from keras_embed_ext.backends.rows import weighted_bag_sum
from keras_embed_ext.ids import dtype_name
from keras_embed_ext.ids import is_numeric

COMBINERS = ("sum", "mean", "sqrtn")


def with_bag_weights(counted, weights=None):
    """The per-id weights of the bags: 1.0 or 0.0 for whether an id counts, times the
    weights given in the call."""
    return counted if weights is None else counted * ops.cast(weights, "float32")


def _reduce(rows, weights, combiner, reduce_sum):
    weights = ops.cast(weights, rows.dtype)
    return _normalize(reduce_sum(rows * ops.expand_dims(weights, -1)), weights, combiner, reduce_sum)


def _normalize(total, weights, combiner, reduce_sum):
    """`total`, the weighted sums of the bags' rows, divided as `combiner` says."""
    if combiner == "sum":
        return total
    norm = reduce_sum(weights if combiner == "mean" else ops.square(weights))
    # An empty bag divides by 1, chosen before the square root, whose gradient at 0
    # would make the weights' gradient NaN.
    norm = ops.where(ops.equal(norm, 0), ops.ones_like(norm), norm)
    if combiner == "sqrtn":
        norm = ops.sqrt(norm)
    return total / ops.expand_dims(norm, -1)


def combine(rows, weights, combiner):
    """Reduces `rows (..., L, D)` with per-id `weights (..., L)` over L."""
    bag_axis = len(weights.shape) - 1
    return _reduce(rows, weights, combiner, lambda x: ops.sum(x, axis=bag_axis))


def combine_full_bags(rows, combiner):
    """Reduces `rows (..., L, D)` over L, every id of weight 1."""
    total = ops.sum(rows, axis=-2)
    if combiner == "sum":
        return total
    bag_size = rows.shape[-2]
    return total / (bag_size if combiner == "mean" else bag_size**0.5) if bag_size else total


def combine_segments(rows, weights, segments, num_segments, combiner):
    """Reduces flat `rows (n, D)` into `num_segments` bags given by `segments (n,)`."""
    return _reduce(
        rows, weights, combiner, lambda x: ops.segment_sum(x, segments, num_segments)
    )


def combine_sums(total, weights, combiner):
    """Bags from `total (..., D)`, their rows already summed with `weights (..., L)`."""
    weights = ops.cast(weights, total.dtype)
    return _normalize(total, weights, combiner, lambda x: ops.sum(x, axis=-1))


def counted(ids, valid, mask_zero=False):
    """1.0 for each id that counts in its bag (in range and, with `mask_zero`, not
    padding), else 0.0; `valid` as `ids.validate` returns it."""
    keep = ops.ones_like(ids, dtype="bool") if valid is None else valid
    if mask_zero:
        keep = ops.logical_and(keep, ops.not_equal(ids, 0))
    return ops.cast(keep, "float32")


def check_bag_inputs(ids, weights, combiner, subject):
    """A clear error for a scalar id, or per-id weights not numbers of the ids' shape;
    `subject` names the layer (or feature) that got them."""
    ids_shape = tuple(np.shape(ids))
    if not ids_shape:
        raise ValueError(
            f"{subject} has combiner={combiner!r}, which reduces "
            "the last axis of the ids (a bag of ids). Received a scalar id; pass ids of "
            "shape (..., bag_size)."
        )
    if weights is None:
        return
    dtype = dtype_name(weights)
    if not is_numeric(dtype):
        raise TypeError(
            f"{subject} needs numeric per-id `weights`. Received: weights "
            f"of dtype {dtype}."
        )
    weights_shape = tuple(np.shape(weights))
    if len(weights_shape) != len(ids_shape) or any(
        w != i for w, i in zip(weights_shape, ids_shape) if w is not None and i is not None
    ):
        raise ValueError(
            f"{subject} needs per-id `weights` of the ids' shape "
            f"{ids_shape}. Received: weights of shape {weights_shape}."
        )


def float_bags(table, ids, valid, weights, keep_scale, combiner, mask_zero=False):
    """The bags of a float `table` for in-range `ids (..., L)`; `keep_scale` is word
    dropout's per-id scale, or None.

    The bags are weighted sums of the table's rows, taken without writing the
    `(..., L, D)` rows where the backend can (`backends.rows.weighted_bag_sum`).
    """
    bag_weights = with_bag_weights(counted(ids, valid, mask_zero), weights)
    row_weights = bag_weights if keep_scale is None else bag_weights * keep_scale
    sums = on_device_of(
        table, ids, lambda ids: weighted_bag_sum(table, ids, to_device_of(row_weights, table))
    )
    return combine_sums(sums, bag_weights, combiner)


class DenseBags:
    """A feature of dense ids, one id per example `(batch,)` or bags `(..., bag_size)`:
    `ids` is `(ids, valid)` as `ids.validate` gives them, `weights` per id or None."""

    def __init__(self, ids, weights, combiner):
        self.ids, self.weights, self.combiner = ids, weights, combiner

    def reduce(self, rows):
        """The feature's output from its looked-up rows (invalid ids' rows are zeros)."""
        ids, valid = self.ids
        if len(rows.shape) <= 2:  # one id per example: weighted by a "sum" only, as in keras-rs
            if self.weights is None or self.combiner != "sum":
                return rows
            return rows * ops.cast(ops.expand_dims(self.weights, -1), rows.dtype)
        if self.weights is None and valid is None:
            return combine_full_bags(rows, self.combiner)
        if self.weights is None:
            # Invalid ids' rows are zeros already: the rows are summed as they are (not
            # multiplied by 0 or 1 first), and invalid ids are left out of the divisor.
            return combine_sums(ops.sum(rows, axis=-2), counted(ids, valid), self.combiner)
        weights = with_bag_weights(counted(ids, valid), self.weights)
        return combine(rows, weights, self.combiner)


class FlatBags:
    """A feature of ragged or sparse ids, bags of their present ids: `ids` is `(ids,
    valid)` of the present ids, `flat` their `sparse.FlatIds`."""

    def __init__(self, ids, flat, combiner):
        self.ids, self.flat, self.combiner = ids, flat, combiner

    def reduce(self, rows):
        flat = self.flat
        weights = with_bag_weights(counted(self.ids[0], self.ids[1]), flat.weights)
        bags = combine_segments(rows, weights, flat.segments, flat.num_segments, self.combiner)
        return ops.reshape(bags, (*flat.bag_shape, rows.shape[-1]))

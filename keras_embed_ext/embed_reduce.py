"""`keras_embed_ext.EmbedReduce`: keras-rs' `EmbedReduce` on the gather-first layer."""

from typing import Any

import keras
from keras import ops

from keras_embed_ext.combiners import COMBINERS
from keras_embed_ext.embedding import Embedding


@keras.saving.register_keras_serializable(package="keras_embed_ext")
class EmbedReduce(Embedding):
    """An embedding layer that reduces each bag of ids with a combiner.

    A drop-in for `keras_rs.layers.EmbedReduce`: `Embedding` with a combiner
    (`"mean"` by default), where a 1D input is one id per example and is not
    reduced. Everything `Embedding` does (LoRA, int8/int4, `sparse_optimizer`,
    ragged and sparse ids) applies.

    Example:

    >>> layer = keras_embed_ext.EmbedReduce(1000, 16)
    >>> tuple(layer(np.array([[1, 2, 3], [4, 5, 6]])).shape)
    (2, 16)

    Args:
        input_dim: Integer. Size of the vocabulary, i.e. maximum id + 1.
        output_dim: Integer. Dimension of the dense embedding.
        embeddings_initializer, embeddings_regularizer, embeddings_constraint,
            mask_zero, weights: As in `Embedding`.
        combiner: `"mean"`, `"sum"` or `"sqrtn"`: how a bag's rows are reduced.
        **kwargs: Other `Embedding` arguments.

    Call arguments:
        inputs: `(batch,)` ids, one per example, or `(batch, bag_size)` bags
            (dense, TensorFlow ragged, TensorFlow or JAX sparse).
        weights: Optional per-id weights of the inputs' shape; for 2D inputs a
            `(batch,)` weight per bag is applied to each of its ids. A 1D input's
            weights scale its rows with `"sum"` only, as in keras-rs.

    Output shape:
        `(batch, output_dim)`.
    """

    def __init__(self, input_dim: int, output_dim: int, embeddings_initializer="uniform",
                 embeddings_regularizer=None, embeddings_constraint=None, mask_zero: bool = False, weights=None,
                 combiner: str = "mean", **kwargs: Any):
        if combiner not in COMBINERS:
            raise ValueError(f"Invalid `combiner`: {combiner!r}, use one of {', '.join(COMBINERS)}.")
        super().__init__(input_dim, output_dim, embeddings_initializer=embeddings_initializer,
                         embeddings_regularizer=embeddings_regularizer, embeddings_constraint=embeddings_constraint,
                         mask_zero=mask_zero, weights=weights, combiner=combiner, **kwargs)

    def call(self, inputs, weights=None, training=None):
        if _rank(inputs) == 1:
            inputs = ops.expand_dims(inputs, -1)
            weights = ops.expand_dims(weights, -1) if weights is not None and self.combiner == "sum" else None
        elif weights is not None and _rank(weights) < _rank(inputs):
            weights = ops.broadcast_to(ops.expand_dims(weights, -1), ops.shape(inputs))
        return super().call(inputs, weights=weights, training=training)

    def quantize(self, mode=None, type_check=True, config=None):
        """Stores the table as `"int8"` or `"int4"` rows, as `Embedding` does."""
        super().quantize(mode, type_check=False, config=config)

    def compute_output_shape(self, input_shape):
        if len(input_shape) <= 1:
            return (*input_shape, self.output_dim)
        return super().compute_output_shape(input_shape)


def _rank(x):
    shape = getattr(x, "shape", None)
    return len(shape) if shape is not None else len(ops.shape(x))

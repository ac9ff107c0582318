"""Swapping `keras.layers.Embedding` for `keras_embed_ext.Embedding` in a model."""

import keras

from keras_embed_ext.embedding import Embedding


def replace_embeddings(model: keras.Model) -> keras.Model:
    """Returns a copy of `model` with every `keras.layers.Embedding` replaced.

    Each replacement has the same config and weights, in any state (float,
    int8, int4, LoRA), so the new model gives the same outputs. Works for
    Sequential and functional models, nested ones included; subclassed
    models cannot be cloned by Keras and are rejected by it.

    Args:
        model: A Sequential or functional `keras.Model`.

    Returns:
        A new model; `model` is left as it was.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            "replace_embeddings() takes a Sequential or functional keras.Model. "
            f"Received: {type(model).__name__}."
        )

    def clone(layer):
        if isinstance(layer, keras.Model):
            return replace_embeddings(layer)
        if type(layer) is keras.layers.Embedding:
            return Embedding.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    replaced = keras.models.clone_model(model, clone_function=clone)
    replaced.set_weights(model.get_weights())
    return replaced

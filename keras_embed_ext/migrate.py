"""Swapping keras' `Embedding` and `ReversibleEmbedding` for this package's in a model."""

import contextlib

import keras
from keras.src.models.functional import Functional

from keras_embed_ext.embedding import Embedding
from keras_embed_ext.reversible import ReversibleEmbedding

_GRAPH_STATE = ("_inbound_nodes", "_outbound_nodes", "_build_shapes_dict")


def replace_embeddings(model: keras.Model) -> keras.Model:
    """Puts this package's layers in place of keras' embedding layers.

    Every `keras.layers.Embedding` becomes a `keras_embed_ext.Embedding` and
    every `keras.layers.ReversibleEmbedding` a
    `keras_embed_ext.ReversibleEmbedding`, with the same config and weights in
    any state (float, int8, int4, LoRA), so the model gives the same outputs.
    Subclasses of those layers are left as they are.

    A Sequential or functional model is copied, nested models included, and
    `model` is left as it was. A model of a subclass (a keras-hub `Backbone` or
    `CausalLM`, whose class Keras cannot clone) keeps its class: its layers are
    swapped in place and `model` itself is returned. Swap before `compile`.

    Args:
        model: A `keras.Model`.

    Returns:
        The model with this package's layers.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"replace_embeddings() takes a keras.Model. Received: {type(model).__name__}.")
    if type(model) in (keras.Sequential, Functional):
        return _cloned(model)
    for layer in list(model._flatten_layers(include_self=False)):
        replacement = _REPLACEMENTS.get(type(layer))
        if replacement is not None:
            _become(layer, replacement)
    if keras.backend.backend() == "torch":
        for layer in model._flatten_layers():
            layer._track_variables()  # torch's parameter lists name the new variables
    return model


@contextlib.contextmanager
def replacing_embeddings():
    """Within it, keras' embedding layers are built as this package's.

    `keras.layers.Embedding(...)` gives a `keras_embed_ext.Embedding` and
    `keras.layers.ReversibleEmbedding(...)` a `keras_embed_ext.ReversibleEmbedding`
    (their subclasses are left as they are), wherever the call is made: in a
    keras-hub model's constructor, `from_preset` or `keras.saving.load_model`.
    It patches keras' class for the whole process while it is open.

    Example:

    >>> with keras_embed_ext.replacing_embeddings():
    ...     model = keras.saving.load_model("causal_lm.keras")
    """
    base = keras.layers.Embedding
    original = base.__dict__.get("__new__")

    def construct(cls, *args, **kwargs):
        if cls in _REPLACEMENTS:
            # Not an instance of `cls`, so Python does not run `cls.__init__` on it.
            return _REPLACEMENTS[cls](*args, **kwargs)
        return (original or keras.layers.Layer.__new__)(cls, *args, **kwargs)

    base.__new__ = staticmethod(construct)
    try:
        yield
    finally:
        if original is None:
            del base.__new__
        else:
            base.__new__ = original


# keras' classes and this package's in their place; subclasses of keras' are left alone.
_REPLACEMENTS = {keras.layers.Embedding: Embedding, keras.layers.ReversibleEmbedding: ReversibleEmbedding}


def _cloned(model):
    def clone(layer):
        if isinstance(layer, keras.Model):
            return replace_embeddings(layer)
        cls = _REPLACEMENTS.get(type(layer), layer.__class__)
        return cls.from_config(layer.get_config())

    replaced = keras.models.clone_model(model, clone_function=clone)
    replaced.set_weights(model.get_weights())
    return replaced


def _become(layer, cls):
    """Turns `layer` into a `cls` of the same config and weights, keeping the object:
    its parent, the model's graph and the variables' paths all refer to it."""
    new = cls.from_config(layer.get_config())
    new._parent_path = layer._parent_path
    new.trainable = layer.trainable
    if layer.built:
        new.build()
        values = {variable.path: variable for variable in layer.weights}
        for variable in new.weights:
            variable.assign(values[variable.path])
    for key in _GRAPH_STATE:
        if key in layer.__dict__:
            new.__dict__[key] = layer.__dict__[key]
    # Keras binds `build` and `quantize` wrappers to `new`: sharing its `__dict__` keeps
    # them and `layer` one state.
    object.__setattr__(layer, "__class__", cls)
    object.__setattr__(layer, "__dict__", new.__dict__)

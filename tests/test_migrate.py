"""replace_embeddings: keras.layers.Embedding swapped out with the same config, weights and outputs."""

import keras
import numpy as np
import pytest

import keras_embed_ext as kee
from conftest import table, to_numpy

V, D = 30, 6
IDS = np.random.default_rng(7).integers(0, V, size=(4, 5)).astype("int32")


def keras_embedding(state, name):
    layer = keras.layers.Embedding(V, D, weights=table(V, D), mask_zero=True, name=name)
    if state == "lora":
        layer.enable_lora(2)
        layer.lora_embeddings_b.assign(np.ones((2, D), "float32"))
    elif state != "float":
        layer.quantize(state)
    return layer


@pytest.mark.parametrize("state", ["float", "int8", "int4", "lora"])
def test_functional_model_with_nested_sequential(state):
    inner = keras.Sequential([keras.Input((5,), dtype="int32"), keras_embedding(state, "inner_emb"),
                              keras.layers.GlobalAveragePooling1D()], name="inner")
    inputs = keras.Input((5,), dtype="int32")
    outer_emb = keras_embedding(state, "outer_emb")
    merged = keras.layers.Concatenate()([inner(inputs), keras.layers.GlobalAveragePooling1D()(outer_emb(inputs))])
    model = keras.Model(inputs, keras.layers.Dense(3)(merged))
    replaced = kee.replace_embeddings(model)
    swapped = [l for l in replaced.get_layer("inner").layers + replaced.layers if isinstance(l, keras.layers.Embedding)]
    assert swapped == []  # keras_embed_ext.Embedding is not a keras.layers.Embedding subclass
    ours = [replaced.get_layer("outer_emb"), replaced.get_layer("inner").get_layer("inner_emb")]
    assert all(isinstance(l, kee.Embedding) for l in ours)
    for layer in ours:
        assert layer.quantization_mode == (None if state in ("float", "lora") else state)
        assert layer.lora_enabled == (state == "lora") and layer.mask_zero
    np.testing.assert_allclose(to_numpy(replaced(IDS)), to_numpy(model(IDS)), rtol=1e-6, atol=1e-6)
    assert isinstance(model.get_layer("outer_emb"), keras.layers.Embedding)  # the original is untouched


def test_sequential_model():
    model = keras.Sequential([keras.Input((5,), dtype="int32"), keras_embedding("float", "emb"),
                              keras.layers.GlobalAveragePooling1D()])
    replaced = kee.replace_embeddings(model)
    assert isinstance(replaced.layers[0], kee.Embedding)
    np.testing.assert_array_equal(to_numpy(replaced(IDS)), to_numpy(model(IDS)))


def test_keras_file_saved_with_keras_embedding_loads_into_this_layer(tmp_path):
    model = keras.Sequential([keras.Input((5,), dtype="int32"), keras_embedding("int8", "emb")])
    model.save(str(tmp_path / "k.keras"))
    loaded = kee.replace_embeddings(keras.saving.load_model(str(tmp_path / "k.keras")))
    assert isinstance(loaded.layers[0], kee.Embedding) and loaded.layers[0].quantization_mode == "int8"
    np.testing.assert_array_equal(to_numpy(loaded(IDS)), to_numpy(model(IDS)))


class TokenAndPosition(keras.layers.Layer):
    """A layer holding a keras embedding layer, as keras-hub's TokenAndPositionEmbedding."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.token_embedding = keras.layers.ReversibleEmbedding(V, D, tie_weights=False, name="token_embedding")
        self.position = keras.layers.Embedding(5, D, name="position")

    def call(self, ids):
        return self.token_embedding(ids) + self.position(keras.ops.arange(5))


class LanguageModel(keras.Model):
    """A functional model of a subclass, built in its constructor, as keras-hub's backbones."""

    def __init__(self, **kwargs):
        inputs = keras.Input((5,), dtype="int32")
        self_embedding = TokenAndPosition(name="embed")
        hidden = self_embedding(inputs)
        super().__init__(inputs, self_embedding.token_embedding(hidden, reverse=True), **kwargs)
        self.embed = self_embedding


def test_a_model_of_a_subclass_is_changed_in_place():
    model = LanguageModel()
    rng = np.random.default_rng(3)
    model.set_weights([rng.standard_normal(w.shape).astype("float32") for w in model.get_weights()])
    model.embed.token_embedding.quantize("int4")
    expected = to_numpy(model(IDS))
    weights = [to_numpy(w) for w in model.weights]
    assert kee.replace_embeddings(model) is model
    assert type(model) is LanguageModel
    assert type(model.embed.token_embedding) is kee.ReversibleEmbedding
    assert type(model.embed.position) is kee.Embedding
    assert model.embed.token_embedding.quantization_mode == "int4"
    for before, after in zip(weights, model.weights):
        np.testing.assert_array_equal(to_numpy(after), before)
    np.testing.assert_array_equal(to_numpy(model(IDS)), expected)
    model.embed.token_embedding.enable_lora(2)  # a method of this package's layer, on the same object
    assert model.embed.token_embedding.lora_kernel_a is model.embed.token_embedding.lora_embeddings_a
    assert {w.path for w in model.trainable_weights} >= {"embed/token_embedding/lora_embeddings_a",
                                                         "embed/token_embedding/lora_embeddings_b"}


def test_layers_built_within_replacing_embeddings_are_this_packages():
    class Subclass(keras.layers.Embedding):
        pass

    with kee.replacing_embeddings():
        model = LanguageModel()
        subclass = Subclass(V, D)
    assert type(model.embed.token_embedding) is kee.ReversibleEmbedding and not model.embed.token_embedding.tie_weights
    assert type(model.embed.position) is kee.Embedding
    assert type(subclass) is Subclass
    assert type(keras.layers.Embedding(V, D)) is keras.layers.Embedding  # restored on exit
    assert tuple(model(IDS).shape) == (4, 5, V)

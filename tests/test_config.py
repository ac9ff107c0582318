"""Constructor arguments, get_config/from_config and .keras files."""

import keras
import numpy as np
import pytest

import keras_embed_ext as kee
from conftest import table, to_numpy

KERAS_EMBEDDING_KEYS = {"name", "trainable", "dtype", "input_dim", "output_dim", "embeddings_initializer",
                        "embeddings_regularizer", "activity_regularizer", "embeddings_constraint", "mask_zero",
                        "quantization_config"}


@pytest.mark.parametrize("kwargs,match", [
    (dict(input_dim=0, output_dim=2), "input_dim=0"),
    (dict(input_dim=-3, output_dim=2), "input_dim=-3"),
    (dict(input_dim=2.5, output_dim=2), "input_dim=2.5"),
    (dict(input_dim=True, output_dim=2), "input_dim=True"),
    (dict(input_dim=4, output_dim=0), "output_dim=0"),
    (dict(input_dim=4, output_dim="8"), "output_dim='8'"),
    (dict(input_dim=4, output_dim=2, combiner="max"), "combiner='max'"),
    (dict(input_dim=4, output_dim=2, invalid_ids="clip"), "invalid_ids='clip'"),
    (dict(input_dim=4, output_dim=2, lora_rank=0), "lora_rank=0"),
    (dict(input_dim=4, output_dim=2, lora_rank=2, lora_alpha="8"), "lora_alpha='8'"),
])
def test_bad_arguments_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kee.Embedding(**kwargs)


def test_numpy_integer_dims_are_accepted():
    layer = kee.Embedding(np.int64(5), np.int32(2))
    assert layer.get_config()["input_dim"] == 5 and type(layer.get_config()["input_dim"]) is int


def test_default_config_has_exactly_keras_keys_and_loads_into_keras():
    layer = kee.Embedding(10, 4, mask_zero=True, embeddings_regularizer="l2")
    config = layer.get_config()
    assert set(config) == KERAS_EMBEDDING_KEYS
    keras_layer = keras.layers.Embedding.from_config(config)
    assert keras_layer.mask_zero and keras_layer.input_dim == 10


def test_config_round_trip_with_every_argument():
    layer = kee.Embedding(10, 4, embeddings_initializer="ones", embeddings_regularizer="l1",
                          embeddings_constraint="non_neg", activity_regularizer="l2", mask_zero=True,
                          dropout=0.25, combiner="mean", invalid_ids="zero", input_length=3, seed=5, lora_rank=2,
                          lora_alpha=8, name="emb", dtype="mixed_bfloat16")
    config = layer.get_config()
    clone = kee.Embedding.from_config(config)
    assert clone.get_config() == config
    assert (clone.dropout, clone.combiner, clone.invalid_ids, clone.input_length) == (0.25, "mean", "zero", 3)
    assert clone.lora_rank == 2 and clone.lora_alpha == 8


def test_registered_name():
    assert keras.saving.get_registered_name(kee.Embedding) == "keras_embed_ext>Embedding"
    assert keras.saving.get_registered_object("keras_embed_ext>Embedding") is kee.Embedding


def test_keras_file_round_trip_safe_mode(tmp_path):
    weights = table(20, 5)
    inputs = keras.Input((3,), dtype="int32")
    outputs = kee.Embedding(20, 5, weights=weights, mask_zero=True, combiner="sum")(inputs)
    model = keras.Model(inputs, outputs)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    ids = np.array([[1, 0, 19], [4, 4, 0]])
    np.testing.assert_array_equal(to_numpy(loaded(ids)), to_numpy(model(ids)))
    assert isinstance(loaded.layers[1], kee.Embedding) and loaded.layers[1].combiner == "sum"

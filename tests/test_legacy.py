"""Keras 1 and tf.keras 2 arguments."""

import warnings

import keras
import numpy as np
import pytest

import keras_embed_ext as kee
from conftest import to_numpy


@pytest.mark.parametrize("old,new,value,kind", [
    ("init", "embeddings_initializer", "ones", keras.initializers.Ones),
    ("W_regularizer", "embeddings_regularizer", "l2", keras.regularizers.L2),
    ("W_constraint", "embeddings_constraint", "non_neg", keras.constraints.NonNeg),
])
def test_keras1_name_warns_naming_the_new_argument(old, new, value, kind):
    with pytest.warns(DeprecationWarning, match=f"`{old}`.*`{new}`"):
        layer = kee.Embedding(4, 2, **{old: value})
    assert isinstance(getattr(layer, new), kind)
    config = layer.get_config()
    assert old not in config and config[new] is not None


def test_keras1_init_sets_the_table():
    with pytest.warns(DeprecationWarning):
        layer = kee.Embedding(4, 2, init="ones")
    np.testing.assert_array_equal(to_numpy(layer(np.array([3]))), np.ones((1, 2)))


def test_unknown_argument_is_keras_type_error():
    with pytest.raises(TypeError, match="W_bogus"):
        kee.Embedding(4, 2, W_bogus=1)


def test_input_length_builds_sequential_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = keras.Sequential([kee.Embedding(50, 3, input_length=7)])
    assert model.built and model.output_shape == (None, 7, 3)
    assert kee.Embedding.from_config(model.layers[0].get_config()).input_length == 7


def test_input_length_is_validated():
    with pytest.raises(ValueError, match="input_length=0"):
        kee.Embedding(4, 2, input_length=0)


def test_weights_accepts_array_or_one_element_list():
    w = np.arange(8, dtype="float32").reshape(4, 2)
    for weights in (w, [w]):
        np.testing.assert_array_equal(to_numpy(kee.Embedding(4, 2, weights=weights).embeddings), w)
    with pytest.raises(ValueError):
        kee.Embedding(4, 2, weights=np.zeros((5, 2)))

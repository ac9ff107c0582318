"""The examples of every generation of the Embedding docs, verbatim, with this layer."""


import keras
import numpy as np
import pytest

import keras_embed_ext
from conftest import to_numpy

Embedding = keras_embed_ext.Embedding
Sequential = keras.Sequential


def test_keras1_and_tf_keras_2_example():
    # Keras 1, tf.keras r1.13, TF 2.0 and tf.keras 2.x share this example.
    model = Sequential()
    model.add(Embedding(1000, 64, input_length=10))
    # the model will take as input an integer matrix of size (batch, input_length).
    # now model.output_shape == (None, 10, 64), where None is the batch dimension.
    assert model.output_shape == (None, 10, 64)

    input_array = np.random.randint(1000, size=(32, 10))

    model.compile('rmsprop', 'mse')
    output_array = model.predict(input_array)
    assert output_array.shape == (32, 10, 64)


def test_keras3_example():
    model = keras.Sequential()
    model.add(keras_embed_ext.Embedding(1000, 64))
    input_array = np.random.randint(1000, size=(32, 10))
    model.compile('rmsprop', 'mse')
    output_array = model.predict(input_array)
    assert output_array.shape == (32, 10, 64)


def test_keras3_weights_and_lora_rank_arguments():
    weights = np.random.rand(1000, 64).astype("float32")
    layer = keras_embed_ext.Embedding(1000, 64, weights=weights, lora_rank=4)
    ids = np.random.randint(1000, size=(2, 10))
    np.testing.assert_allclose(to_numpy(layer(ids)), weights[ids], rtol=1e-6)
    assert [v.path.split("/")[-1] for v in layer.trainable_weights] == ["lora_embeddings_a", "lora_embeddings_b"]


def test_keras1_arguments():
    # Keras 1: Embedding(input_dim, output_dim, init='uniform', input_length=None,
    # W_regularizer=None, activity_regularizer=None, W_constraint=None,
    # mask_zero=False, weights=None, dropout=0.0)
    with pytest.warns(DeprecationWarning):
        layer = Embedding(1000, 64, init='uniform', input_length=10, W_regularizer=keras.regularizers.L2(1e-4),
                          activity_regularizer=None, W_constraint=keras.constraints.NonNeg(), mask_zero=False,
                          weights=[np.ones((1000, 64), "float32")], dropout=0.2)
    model = Sequential()
    model.add(layer)
    assert model.output_shape == (None, 10, 64)
    model.compile('rmsprop', 'mse')
    output_array = model.predict(np.random.randint(1000, size=(32, 10)))
    np.testing.assert_array_equal(output_array, np.ones((32, 10, 64)))


def test_tf_keras_2_cpu_placement_note():
    with keras.device('cpu:0'):
        embedding_layer = Embedding(1000, 64)
        embedding_layer.build()
    model = Sequential([keras.Input((10,), dtype="int32"), embedding_layer])
    assert model.predict(np.random.randint(1000, size=(2, 10))).shape == (2, 10, 64)

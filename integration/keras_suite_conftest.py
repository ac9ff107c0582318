"""conftest.py of the directory where keras' own Embedding and ReversibleEmbedding
tests run: keras' `layers.Embedding` and `layers.ReversibleEmbedding`, as those tests
read them, are keras_embed_ext's layers."""

from keras.src import layers

import keras_embed_ext

layers.Embedding = keras_embed_ext.Embedding
layers.ReversibleEmbedding = keras_embed_ext.ReversibleEmbedding


def pytest_configure(config):
    # The marker keras' repository declares in its own conftest.py.
    config.addinivalue_line("markers", "requires_trainable_backend: a test that trains a model")

"""conftest.py of the directory where keras' own Embedding tests run: keras'
`layers.Embedding`, as those tests read it, is keras_embed_ext's layer."""

from keras.src import layers

import keras_embed_ext

layers.Embedding = keras_embed_ext.Embedding


def pytest_configure(config):
    # The marker keras' repository declares in its own conftest.py.
    config.addinivalue_line("markers", "requires_trainable_backend: a test that trains a model")

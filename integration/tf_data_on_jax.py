"""A `tf.data` pipeline of ragged ids feeding a JAX model through
`DistributedEmbedding.preprocess`, as keras-rs' JAX layer takes them; prints the
largest difference from a numpy reference and the change of the loss."""

import os

os.environ["KERAS_BACKEND"] = "jax"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_embed_ext as kee  # noqa: E402

B, L, V, D = 6, 4, 11, 3
table = kee.TableConfig("t", V, D, combiner="mean", optimizer="adagrad")
layer = kee.DistributedEmbedding({"bag": kee.FeatureConfig("bag", table, (B, L), (B, D))})
rng = np.random.default_rng(0)
lengths = [1 + i % L for i in range(B)]
ragged = tf.RaggedTensor.from_row_lengths(rng.integers(0, V, sum(lengths)).astype("int32"), lengths)
weights = tf.RaggedTensor.from_row_lengths(rng.uniform(0.5, 2, sum(lengths)).astype("float32"), lengths)

out = np.asarray(layer(layer.preprocess({"bag": ragged}, {"bag": weights}))["bag"])
tables = np.asarray(layer.get_embedding_tables()["t"])
expected = np.stack([(tables[ids.numpy()] * w.numpy()[:, None]).sum(0) / w.numpy().sum()
                     for ids, w in zip(ragged, weights)])
print(f"largest difference {np.abs(out - expected).max():.3g}")

inputs = layer.preprocess({"bag": keras.Input((L,), dtype="int32", batch_size=B)},
                          {"bag": keras.Input((L,), dtype="float32", batch_size=B)})
model = keras.Model(inputs, keras.layers.Dense(1)(layer(inputs)["bag"]))
model.compile("sgd", "mse")
data = tf.data.Dataset.from_tensors((({"bag": ragged}, {"bag": weights}), np.ones((B, 1), "float32")))


def preprocessed():
    for (ids, bag_weights), labels in data.repeat(20):
        yield layer.preprocess(ids, bag_weights, training=True), labels


history = model.fit(preprocessed(), steps_per_epoch=20, epochs=1, verbose=0)
losses = model.evaluate(preprocessed(), steps=1, verbose=0)
print(f"loss {history.history['loss'][0]:.4f} -> {losses:.4f}")

"""Every state of the layers under `tf.distribute.MirroredStrategy` on 2 logical CPU devices
against one device, on the same global batches.

Prints one JSON line: for each state, the largest difference of the trained weights
(or, for the quantized states, which train nothing, of the predictions) from one
device's, of `evaluate` and `predict`, and of the predictions of the model saved
inside the strategy's scope and loaded outside it and inside another. Run by
test_scaling_out.py.
"""

import json
import os
import sys
import tempfile

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

if __name__ == "__main__":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_embed_ext as kee  # noqa: E402

V, D, L, BATCH = 40, 4, 5, 16
RNG = np.random.default_rng(0)
IDS = RNG.integers(0, V // 2, (2 * BATCH, L)).astype("int32")
IDS[:, -1] = 0  # padding, for mask_zero
BAG_WEIGHTS = RNG.uniform(0.5, 2.0, IDS.shape).astype("float32")
TARGET = RNG.standard_normal((2 * BATCH, 1)).astype("float32")
TABLE = RNG.standard_normal((V, D)).astype("float32")
KERNEL = RNG.standard_normal((D, V)).astype("float32")


def head(x):
    return keras.layers.Dense(1, kernel_initializer="ones", bias_initializer="zeros")(x)


def embedding_model(state):
    """A model of one state and its inputs."""
    ids = keras.Input((L,), dtype="int32")
    kwargs = {"weights": TABLE, "combiner": "mean"}
    if state.startswith("sparse_"):
        kwargs["sparse_optimizer"] = state.removeprefix("sparse_")
    if state == "mask_zero_weights":
        weights = keras.Input((L,))
        layer = kee.Embedding(V, D, mask_zero=True, **kwargs)
        return keras.Model([ids, weights], head(layer(ids, weights=weights))), [IDS, BAG_WEIGHTS]
    if state == "dynamic":  # raw keys, more of them than rows: keys are evicted and rows renewed
        layer = kee.Embedding(V // 4, D, dynamic=kee.DynamicIds(eviction="lru"), combiner="mean", seed=1)
        return keras.Model(ids, head(layer(ids))), IDS * 7919 - 30000
    layer = kee.Embedding(V, D, **kwargs)
    model = keras.Model(ids, head(layer(ids)))
    if state.startswith("int"):
        layer.quantize(state)
    if state == "lora":
        layer.enable_lora(2)
        layer.lora_embeddings_b.assign(np.full((2, D), 0.1, "float32"))
    return model, IDS


def reversible_model(tied):
    """A language model's two directions: `reverse=True` gives logits over the vocabulary."""
    ids = keras.Input((L,), dtype="int32")
    layer = kee.ReversibleEmbedding(V, D, tie_weights=tied)
    logits = layer(keras.layers.Dense(D)(layer(ids)), reverse=True)
    model = keras.Model(ids, keras.ops.mean(logits, axis=(1, 2))[:, None])
    layer.set_weights([TABLE] if tied else [TABLE, KERNEL])
    return model, IDS


def collection_model():
    tables = [kee.TableConfig("a", V, D, optimizer="adagrad", initializer=keras.initializers.Constant(0.1)),
              kee.TableConfig("b", V, D, optimizer="sgd", combiner="sum", initializer=keras.initializers.Constant(0.2))]
    configs = {"one": kee.FeatureConfig("one", tables[0], (BATCH,), (BATCH, D)),
               "bag": kee.FeatureConfig("bag", tables[0], (BATCH, L), (BATCH, D)),
               "other": kee.FeatureConfig("other", tables[1], (BATCH, L), (BATCH, D))}
    inputs = {name: keras.Input(f.input_shape[1:], dtype="int32", name=name) for name, f in configs.items()}
    outputs = kee.DistributedEmbedding(configs)(inputs)
    joined = keras.layers.Concatenate()([outputs[n] for n in sorted(outputs)])
    return keras.Model(inputs, head(joined)), {"one": IDS[:, 0], "bag": IDS, "other": (IDS * 3) % V}


def build(state):
    keras.utils.set_random_seed(0)
    if state == "collection":
        model, x = collection_model()
    elif state.startswith("reversible"):
        model, x = reversible_model(state == "reversible_tied")
    else:
        model, x = embedding_model(state)
    model.compile(keras.optimizers.SGD(0.1), "mse")
    return model, x


def fitted(state):
    model, x = build(state)
    if not state.startswith("int"):  # quantized tables are frozen: they serve
        model.fit(x, TARGET, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    return model, x


def largest_difference(a, b):
    return float(max(np.abs(np.asarray(p) - np.asarray(q)).max() for p, q in zip(a, b)))


def main(states):
    report = {}
    for state in states:
        single, x = fitted(state)
        expected = single.predict(x, batch_size=BATCH, verbose=0)
        expected_loss = single.evaluate(x, TARGET, batch_size=BATCH, verbose=0)
        with STRATEGY.scope():
            model, _ = fitted(state)
            loss = model.evaluate(x, TARGET, batch_size=BATCH, verbose=0)
            predicted = model.predict(x, batch_size=BATCH, verbose=0)
            path = os.path.join(tempfile.mkdtemp(), "model.keras")
            model.save(path)
            inside = keras.saving.load_model(path).predict(x, batch_size=BATCH, verbose=0)
        outside = keras.saving.load_model(path).predict(x, batch_size=BATCH, verbose=0)
        report[state] = {
            "trained": largest_difference(model.get_weights(), single.get_weights()),
            "evaluate": abs(loss - expected_loss),
            "predict": largest_difference([predicted], [expected]),
            "loaded_inside": largest_difference([inside], [expected]),
            "loaded_outside": largest_difference([outside], [expected]),
            "moved": largest_difference(model.get_weights(), build(state)[0].get_weights()),
        }
    report["ragged_custom_loop"] = ragged_custom_loop()
    print(json.dumps(report))


def ragged_custom_loop():
    """Ragged ids through `strategy.run` (keras 3.15's `fit` cannot take them under a
    strategy: it reduces a first batch to build the model, which fails for a
    `RaggedTensor`, keras' own layer alike): one SGD step, against one device."""
    lengths = (np.arange(2 * BATCH) % L) + 1
    dataset = tf.data.Dataset.from_tensor_slices((tf.RaggedTensor.from_tensor(IDS, lengths=lengths), TARGET))
    dataset = dataset.batch(2 * BATCH)

    def step(layer, optimizer, ids, target):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum((tf.reduce_sum(layer(ids, training=True), -1, keepdims=True) - target) ** 2)
        optimizer.apply_gradients(zip(tape.gradient(loss, layer.trainable_variables), layer.trainable_variables))

    results = []
    for sparse_optimizer in (None, "adagrad"):
        single = kee.Embedding(V, D, weights=TABLE, combiner="mean", sparse_optimizer=sparse_optimizer)
        single_optimizer = keras.optimizers.SGD(0.1)
        for ids, target in dataset:
            step(single, single_optimizer, ids, target)
        with STRATEGY.scope():
            layer = kee.Embedding(V, D, weights=TABLE, combiner="mean", sparse_optimizer=sparse_optimizer)
            optimizer = keras.optimizers.SGD(0.1)
        for ids, target in STRATEGY.experimental_distribute_dataset(dataset):
            tf.function(lambda i, t: STRATEGY.run(step, args=(layer, optimizer, i, t)))(ids, target)
        results.append(largest_difference([layer.embeddings], [single.embeddings]))
    return results


STATES = ("float", "mask_zero_weights", "lora", "int8", "int4", "sparse_sgd", "sparse_adagrad",
          "sparse_rowwise_adagrad", "sparse_adam", "sparse_ftrl", "reversible_tied", "reversible_untied", "collection",
          "dynamic")

if __name__ == "__main__":
    # One strategy for the process: TensorFlow's collectives of a second one clash with the first's.
    STRATEGY = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    main(sys.argv[1:] or STATES)

"""A dynamic table under each backend's engine for several devices, one process:
`python dynamic_replicas.py jax` trains under `keras.distribution.DataParallel` over two
CPU devices and on one, and prints whether the key maps and tables are equal;
`python dynamic_replicas.py tensorflow` prints the error a `MirroredStrategy` gets."""

import json
import os
import sys

BACKEND = sys.argv[1]
os.environ["KERAS_BACKEND"] = BACKEND
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_embed_ext as kee  # noqa: E402


def model():
    layer = kee.Embedding(32, 3, dynamic=kee.DynamicIds(eviction="lru"), seed=1)
    built = keras.Sequential([keras.Input((2,), dtype="int32"), layer, keras.layers.Flatten(), keras.layers.Dense(1)])
    built.compile("sgd", "mse")
    return built, layer


def train(distributed):
    keras.utils.clear_session()
    keras.utils.set_random_seed(0)
    keras.distribution.set_distribution(keras.distribution.DataParallel() if distributed else None)
    built, layer = model()
    rng = np.random.default_rng(0)
    for _ in range(4):
        built.train_on_batch(rng.integers(-100, 100, (8, 2)).astype("int32"), rng.normal(size=(8, 1)))
    keras.distribution.set_distribution(None)
    return layer.id_map(), keras.ops.convert_to_numpy(layer.embeddings)


if BACKEND == "jax":
    (one, table_one), (two, table_two) = train(False), train(True)
    print(json.dumps({"same_map": all(np.array_equal(a, b) for a, b in zip(one, two)),
                      "resident": len(one[0]), "same_table": bool(np.array_equal(table_one, table_two))}))
else:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    with tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"]).scope():
        built, _ = model()
    try:
        built.fit(np.ones((4, 2), "int32"), np.ones((4, 1)), verbose=0)
        print(json.dumps({"error": None}))
    except ValueError as error:
        print(json.dumps({"error": str(error)}))

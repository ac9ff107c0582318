"""Training under `tf.distribute.MultiWorkerMirroredStrategy` with two local worker
processes (`TF_CONFIG` on 127.0.0.1), or on one device for the reference.

    python multi_worker.py single OUT.npz
    python multi_worker.py worker INDEX PORT0 PORT1 OUT.npz   # both workers, at once

Each run trains the states of `mirrored.py` named in STATES on the same global
batches (the workers each read half of every batch) and writes the trained weights.
keras 3.15.1's `fit` fails under this strategy before any layer runs (its first batch
is reduced to build the model, which it cannot do here, for a `Dense` model alike), so
the steps are a custom loop, as in TensorFlow's multi-worker guide. Run by
test_scaling_out.py.
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

STATES = ("float", "sparse_adagrad", "collection", "dynamic")


def main(mode, *args):
    if mode == "worker":
        index, port0, port1 = int(args[0]), args[1], args[2]
        os.environ["TF_CONFIG"] = json.dumps({
            "cluster": {"worker": [f"127.0.0.1:{port0}", f"127.0.0.1:{port1}"]},
            "task": {"type": "worker", "index": index},
        })
    import numpy as np
    import tensorflow as tf

    import keras

    import mirrored

    keras.config.disable_traceback_filtering()

    strategy = tf.distribute.MultiWorkerMirroredStrategy() if mode == "worker" else tf.distribute.get_strategy()
    weights = {}
    for state in STATES:
        with strategy.scope():
            model, x = mirrored.build(state)
            optimizer = keras.optimizers.SGD(0.1)
        for i, value in enumerate(model.get_weights()):
            weights[f"initial/{state}/{i}"] = value
        dataset = tf.data.Dataset.from_tensor_slices((x, mirrored.TARGET)).batch(mirrored.BATCH)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        dataset = strategy.experimental_distribute_dataset(dataset.with_options(options))

        def step(x, y, model=model, optimizer=optimizer):
            with tf.GradientTape() as tape:
                # Each replica's share of the global batch's mean: the replicas' gradients sum to its gradient.
                loss = tf.reduce_sum((model(x, training=True) - y) ** 2) / mirrored.BATCH
            gradients = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))

        train_step = tf.function(lambda x, y: strategy.run(step, args=(x, y)))
        for _ in range(2):
            for batch_x, batch_y in dataset:
                train_step(batch_x, batch_y)
        for i, value in enumerate(model.get_weights()):
            weights[f"{state}/{i}"] = value
    np.savez(args[-1], **weights)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main(*sys.argv[1:])

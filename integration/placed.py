"""A table built under keras.device() on another device than the ids: JAX, 2 virtual CPU devices.

Prints one JSON line: where the table and the outputs live and the largest difference
from numpy. Run by test_placement.py.
"""

import json
import os

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_embed_ext as kee  # noqa: E402

V, D = 1000, 16


def main():
    table = np.random.default_rng(0).standard_normal((V, D)).astype("float32")
    with keras.device("cpu:1"):
        layer = kee.Embedding(V, D, weights=table)
    layer.enable_lora(4)
    ids_np = np.random.default_rng(1).integers(0, V, (8, 5))
    ids = jax.device_put(ids_np, jax.devices()[0])
    # Only explicit moves (the ids there, the rows back) are allowed: the table never moves.
    with jax.transfer_guard_device_to_device("disallow"):
        out = layer(ids)
    report = {
        "table_device": str(next(iter(layer._embeddings.value.devices()))),
        "output_device": str(next(iter(out.devices()))),
        "max_diff": float(np.abs(np.asarray(out) - table[ids_np]).max()),
    }
    # keras' trainer assigns a step's results where it computed them: on the default device.
    model = keras.Sequential([keras.Input((5,), dtype="int32"), layer, keras.layers.Flatten(), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(ids_np, np.ones((8, 1)), verbose=0)
    report["table_device_after_fit"] = str(next(iter(layer._embeddings.value.devices())))
    print(json.dumps(report))


if __name__ == "__main__":
    main()

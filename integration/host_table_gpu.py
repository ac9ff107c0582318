"""Built under keras.device("cpu:0"), the table stays in host memory while the model runs on the GPU.

Looks up and trains (JAX or torch, from KERAS_BACKEND); prints one JSON line with where the table
is after the lookup and after training (keras' JAX trainer moves it: docs/scaling-out.md). Needs a GPU.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_embed_ext as kee  # noqa: E402

V, D = 100_000, 64


def device_kind(x):
    if keras.backend.backend() == "torch":
        return x.device.type
    return next(iter(x.devices())).platform


def main():
    table = np.random.default_rng(0).standard_normal((V, D)).astype("float32")
    with keras.device("cpu:0"):
        embedding = kee.Embedding(V, D, weights=table)
    ids = np.random.default_rng(1).integers(0, V, (32, 8))
    out = embedding(keras.ops.convert_to_tensor(ids))
    on_host_after_lookup = device_kind(embedding._embeddings.value) == "cpu"
    model = keras.Sequential([keras.Input((8,), dtype="int32"), embedding, keras.layers.Flatten(), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), "mse", jit_compile=False)
    history = model.fit(ids, np.ones((32, 1)), epochs=3, verbose=0)
    print(json.dumps({
        "table_on_host": on_host_after_lookup,
        "table_on_host_after_fit": device_kind(embedding._embeddings.value) == "cpu",
        "output_on_gpu": device_kind(out) in ("cuda", "gpu"),
        "max_diff": float(np.abs(keras.ops.convert_to_numpy(out) - table[ids]).max()),
        "losses": history.history["loss"],
    }))


if __name__ == "__main__":
    main()

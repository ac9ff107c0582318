"""Exports a small model with keras' layer and with this one, in every state, in each
format keras offers on this backend (ONNX included), and serves the artifact back
(`tf.saved_model.load`, onnxruntime, `torch.export.load`).

Writes a JSON report to the path it is given: for each state and format, whether each
layer's model exported and served, and the largest difference from the model's own
output. Run by test_export.py, once per backend (KERAS_BACKEND).
"""

import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_embed_ext as kee  # noqa: E402

V, D, L = 64, 16, 5
STATES = ("float", "mask", "int8", "int4", "lora", "int8_lora", "int4_lora")
FORMATS = {"tensorflow": ("tf_saved_model", "onnx"), "jax": ("tf_saved_model", "onnx"), "torch": ("torch", "onnx")}
IDS = np.random.default_rng(1).integers(0, V, size=(3, L)).astype("int32")
KEYS = np.random.default_rng(2).integers(-2**31, 2**31 - 1, size=(3, L)).astype("int32")


def build_dynamic():
    """A dynamic table trained a step on raw keys: the export serves its frozen map."""
    layer = kee.Embedding(V, D, dynamic=True)
    model = keras.Sequential([keras.Input((L,), dtype="int32"), layer, keras.layers.GlobalAveragePooling1D(),
                              keras.layers.Dense(2, kernel_initializer="ones")])
    model.compile("sgd", "mse")
    model.train_on_batch(KEYS[:2], np.ones((2, 2), "float32"))  # the third row's keys stay unknown
    return model


def build(layer_class, state):
    table = np.random.default_rng(0).standard_normal((V, D)).astype("float32")
    layer = layer_class(V, D, mask_zero=state == "mask", weights=[table])
    model = keras.Sequential([keras.Input((L,), dtype="int32"), layer, keras.layers.GlobalAveragePooling1D(),
                              keras.layers.Dense(2, kernel_initializer="ones")])
    if state.startswith("int"):
        layer.quantize(state[:4])
    if state.endswith("lora"):
        layer.enable_lora(2)
        layer.lora_embeddings_b.assign(np.full((2, D), 0.1, "float32"))
    return model


def served(model, fmt, path, ids):
    """The exported artifact's output for `ids`."""
    model.export(path, format=fmt, verbose=False)
    if fmt == "tf_saved_model":
        import tensorflow as tf

        artifact = tf.saved_model.load(path)
        return np.asarray(artifact.serve(tf.constant(ids)))
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: ids})[0]
    import torch

    program = torch.export.load(path)
    return program.module()(torch.from_numpy(ids)).detach().numpy()


def main():
    report = {}
    for state in STATES:
        for fmt in FORMATS[keras.backend.backend()]:
            entry = {}
            # keras' torch export traces with a batch of one and specializes to it.
            ids = IDS[:1] if fmt == "torch" else IDS
            for name, layer_class in (("keras", keras.layers.Embedding), ("ours", kee.Embedding)):
                model = build(layer_class, state)
                expected = keras.ops.convert_to_numpy(model(ids))
                path = os.path.join(tempfile.mkdtemp(), {"torch": "model.pt2", "onnx": "model.onnx"}.get(fmt, "model"))
                try:
                    entry[name] = float(np.abs(served(model, fmt, path, ids) - expected).max())
                except Exception as error:  # noqa: BLE001 - what failed is the report
                    entry[name] = f"{type(error).__name__}: {str(error)[:200]}"
            report[f"{state}/{fmt}"] = entry
    for fmt in FORMATS[keras.backend.backend()][:1]:
        model = build_dynamic()
        keys = KEYS[:1] if fmt == "torch" else KEYS
        expected = keras.ops.convert_to_numpy(model(keys))
        path = os.path.join(tempfile.mkdtemp(), "model.pt2" if fmt == "torch" else "model")
        try:
            ours = float(np.abs(served(model, fmt, path, keys) - expected).max())
        except Exception as error:  # noqa: BLE001 - what failed is the report
            ours = f"{type(error).__name__}: {str(error)[:200]}"
        report[f"dynamic/{fmt}"] = {"keras": "no dynamic tables", "ours": ours}
    # A file, not stdout: exporters print there too (torch's ONNX exporter, its graph).
    with open(sys.argv[1], "w") as file:
        json.dump(report, file)


if __name__ == "__main__":
    sys.exit(main())

"""A tour of keras_embed_ext on data it generates: `python -m keras_embed_ext.demo`.

Trains a bag-of-words classifier, quantizes its table to int8 and int4, fine-tunes a
LoRA adapter on the int4 table for a shifted task, merges it, saves the model and
reloads the file on another installed backend. Ends with a table of accuracy and
table bytes per state.

Without `KERAS_BACKEND`, the demo runs on the backend of `~/.keras/keras.json`
(TensorFlow by default) when it is installed, and on another installed one when it
is not (`keras_embed_ext.environment`).
"""

import os
import subprocess
import sys
import tempfile

import keras
import numpy as np

import keras_embed_ext as kee
from keras_embed_ext.environment import installed_backends

VOCAB, LENGTH, DIM = 2000, 12, 32


def make_data(rng, n, positive_ids):
    """Padded id sequences; the label says whether most ids are 'positive' words."""
    lengths = rng.integers(3, LENGTH + 1, size=n)
    ids = rng.integers(1, VOCAB, size=(n, LENGTH))
    ids[np.arange(LENGTH) >= lengths[:, None]] = 0
    votes = np.where(ids == 0, 0, np.where(np.isin(ids, positive_ids), 1, -1)).sum(axis=1)
    return ids.astype("int32"), (votes > 0).astype("float32")


def build_model():
    inputs = keras.Input((LENGTH,), dtype="int32")
    bags = kee.Embedding(VOCAB, DIM, mask_zero=True, combiner="mean", name="words")(inputs)
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Dense(32, activation="relu")(bags))
    return keras.Model(inputs, outputs)


def compile_model(model):
    # Compiling again after quantize, enable_lora or merge_lora makes TensorFlow's
    # compiled functions see the layer's new variables.
    model.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy", metrics=["accuracy"])


def accuracy(model, x, y):
    return float(model.evaluate(x, y, verbose=0)[1])


def table_bytes(layer):
    """Bytes of the table as stored: the table, its scales and zero points, and an adapter."""
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in layer.weights if v.path.split("/")[-1] != "g_idx")


def reload_elsewhere(path, x, y):
    """The saved file's accuracy under another installed backend, or None."""
    others = [b for b in installed_backends() if b != keras.backend.backend()]
    if not others:
        return None, None
    np.savez(path + ".npz", x=x, y=y)
    code = (
        "import sys, numpy as np, keras, keras_embed_ext; data = np.load(sys.argv[2]); "
        "model = keras.saving.load_model(sys.argv[1]); "
        "model.compile('adam', 'binary_crossentropy', metrics=['accuracy']); "
        "print(model.evaluate(data['x'], data['y'], verbose=0)[1])"
    )
    env = {**os.environ, "KERAS_BACKEND": others[0], "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", code, path, path + ".npz"], env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"Reloading on {others[0]} failed:\n{result.stderr[-2000:]}")
    return others[0], float(result.stdout.strip().splitlines()[-1])


def main():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    print(f"keras_embed_ext {kee.__version__} on keras {keras.__version__}, backend {keras.backend.backend()}")
    positive = rng.choice(np.arange(1, VOCAB), VOCAB // 2, replace=False)
    x, y = make_data(rng, 6000, positive)
    x_test, y_test = make_data(rng, 1000, positive)
    shifted = np.setxor1d(positive, rng.choice(np.arange(1, VOCAB), 300, replace=False))
    x2, y2 = make_data(rng, 6000, shifted)
    x2_test, y2_test = make_data(rng, 1000, shifted)
    rows = []

    print(f"\n1. Training a bag-of-words classifier: Embedding({VOCAB}, {DIM}, combiner='mean', mask_zero=True)")
    model = build_model()
    compile_model(model)
    model.fit(x, y, epochs=4, batch_size=64, validation_split=0.1)
    words = model.get_layer("words")
    rows.append(("float32 table", accuracy(model, x_test, y_test), table_bytes(words)))

    print("\n2. Quantizing the table: only the looked-up rows are decoded in each call")
    for mode in ("int8", "int4"):
        quantized = build_model()
        quantized.set_weights(model.get_weights())
        quantized.get_layer("words").quantize(mode)
        compile_model(quantized)
        rows.append((f"{mode} table", accuracy(quantized, x_test, y_test), table_bytes(quantized.get_layer("words"))))
    words.quantize("int4")

    print("\n3. Fine-tuning a LoRA adapter (rank 4) on the int4 table for a shifted task")
    words.enable_lora(4)
    for layer in model.layers[2:]:
        layer.trainable = False
    compile_model(model)
    before = accuracy(model, x2_test, y2_test)
    model.fit(x2, y2, epochs=3, batch_size=64)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    after = accuracy(model, x2_test, y2_test)
    print(f"   shifted task accuracy: {before:.3f} -> {after:.3f}, "
          f"training {trainable} adapter values instead of {VOCAB * DIM} table values")
    rows.append(("int4 + LoRA, shifted task", after, table_bytes(words)))

    print("\n4. Merging the adapter into the int4 table for serving, saving, reloading")
    words.merge_lora()
    compile_model(model)
    merged = accuracy(model, x2_test, y2_test)
    rows.append(("int4, merged, shifted task", merged, table_bytes(words)))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "merged.keras")
        model.save(path)
        backend, reloaded = reload_elsewhere(path, x2_test, y2_test)
    if backend:
        rows.append((f"the saved file, on {backend}", reloaded, table_bytes(words)))
    else:
        print("   (install a second backend to see the file reload there)")

    print(f"\n{'state':<32}{'test accuracy':>14}{'table bytes':>14}")
    for name, value, size in rows:
        print(f"{name:<32}{value:>14.3f}{size:>14,}")


if __name__ == "__main__":
    main()

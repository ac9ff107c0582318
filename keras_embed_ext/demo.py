"""A tour of keras_embed_ext on data it generates: `python -m keras_embed_ext.demo`.

Trains a bag-of-words classifier, quantizes its table to int8 and int4, then
fine-tunes a LoRA adapter on the int4 table for a shifted task.
"""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_embed_ext as kee  # noqa: E402

VOCAB, LENGTH, DIM = 2000, 12, 32


def make_data(rng, n, positive_ids):
    """Padded id sequences; the label says whether most ids are 'positive' words."""
    lengths = rng.integers(3, LENGTH + 1, size=n)
    ids = rng.integers(1, VOCAB, size=(n, LENGTH))
    ids[np.arange(LENGTH) >= lengths[:, None]] = 0
    votes = np.where(ids == 0, 0, np.where(np.isin(ids, positive_ids), 1, -1)).sum(axis=1)
    return ids, (votes > 0).astype("float32")


def build_model():
    inputs = keras.Input((LENGTH,), dtype="int32")
    bags = kee.Embedding(VOCAB, DIM, mask_zero=True, combiner="mean", name="words")(inputs)
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Dense(32, activation="relu")(bags))
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy", metrics=["accuracy"])
    return model


def accuracy(model, x, y):
    return float(model.evaluate(x, y, verbose=0)[1])


def main():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    print(f"keras_embed_ext {kee.__version__} on keras {keras.__version__}, backend {keras.backend.backend()}")
    positive = rng.choice(np.arange(1, VOCAB), VOCAB // 2, replace=False)
    x, y = make_data(rng, 6000, positive)
    x_test, y_test = make_data(rng, 1000, positive)

    model = build_model()
    print(f"\n1. Training a bag-of-words classifier: Embedding({VOCAB}, {DIM}, combiner='mean', mask_zero=True)")
    model.fit(x, y, epochs=4, batch_size=64, validation_split=0.1)
    print(f"   float32 table: test accuracy {accuracy(model, x_test, y_test):.3f}")

    words = model.get_layer("words")
    print("\n2. Quantizing the table (only the looked-up rows are decoded in each call)")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "float.keras")
        model.save(path)
        for mode in ("int8", "int4"):
            quantized = keras.saving.load_model(path)
            quantized.get_layer("words").quantize(mode)
            print(f"   {mode}: test accuracy {accuracy(quantized, x_test, y_test):.3f}")
    words.quantize("int4")

    print("\n3. Fine-tuning a LoRA adapter (rank 4) on the int4 table for a shifted task")
    shifted = np.setxor1d(positive, rng.choice(np.arange(1, VOCAB), 300, replace=False))
    x2, y2 = make_data(rng, 6000, shifted)
    x2_test, y2_test = make_data(rng, 1000, shifted)
    words.enable_lora(4)
    for layer in model.layers[2:]:
        layer.trainable = False
    model.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy", metrics=["accuracy"])
    before = accuracy(model, x2_test, y2_test)
    model.fit(x2, y2, epochs=3, batch_size=64)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    print(f"   shifted task accuracy: {before:.3f} -> {accuracy(model, x2_test, y2_test):.3f}, "
          f"training {trainable} adapter values instead of {VOCAB * DIM} table values")
    words.merge_lora()
    print(f"   merged into the int4 table: test accuracy {accuracy(model, x2_test, y2_test):.3f}")


if __name__ == "__main__":
    main()

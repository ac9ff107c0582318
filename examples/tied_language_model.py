"""A tiny language model whose input and output embeddings are one table.

Trains on the docstrings of a few standard-library modules (text that ships with
Python): the mean of the last 4 word vectors predicts the next word through
`Embedding.attend`, so one `(V, D)` table serves as input and output layer.
Run: `python examples/tied_language_model.py` (any KERAS_BACKEND).
"""

import collections
import inspect
import re

import keras
import numpy as np

import keras_embed_ext as kee

VOCAB, DIM, CONTEXT = 600, 48, 4
MODULES = ("collections", "functools", "itertools", "json", "re", "pathlib", "argparse", "textwrap")


def corpus_words():
    words = []
    for name in MODULES:
        module = __import__(name)
        for _, obj in inspect.getmembers(module):
            words += re.findall(r"[a-z]+", (inspect.getdoc(obj) or "").lower())
    return words


def windows(words):
    """(context ids, next id) pairs; id 0 is padding, 1 is an unknown word."""
    common = [w for w, _ in collections.Counter(words).most_common(VOCAB - 2)]
    index = {w: i + 2 for i, w in enumerate(common)}
    ids = np.array([index.get(w, 1) for w in words])
    starts = np.arange(len(ids) - CONTEXT)
    return ids[starts[:, None] + np.arange(CONTEXT)], ids[starts + CONTEXT]


class TiedLanguageModel(keras.Model):
    def __init__(self):
        super().__init__()
        self.words = kee.Embedding(VOCAB, DIM, combiner="mean", mask_zero=True)
        self.mix = keras.layers.Dense(DIM, activation="tanh")

    def call(self, context):
        return self.words.attend(self.mix(self.words(context)))


def main():
    keras.utils.set_random_seed(0)
    x, y = windows(corpus_words())
    print(f"{len(x)} training windows from the docstrings of {', '.join(MODULES)}")
    model = TiedLanguageModel()
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, batch_size=256, epochs=6, verbose=2)
    losses = history.history["loss"]
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; one table of {VOCAB}x{DIM} is both input and output layer")


if __name__ == "__main__":
    main()

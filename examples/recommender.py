"""A tiny two-tower recommender on generated multi-hot features.

Each user is a bag of previously seen items (padded with 0, of varying length);
the model scores a candidate item by the dot product of the user's bag vector
(`combiner="mean"`, `mask_zero=True`) and the candidate's vector. Both item
tables are trained by their own row-wise Adagrad (`sparse_optimizer=`), which
updates only the rows a batch looks up, so a step costs the same at any catalogue
size; the model's optimizer trains the rest. Run: `python examples/recommender.py`
(any KERAS_BACKEND).
"""

import keras
import numpy as np

import keras_embed_ext as kee

ITEMS, DIM, HISTORY, TOPICS = 5000, 32, 20, 10


def make_data(rng, n):
    """Users like items of their topic; positives share it, negatives are random."""
    topic_of = rng.integers(0, TOPICS, ITEMS)
    topic_of[0] = -1  # id 0 is padding
    by_topic = [np.flatnonzero(topic_of == t) for t in range(TOPICS)]
    users = rng.integers(0, TOPICS, n)
    lengths = rng.integers(1, HISTORY + 1, n)
    history = np.zeros((n, HISTORY), "int32")
    for i, (topic, length) in enumerate(zip(users, lengths)):
        history[i, :length] = rng.choice(by_topic[topic], length)
    positive = rng.random(n) < 0.5
    candidates = np.where(positive, [rng.choice(by_topic[t]) for t in users], rng.integers(1, ITEMS, n))
    labels = (topic_of[candidates] == users).astype("float32")
    return history, candidates[:, None].astype("int32"), labels


def main():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    history, candidates, labels = make_data(rng, 20000)
    row_wise = kee.optimizers.RowwiseAdagrad(learning_rate=0.05)
    seen_items = kee.Embedding(ITEMS, DIM, mask_zero=True, combiner="mean", sparse_optimizer=row_wise)
    candidate_items = kee.Embedding(ITEMS, DIM, combiner="sum", sparse_optimizer=row_wise)
    seen = keras.Input((HISTORY,), dtype="int32")
    candidate = keras.Input((1,), dtype="int32")
    # A bag of one id is its row.
    score = keras.layers.Dot(axes=-1)([seen_items(seen), candidate_items(candidate)])
    model = keras.Model([seen, candidate], keras.layers.Activation("sigmoid")(score))
    model.compile(keras.optimizers.Adam(5e-3), "binary_crossentropy", metrics=["accuracy"])
    result = model.fit([history, candidates], labels, batch_size=256, epochs=5, validation_split=0.1, verbose=2)
    losses = result.history["loss"]
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}, validation accuracy {result.history['val_accuracy'][-1]:.3f}")


if __name__ == "__main__":
    main()

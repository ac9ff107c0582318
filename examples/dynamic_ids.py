"""A model trained day after day on ids that keep arriving: a dynamic table.

Each "day" brings examples of the live user ids (raw 64-bit-like numbers, not
`0..V-1`), a fifth of which are new that day, each user with a score of their
own. `kee.Embedding(..., dynamic=...)` gives a new id a row the first time a
training step sees it and, when the table is full, frees the row of the id unseen
the longest (LRU); `predict` reads zeros for an id it does not hold. Each day's
loss is measured on that day's examples before training on them: the part the
model has seen before drops, new ids keep arriving. Run:
`python examples/dynamic_ids.py` (any KERAS_BACKEND).
"""

import keras
import numpy as np

import keras_embed_ext as kee

LIVE, DAYS, PER_DAY, NEW_A_DAY = 4000, 6, 40_000, 0.2


def days(rng):
    """Each day's `(ids, scores)`: users with Zipf-like activity, 20% of them new."""
    # Keys beyond int32 where the backend has int64 tensors (JAX: with x64 only).
    high = 2**31 - 1 if keras.backend.backend() == "jax" else 2**62
    live = rng.integers(-high, high, LIVE)
    score = {}
    for _ in range(DAYS):
        for user in live:
            score.setdefault(int(user), rng.standard_normal())
        activity = 1.0 / np.arange(1, LIVE + 1) ** 0.8
        ids = rng.choice(live, PER_DAY, p=activity / activity.sum())
        yield ids, np.array([score[int(u)] for u in ids], "float32")[:, None]
        live = live.copy()
        live[rng.choice(LIVE, int(NEW_A_DAY * LIVE), replace=False)] = rng.integers(-high, high, int(NEW_A_DAY * LIVE))


def main():
    rng = np.random.default_rng(0)
    key_dtype = "int32" if keras.backend.backend() == "jax" else "int64"
    users = kee.Embedding(int(1.25 * LIVE), 8, dynamic=kee.DynamicIds(eviction="lru"),
                          sparse_optimizer=kee.optimizers.Adagrad(0.5))
    model = keras.Sequential([keras.Input((1,), dtype=key_dtype), users, keras.layers.Flatten(), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    losses = []
    for day, (ids, scores) in enumerate(days(rng)):
        ids = ids.astype(key_dtype)[:, None]
        losses.append(model.evaluate(ids, scores, verbose=0, batch_size=4096))
        model.fit(ids, scores, batch_size=256, epochs=1, verbose=0)
        print(f"day {day + 1}: loss before training on it {losses[-1]:.3f}, ids held {len(users.id_map()[0])}")
    print(f"loss {losses[1]:.3f} -> {losses[-1]:.3f}")


if __name__ == "__main__":
    main()

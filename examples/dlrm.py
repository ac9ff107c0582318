"""A DLRM-style click model on generated data, its tables in one `kee.DistributedEmbedding`.

Eight categorical features over six tables (two features share the item table, one
is a bag of recently clicked items), four numeric features. The numeric features go
through a bottom MLP; the model crosses every pair of feature vectors with a dot
product, as DLRM does, and a top MLP scores the click. Each table is trained inside
`fit` by the optimizer its `TableConfig` names (row-wise Adagrad, Adagrad or FTRL),
updating only the rows a batch looks up; Adam trains the MLPs. The tables of one
dimension and optimizer are stacked into one variable. Run:
`python examples/dlrm.py` (any KERAS_BACKEND).
"""

import keras
import numpy as np

import keras_embed_ext as kee

DIM, BATCH, RECENT, NUMERIC = 16, 256, 5, 4
SIZES = {"user": 1000, "item": 5000, "category": 10, "city": 300, "device": 8, "hour": 24}


def feature_configs():
    tables = {
        name: kee.TableConfig(name, size, DIM, combiner="mean",
                              optimizer=kee.optimizers.RowwiseAdagrad(0.01) if size > 1000 else
                              keras.optimizers.Ftrl(0.01) if name == "device" else keras.optimizers.Adagrad(0.01))
        for name, size in SIZES.items()
    }

    def feature(name, table, bag=None):
        return kee.FeatureConfig(name, tables[table], (BATCH,) if bag is None else (BATCH, bag), (BATCH, DIM))

    return {
        "user": feature("user", "user"),
        "item": feature("item", "item"),
        "recent_items": feature("recent_items", "item", RECENT),  # shares the item table
        "category": feature("category", "category"),
        "user_city": feature("user_city", "city"),
        "item_city": feature("item_city", "city"),  # shares the city table
        "device": feature("device", "device"),
        "hour": feature("hour", "hour"),
    }


def make_data(rng, n):
    """Clicks follow a hidden affinity between users and item categories, the hour and
    the distance of the cities, plus one numeric feature."""
    columns = {name: rng.integers(0, SIZES[table], n) for name, table in
               [("user", "user"), ("item", "item"), ("user_city", "city"), ("item_city", "city"),
                ("device", "device"), ("hour", "hour")]}
    category_of = rng.integers(0, SIZES["category"], SIZES["item"])
    columns["category"] = category_of[columns["item"]]
    columns["recent_items"] = rng.integers(0, SIZES["item"], (n, RECENT))
    numeric = rng.standard_normal((n, NUMERIC)).astype("float32")
    liked = rng.integers(0, SIZES["category"], SIZES["user"])
    logit = (2.5 * (liked[columns["user"]] == columns["category"]) + 1.0 * (columns["hour"] >= 18)
             + 0.8 * (columns["user_city"] % 10 == columns["item_city"] % 10) + numeric[:, 0] - 1.5)
    clicks = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("float32")
    return {**{k: v.astype("int32") for k, v in columns.items()}, "numeric": numeric}, clicks


def build_model():
    configs = feature_configs()
    ids = {name: keras.Input(config.input_shape[1:], batch_size=BATCH, dtype="int32", name=name)
           for name, config in configs.items()}
    numeric = keras.Input((NUMERIC,), batch_size=BATCH, name="numeric")
    embedded = kee.DistributedEmbedding(configs)(ids)
    bottom = keras.layers.Dense(DIM, activation="relu")(keras.layers.Dense(32, activation="relu")(numeric))
    vectors = keras.ops.stack([bottom, *(embedded[name] for name in sorted(embedded))], axis=1)
    crosses = keras.ops.matmul(vectors, keras.ops.transpose(vectors, (0, 2, 1)))  # every pair's dot product
    upper = np.triu_indices(vectors.shape[1], k=1)
    pairs = keras.ops.take(keras.ops.reshape(crosses, (-1, vectors.shape[1] ** 2)), upper[0] * vectors.shape[1] + upper[1],
                           axis=1)
    top = keras.layers.Dense(64, activation="relu")(keras.layers.Concatenate()([bottom, pairs]))
    model = keras.Model({**ids, "numeric": numeric}, keras.layers.Dense(1, activation="sigmoid")(top))
    model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy", metrics=[keras.metrics.AUC(name="auc")])
    return model


def main():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y = make_data(rng, 160 * BATCH)
    model = build_model()
    result = model.fit(x, y, batch_size=BATCH, epochs=3, validation_split=0.2, verbose=2)
    losses = result.history["loss"]
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}, validation AUC {result.history['val_auc'][-1]:.3f}")
    print(f"parameters: {model.count_params():,} (the tables' optimizer state is not among them)")


if __name__ == "__main__":
    main()

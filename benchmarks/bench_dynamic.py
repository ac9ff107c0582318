"""Dynamic tables (`Embedding(dynamic=...)`): what the key map costs, and what it is for.

Speed (one CPU thread, contenders interleaved in one process, medians of rounds), at
capacities 100k and 4M, D = 32, Adagrad:
- lookups of 65,536 resident keys (compiled: `jax.jit`, `tf.function`; torch eager)
  against the static table's lookup of the same rows;
- a `train_on_batch` step of 512 bags of 8 keys, every key resident, and every key new,
  against the static table's step on random rows;
- the key map's bytes per row.

Quality: a stream of 10 "days" over 20,000 live keys, 20% of them replaced by new keys
each day, each key with its own target. Each day trains one epoch on 100,000 examples
(Zipf-like popularity); the loss is measured on the next day's examples before they
are trained on. Tables of 25,000 rows (1.25 a live key): dynamic (LRU),
`keras.layers.Hashing(25_000)` + a table, and `keras.layers.IntegerLookup` adapted on
day 1 + a table of its vocabulary (each table trained by the same row-wise Adagrad).

    python benchmarks/bench_dynamic.py                 # every backend, speed and quality
    python benchmarks/bench_dynamic.py --backends jax --parts quality
    python benchmarks/bench_dynamic.py --parts speed --capacities 16384 --resident 4096 --rounds 1  # a smoke run
"""

import argparse
import json
import os
import sys

from workers import rows_from_workers
from workers import write_table

HERE = os.path.dirname(os.path.abspath(__file__))
DIM, BAGS, BAG = 32, 512, 8
RESIDENT = 65_536
CAPACITIES = (100_000, 4_000_000)
DAYS, LIVE, TURNOVER, EXAMPLES = 10, 20_000, 0.2, 100_000
ROWS = 25_000  # the tables of the quality stream: 1.25 rows per live key


def _lookup_fn(layer):
    from common import BACKEND

    if BACKEND == "jax":
        import jax

        trainable = [v.value for v in layer.trainable_variables]
        non_trainable = [v.value for v in layer.non_trainable_variables]

        @jax.jit
        def lookup(trainable, non_trainable, ids):
            return layer.stateless_call(trainable, non_trainable, ids)[0]

        return lambda ids: lookup(trainable, non_trainable, ids)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(lambda ids: layer(ids))
    return lambda ids: layer(ids)


def _model(layer):
    import keras

    model = keras.Sequential([keras.Input((BAG,), dtype="int64" if _wide() else "int32"), layer,
                              keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    return model


def _wide():
    from common import BACKEND

    if BACKEND != "jax":
        return True
    import jax

    return jax.config.jax_enable_x64


def speed(capacity, resident_count=RESIDENT, rounds=7):
    import keras
    import numpy as np

    import keras_embed_ext as kee
    from common import BACKEND, pin_one_thread, rounds_median_ms, to_device

    pin_one_thread()
    rng = np.random.default_rng(0)
    high = 2**62 if _wide() else 2**31 - 1
    resident = rng.integers(-high, high, resident_count)
    dynamic = kee.Embedding(capacity, DIM, dynamic=kee.DynamicIds(eviction="lru"), combiner="mean")
    dynamic(resident.reshape(-1, BAG), training=True)  # every key admitted
    keys, rows = dynamic.id_map()
    static = kee.Embedding(capacity, DIM, combiner="mean", sparse_optimizer="adagrad")
    static.build()
    key_dtype = "int64" if _wide() else "int32"
    lookup_keys = to_device(keys.astype(key_dtype).reshape(-1, 1))
    lookup_rows = to_device(rows.astype("int32").reshape(-1, 1))
    plain_dynamic = kee.Embedding(capacity, DIM, dynamic=True)
    plain_dynamic.build()
    for name in ("keys", "scores", "clock"):  # copies: a train step may donate the source's buffers
        source = getattr(dynamic._table.key_map, name)
        getattr(plain_dynamic._table.key_map, name).assign(np.array(keras.ops.convert_to_numpy(source)))
    plain_static = kee.Embedding(capacity, DIM)
    plain_static.build()
    dynamic_lookup, static_lookup = _lookup_fn(plain_dynamic), _lookup_fn(plain_static)
    resident_bags = keys.astype(key_dtype)[: BAGS * BAG].reshape(BAGS, BAG)
    fresh = iter(rng.integers(-high, high, (10_000, BAGS, BAG)).astype(key_dtype))
    targets = rng.standard_normal((BAGS, 1)).astype("float32")
    static_rows = rng.integers(0, capacity, (BAGS, BAG)).astype("int32")
    dynamic_model, static_model = _model(dynamic), _model(static)
    new_model = _model(kee.Embedding(capacity, DIM, dynamic=kee.DynamicIds(eviction="lru"), combiner="mean"))
    lookup_dynamic_ms, lookup_static_ms, resident_ms, new_ms, static_ms = rounds_median_ms([
        lambda: dynamic_lookup(lookup_keys),
        lambda: static_lookup(lookup_rows),
        lambda: dynamic_model.train_on_batch(resident_bags, targets),
        lambda: new_model.train_on_batch(next(fresh), targets),
        lambda: static_model.train_on_batch(static_rows, targets),
    ], rounds=rounds)
    key_map = dynamic._table.key_map.variables()[:3]  # keys, scores, admitted
    extra = dynamic._table.row_training.renewed_at
    map_bytes = sum(np.dtype(keras.backend.standardize_dtype(v.dtype)).itemsize * np.prod(v.shape) for v in key_map)
    map_bytes += 0 if extra is None else 4 * extra.shape[0]
    return {"backend": BACKEND, "capacity": capacity, "lookup_dynamic_ms": lookup_dynamic_ms,
            "lookup_static_ms": lookup_static_ms, "step_resident_ms": resident_ms, "step_new_ms": new_ms,
            "step_static_ms": static_ms, "map_bytes_per_row": map_bytes / capacity}


def _stream(seed=0):
    """Each day's `(keys, targets)`: examples over the live keys, 20% of which are new."""
    import numpy as np

    rng = np.random.default_rng(seed)
    high = 2**31 - 1
    live = rng.integers(0, high, LIVE)
    values = {}
    days = []
    for _ in range(DAYS + 1):
        for key in live:
            values.setdefault(int(key), rng.standard_normal())
        popularity = 1.0 / np.arange(1, LIVE + 1) ** 0.8
        chosen = rng.choice(live, EXAMPLES, p=popularity / popularity.sum())
        days.append((chosen, np.array([values[int(k)] for k in chosen], "float32")[:, None]))
        retired = rng.choice(LIVE, int(TURNOVER * LIVE), replace=False)
        live = live.copy()
        live[retired] = rng.integers(0, high, len(retired))
        rng.shuffle(live)
    return days


def quality():
    import keras
    import numpy as np

    import keras_embed_ext as kee
    from common import BACKEND

    keras.utils.set_random_seed(0)
    days = _stream()
    dtype = "int64" if _wide() else "int32"

    def model(table):
        built = keras.Sequential([keras.Input((1,), dtype=dtype), table, keras.layers.Flatten(), keras.layers.Dense(1)])
        built.compile(keras.optimizers.Adam(1e-3), "mse")
        return built

    def table(dynamic=False, rows=ROWS):
        return kee.Embedding(rows, 8, dynamic=kee.DynamicIds(eviction="lru") if dynamic else False,
                             sparse_optimizer=kee.optimizers.Adagrad(0.5), invalid_ids="zero")

    # keras' preprocessing layers run in the input pipeline (they need TensorFlow), as in a tf.data map.
    hashing = keras.layers.Hashing(ROWS)
    lookup = keras.layers.IntegerLookup()
    lookup.adapt(days[0][0])
    contenders = {
        "dynamic": (model(table(dynamic=True)), lambda keys: keys.astype(dtype)),
        "Hashing": (model(table()), lambda keys: np.asarray(hashing(keys)).astype(dtype)),
        "IntegerLookup (day 1)": (model(table(rows=lookup.vocabulary_size())),
                                  lambda keys: np.asarray(lookup(keys)).astype(dtype)),
    }
    losses = {name: [] for name in contenders}
    for day in range(DAYS):
        keys, targets = days[day]
        next_keys, next_targets = days[day + 1]
        for name, (built, prepare) in contenders.items():
            built.fit(prepare(keys)[:, None], targets, batch_size=256, epochs=1, verbose=0, shuffle=False)
            losses[name].append(float(built.evaluate(prepare(next_keys)[:, None], next_targets, verbose=0,
                                                     batch_size=4096)))
    return [{"backend": BACKEND, "contender": name, "losses": values} for name, values in losses.items()]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch"])
    parser.add_argument("--parts", nargs="+", default=["speed", "quality"])
    parser.add_argument("--capacities", nargs="+", type=int, default=list(CAPACITIES))
    parser.add_argument("--resident", type=int, default=RESIDENT, help="keys a lookup finds")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--worker", nargs="+")
    args = parser.parse_args()
    if args.worker:
        sys.path.insert(0, HERE)
        part = args.worker[0]
        rows = [speed(c, args.resident, args.rounds) for c in args.capacities] if part == "speed" else quality()
        print(json.dumps(rows))
        return
    lines = []
    if "speed" in args.parts:
        sizes = ["--capacities", *map(str, args.capacities), "--resident", str(args.resident), "--rounds", str(args.rounds)]
        rows = rows_from_workers(__file__, args.backends, ["speed", *sizes])
        table = ["| backend | capacity | lookup: dynamic / static ms | step, all resident / static | "
                 "step, all new / static | key map, bytes a row |", "|---|---:|---:|---:|---:|---:|"]
        for r in rows:
            table.append(
                f"| {r['backend']} | {r['capacity']:,} | {r['lookup_dynamic_ms']:.2f} / {r['lookup_static_ms']:.2f} "
                f"({r['lookup_dynamic_ms'] / r['lookup_static_ms']:.2f}x) | {r['step_resident_ms']:.1f} / "
                f"{r['step_static_ms']:.1f} ({r['step_resident_ms'] / r['step_static_ms']:.2f}x) | "
                f"{r['step_new_ms']:.1f} ({r['step_new_ms'] / r['step_static_ms']:.2f}x) | "
                f"{r['map_bytes_per_row']:.1f} |")
        lines.append("\n".join(table))
    if "quality" in args.parts:
        rows = rows_from_workers(__file__, args.backends, ["quality"])
        table = ["| backend | table | " + " | ".join(f"day {d + 2}" for d in range(DAYS)) + " |",
                 "|---|---|" + "---:|" * DAYS]
        for r in rows:
            table.append(f"| {r['backend']} | {r['contender']} | " + " | ".join(f"{x:.3f}" for x in r["losses"]) + " |")
        lines.append("\n".join(table))
    title = ("# Dynamic tables\n\n`python benchmarks/bench_dynamic.py`: speed (ms, one CPU thread, medians of 7 "
             "interleaved rounds) and held-out MSE on each next day of a stream with 20% new keys a day (see "
             "the script's docstring).")
    write_table(args.out, "dynamic.md", title, "\n\n".join(lines))


if __name__ == "__main__":
    main()

"""A DLRM-like recommender's training step: `kee.DistributedEmbedding` against keras-rs'
`DistributedEmbedding` and one embedding layer per feature.

The 26 categorical features of Criteo Kaggle (their cardinalities capped at 1M rows:
5.6M rows in all), D = 16: 20 features of one id and 6 bags of 8 ids, 13 dense
features, an MLP 256-128-1 over the concatenation, batch 1,024, binary
cross-entropy; Adam for the model, Adagrad(0.05) for the tables. Contenders, built in
one process and timed interleaved, a block of steps each per round, one thread:

- `kee`: `kee.DistributedEmbedding`, its tables stacked; `kee_small`: the same with
  tables 10x smaller (the step should not follow the table size);
- `kee_per_feature`: one `kee.Embedding(sparse_optimizer=Adagrad(0.05))` per feature;
- `keras_per_feature`: one `keras.layers.Embedding` per feature (mean pooling for the
  bags), trained by the model's Adam;
- `keras_rs`: keras-rs' `DistributedEmbedding` with the same configs (when installed);
- `mlp`: the model without tables, what the rest of the step costs;
- `kee_dynamic` (not run by default): `kee` with every table dynamic (`TableConfig(dynamic=True)`, capacity
  the capped cardinality) and raw keys, Zipf-distributed over 2**31 values per feature;
- tables alone (the loss: the pooled vectors times a fixed upstream gradient), on
  torch: `kee_tables` (`kee.DistributedEmbedding`; `kee_tables_rowwise` with
  `kee.optimizers.RowwiseAdagrad`, FBGEMM's row-wise rule; `kee_tables_adam` with
  Adam rows), `fbgemm_adagrad` and `fbgemm_rowwise_adagrad` (FBGEMM's fused CPU TBE,
  when `fbgemm_gpu` imports), `torch_bags` and `torch_bags_stacked`
  (`EmbeddingBag(sparse=True)` per table, or one for all, with `torch.optim.Adagrad`;
  `torch_bags_stacked_adam` with `torch.optim.SparseAdam`); and `fbgemm_mlp`, FBGEMM
  with the same MLP in torch (`torch_tables.py`).

Wall and process CPU time are both reported, with the machine's load average. Interleaved in one
process, each contender's step runs after the others' and pays for what they leave in the caches; `--alone N`
times each contender in a process of its own instead, N processes each, alternating, and reports the median
of each process's medians.

    KERAS_BACKEND=jax python benchmarks/bench_collection.py [--scale 0.01] [--rounds 5]
    KERAS_BACKEND=jax python benchmarks/bench_collection.py --contenders kee kee_dynamic --alone 3
"""

import argparse
import gc
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

CRITEO = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992, 5461306, 10,
          5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]
CAP, DIM, BAGS_FROM, BAG, DENSE = 1_000_000, 16, 20, 8, 13
CONTENDERS = ("kee", "kee_small", "kee_per_feature", "keras_per_feature", "keras_rs", "mlp")
TORCH_TABLES = ("kee_tables", "fbgemm_adagrad", "fbgemm_rowwise_adagrad", "torch_bags", "torch_bags_stacked",
                "fbgemm_mlp", "torch_bags_stacked_adam")


def cardinalities(scale):
    return [max(2, int(min(c, CAP) * scale)) for c in CRITEO]


def feature_configs(module, sizes, batch, dynamic=False, optimizer=None):
    """`{name: FeatureConfig}` of `module` (keras_embed_ext or keras_rs.layers), the
    tables trained by `optimizer()` (Adagrad(0.05) by default)."""
    import keras

    make_optimizer = optimizer or (lambda: keras.optimizers.Adagrad(0.05))
    configs = {}
    for i, size in enumerate(sizes):
        table = module.TableConfig(f"t{i}", size, DIM, optimizer=make_optimizer(), combiner="mean",
                                   **({"dynamic": True} if dynamic else {}))
        shape = (batch,) if i < BAGS_FROM else (batch, BAG)
        configs[f"c{i:02d}"] = module.FeatureConfig(f"c{i:02d}", table, shape, (batch, DIM))
    return configs


def names_and_tables(sizes):
    names = [f"c{i:02d}" for i in range(len(sizes))]
    return names, {name: i for i, name in enumerate(names)}


def build_step(contender, sizes, batch):
    """`step(x, y)`: one training step of `contender`."""
    if contender.startswith(("fbgemm", "torch_bags")):
        import torch_tables

        names, table_of = names_and_tables(sizes)
        if contender.startswith("fbgemm"):
            return torch_tables.fbgemm(sizes, names, DIM, batch, table_of, rowwise="rowwise" in contender,
                                       mlp=contender.endswith("mlp"), dense_width=DENSE)
        return torch_tables.embedding_bags(sizes, names, DIM, batch, table_of, stacked="stacked" in contender,
                                           adam=contender.endswith("adam"))
    model = build(contender, sizes, batch)
    if contender.startswith("kee_tables"):
        upstream = np.random.default_rng(0).standard_normal((batch, len(sizes) * DIM)).astype("float32")
        return lambda x, y: model.train_on_batch({k: v for k, v in x.items() if k != "numeric"}, upstream)
    return model.train_on_batch


def build(contender, sizes, batch):
    import keras

    import keras_embed_ext as kee

    if contender.startswith("kee_tables"):
        inputs = {f"c{i:02d}": keras.Input((BAG,) if i >= BAGS_FROM else (), dtype="int32", name=f"c{i:02d}")
                  for i in range(len(sizes))}
        # FBGEMM's row-wise rule with its learning rate and epsilon, or `SparseAdam`'s defaults (torch_tables.py).
        optimizer = {"rowwise": lambda: kee.optimizers.RowwiseAdagrad(0.05, epsilon=1e-7),
                     "adam": lambda: keras.optimizers.Adam(0.001, epsilon=1e-8)}.get(contender.split("_")[-1])
        outputs = kee.DistributedEmbedding(feature_configs(kee, sizes, batch, optimizer=optimizer))(inputs)
        model = keras.Model(inputs, keras.layers.Concatenate()([outputs[name] for name in sorted(outputs)]))
        model.compile(keras.optimizers.Adam(0.001), lambda upstream, pooled: keras.ops.sum(pooled * upstream))
        return model

    inputs = {f"c{i:02d}": keras.Input((BAG,) if i >= BAGS_FROM else (), dtype="int32", name=f"c{i:02d}")
              for i in range(len(sizes))}
    dense = keras.Input((DENSE,), name="numeric")
    if contender == "mlp":
        embedded = []
    elif contender in ("kee", "kee_small", "kee_dynamic"):
        outputs = kee.DistributedEmbedding(feature_configs(kee, sizes, batch, contender == "kee_dynamic"))(inputs)
        embedded = [outputs[name] for name in sorted(outputs)]
    elif contender == "keras_rs":
        import keras_rs

        outputs = keras_rs.layers.DistributedEmbedding(feature_configs(keras_rs.layers, sizes, batch))(inputs)
        embedded = [outputs[name] for name in sorted(outputs)]
    else:
        embedded = []
        for i, size in enumerate(sizes):
            ids = inputs[f"c{i:02d}"]
            if contender == "kee_per_feature":
                layer = kee.Embedding(size, DIM, combiner="mean" if i >= BAGS_FROM else None,
                                      sparse_optimizer=keras.optimizers.Adagrad(0.05))
                embedded.append(layer(ids))
            else:
                rows = keras.layers.Embedding(size, DIM)(ids)
                embedded.append(keras.ops.mean(rows, axis=1) if i >= BAGS_FROM else rows)
    hidden = keras.layers.Concatenate()([dense, *embedded])
    for width in (256, 128):
        hidden = keras.layers.Dense(width, activation="relu")(hidden)
    model = keras.Model({**inputs, "numeric": dense}, keras.layers.Dense(1, activation="sigmoid")(hidden))
    model.compile(keras.optimizers.Adam(0.001), "binary_crossentropy")
    return model


def batches(sizes, batch, count=4, seed=0, raw_keys=False):
    """Ids of each table's rows; with `raw_keys`, keys over 2**31 values, Zipf-distributed."""
    rng = np.random.default_rng(seed)

    def ids(i, size, shape):
        if not raw_keys:
            return rng.integers(0, size, shape)
        ranks = np.minimum(rng.zipf(1.2, shape), 2**31 - 2)  # popular keys first, a long tail
        return (ranks * (2654435761 + 2 * i) + i) % (2**31 - 1)

    out = []
    for _ in range(count):
        x = {f"c{i:02d}": ids(i, size, (batch, BAG) if i >= BAGS_FROM else (batch,)).astype("int32")
             for i, size in enumerate(sizes)}
        x["numeric"] = rng.standard_normal((batch, DENSE)).astype("float32")
        out.append((x, rng.integers(0, 2, (batch, 1)).astype("float32")))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="table sizes times this (0.01 for a smoke run)")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4, help="steps per contender in a round")
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS),
                        help=f"also: {', '.join(TORCH_TABLES)}")
    parser.add_argument("--alone", type=int, default=0,
                        help="time each contender in this many processes of its own, alternating")
    args = parser.parse_args()
    if args.alone:
        return _alone(args)

    from common import BACKEND, device_name, peak_memory, pin_one_thread, reset_peak_memory, synchronize

    pin_one_thread()
    import keras

    contenders = [c for c in args.contenders if _available(c)]
    full = cardinalities(args.scale)
    small = cardinalities(args.scale / 10)
    data = {size_key: batches(sizes, args.batch) for size_key, sizes in (("full", full), ("small", small))}
    data["raw"] = batches(full, args.batch, raw_keys=True)
    models, memory = {}, {}
    for contender in contenders:
        sizes_key = _data_key(contender)
        keras.utils.set_random_seed(0)
        step = models[contender] = build_step(contender, small if sizes_key == "small" else full, args.batch)
        for x, y in data[sizes_key][:2]:  # compiling and first-step copies are not a step's cost
            step(x, y)
        gc.collect()
        before = reset_peak_memory()
        for x, y in data[sizes_key]:
            step(x, y)
        memory[contender] = peak_memory() - before
    times = {c: [] for c in contenders}
    cpu_times = {c: [] for c in contenders}
    load = os.getloadavg()[0]
    for _ in range(args.rounds):
        for contender in contenders:
            steps = data[_data_key(contender)]
            start, cpu_start = time.perf_counter(), time.process_time()
            for step in range(args.steps):
                x, y = steps[step % len(steps)]
                synchronize(models[contender](x, y))
            times[contender].append(1e3 * (time.perf_counter() - start) / args.steps)
            cpu_times[contender].append(1e3 * (time.process_time() - cpu_start) / args.steps)
    rows = [{"backend": BACKEND, "device": device_name(), "contender": c, "rows": sum(small if c == "kee_small" else full),
             "ms": float(np.median(times[c])), "min_ms": min(times[c]), "max_ms": max(times[c]),
             "cpu_ms": float(np.median(cpu_times[c])), "mb_added": memory[c]} for c in contenders]
    print(f"backend {BACKEND} on {device_name()}, batch {args.batch}, one thread, ms per training step, median "
          f"(min-max) of {args.rounds} rounds of {args.steps} steps, contenders interleaved; load average "
          f"{load:.2f} (1 min) at the start\n")
    anchor = "fbgemm_adagrad" if "fbgemm_adagrad" in contenders else "kee"
    print(f"| contender | table rows | wall ms per step | CPU ms per step | / {anchor} (CPU) | MB a step adds |")
    print("|---|---:|---|---:|---:|---:|")
    reference = next((r["cpu_ms"] for r in rows if r["contender"] == anchor), float("nan"))
    for r in rows:
        print(f"| {r['contender']} | {r['rows']:,} | {r['ms']:.1f} ({r['min_ms']:.1f}-{r['max_ms']:.1f}) | "
              f"{r['cpu_ms']:.1f} | {r['cpu_ms'] / reference:.2f} | {r['mb_added']:.0f} |")
    print(json.dumps(rows), file=sys.stderr)


def _alone(args):
    """Each contender timed in `args.alone` processes of its own (this script with it
    alone), alternating: the median of the processes' medians, and their spread."""
    import subprocess
    import statistics

    runs = {c: [] for c in args.contenders}
    for _ in range(args.alone):
        for contender in args.contenders:
            command = [sys.executable, os.path.abspath(__file__), "--contenders", contender, "--rounds",
                       str(args.rounds), "--steps", str(args.steps), "--scale", str(args.scale), "--batch",
                       str(args.batch)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            runs[contender] += json.loads(done.stderr.strip().splitlines()[-1])
    print(f"each contender alone in {args.alone} processes, alternating; ms per training step, median (min-max) of "
          f"the processes' medians\n")
    print("| contender | wall ms per step | CPU ms per step | / first (wall) |")
    print("|---|---|---:|---:|")
    first = statistics.median(r["ms"] for r in runs[args.contenders[0]])
    for contender, rows in runs.items():
        wall = [r["ms"] for r in rows]
        print(f"| {contender} | {statistics.median(wall):.1f} ({min(wall):.1f}-{max(wall):.1f}) | "
              f"{statistics.median(r['cpu_ms'] for r in rows):.1f} | {statistics.median(wall) / first:.2f} |")
    print(json.dumps(runs), file=sys.stderr)


def _data_key(contender):
    return {"kee_small": "small", "kee_dynamic": "raw"}.get(contender, "full")


def _available(contender):
    from common import BACKEND

    if contender in TORCH_TABLES[1:] and BACKEND != "torch":
        return False
    if contender.startswith("fbgemm"):
        import torch_tables

        if not torch_tables.has_fbgemm():
            print(f"fbgemm_gpu does not import: no {contender} (benchmarks/requirements-fbgemm.txt)", file=sys.stderr)
            return False
    return contender != "keras_rs" or _has_keras_rs()


def _has_keras_rs():
    try:
        import keras_rs  # noqa: F401
    except ImportError:
        print("keras-rs is not installed: no keras_rs contender", file=sys.stderr)
        return False
    return True


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()

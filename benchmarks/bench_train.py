"""Training-step time and peak memory vs vocabulary size: ours vs keras.layers.Embedding.

Model: ids (256, 16) -> Embedding(V, 256) -> mean over the sequence -> Dense(1), MSE,
trained with `model.train_on_batch` as `model.compile` sets it up by default.
Modes: "lora" (rank-8 adapter, frozen table, Adam), "lora_sgd" (the same with SGD)
and "float" (trainable table, SGD; on TensorFlow the table's gradient stays sparse,
`tf.IndexedSlices`). Each point runs in its own process. Memory is what training
adds on top of the built model: the peak resident set (or GPU memory) during the
steps minus what was resident before them.

    python benchmarks/bench_train.py                         # all backends, V = 10k, 200k, 1M
    python benchmarks/bench_train.py --backends torch --vocab 10000 1000000

With `--sparse-optimizer`, a table trained row-wise (`sparse_optimizer=`): 512 bags of
8 ids -> Embedding(V, 64, combiner="mean") -> Dense(1), one CPU thread, V = 100k, 1M
and 4M, SGD / Adagrad / row-wise Adagrad / Adam. Contenders: keras' layer with keras'
optimizer (Adagrad for row-wise Adagrad), ours with `sparse_optimizer`, and each
backend's native sparse step (`native_sparse.py`); ours and the native step run in one
process, interleaved in rounds (keras' layer, seconds a step at 4M rows, in its own).

    python benchmarks/bench_train.py --sparse-optimizer
"""

import argparse
import gc
import json
import os
import subprocess
import sys

from workers import charts_available, write_table

HERE = os.path.dirname(os.path.abspath(__file__))
BATCH, LENGTH, DIM, RANK = 256, 16, 256, 8


def run_point(vocab, layer_kind, mode):
    sys.path.insert(0, HERE)
    import keras
    import numpy as np

    import keras_embed_ext as kee
    from common import BACKEND, device_name, median_ms, peak_memory, random_table, reset_peak_memory

    cls = kee.Embedding if layer_kind == "ours" else keras.layers.Embedding
    embedding = cls(vocab, DIM)
    embedding.build()
    embedding.set_weights([random_table(vocab, DIM)])
    if mode.startswith("lora"):
        embedding.enable_lora(RANK)
    model = keras.Sequential([keras.Input((LENGTH,), dtype="int32"), embedding,
                              keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(1)])
    optimizer = keras.optimizers.Adam(1e-3) if mode == "lora" else keras.optimizers.SGD(0.1)
    model.compile(optimizer, "mse")
    rng = np.random.default_rng(0)
    x = rng.integers(0, vocab, (BATCH, LENGTH)).astype("int32")
    y = rng.standard_normal((BATCH, 1)).astype("float32")
    gc.collect()
    resident_mb = reset_peak_memory()
    step_ms = median_ms(lambda: model.train_on_batch(x, y), repeats=20, warmup=2, budget_s=30)
    point = {"backend": BACKEND, "device": device_name(), "vocab": vocab, "layer": layer_kind, "mode": mode,
             "step_ms": step_ms, "resident_mb": resident_mb, "training_mb": peak_memory() - resident_mb}
    if BACKEND == "tensorflow" and mode == "float":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model(x))
        point["table_gradient"] = type(tape.gradient(loss, model.trainable_variables[0].value)).__name__
    print(json.dumps(point))


SPARSE_BAGS, SPARSE_BAG, SPARSE_DIM = 512, 8, 64
SPARSE_OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad", "adam")


def run_sparse_points(vocab, contenders, optimizers=SPARSE_OPTIMIZERS):
    """One JSON line per optimizer: the step time of each of `contenders` at `vocab` rows,
    interleaved in rounds when there are several, and the memory each one's steps add
    after two warm-up steps."""
    sys.path.insert(0, HERE)
    from common import BACKEND, device_name, median_ms, peak_memory, pin_one_thread, random_table, reset_peak_memory
    from common import rounds_median_ms, synchronize

    pin_one_thread()
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.integers(0, vocab, (SPARSE_BAGS, SPARSE_BAG)).astype("int32")
    y = rng.standard_normal((SPARSE_BAGS, 1)).astype("float32")
    points = []
    for name in optimizers:
        steps, memory = [], []
        for contender in contenders:
            step = _sparse_step(contender, name, random_table(vocab, SPARSE_DIM), x, y)
            for _ in range(2):  # compiling, and the first step's one-time copies, are not a step's cost
                synchronize(step())
            gc.collect()
            resident_mb = reset_peak_memory()
            for _ in range(3):
                synchronize(step())
            memory.append((resident_mb, peak_memory() - resident_mb))
            steps.append(step)
        if len(steps) > 1:
            times = rounds_median_ms(steps, rounds=7)
        else:
            times = [median_ms(steps[0], repeats=15, warmup=0, budget_s=20)]
        for contender, step_ms, (resident_mb, training_mb) in zip(contenders, times, memory):
            points.append({"backend": BACKEND, "device": device_name(), "vocab": vocab, "layer": contender,
                           "mode": name, "step_ms": step_ms, "resident_mb": resident_mb, "training_mb": training_mb})
            print(json.dumps(points[-1]), file=sys.stderr)
        steps = None
        keras.utils.clear_session()
        gc.collect()
    print(json.dumps(points))


def _sparse_step(contender, name, table, x, y):
    """A training step of `contender` on `table` with optimizer `name`."""
    import keras

    import keras_embed_ext as kee
    from common import BACKEND
    from native_sparse import native_step

    if contender == "native":
        return native_step(BACKEND, table, x, y, name)
    keras_name = "adagrad" if name == "rowwise_adagrad" else name
    if contender == "ours":
        pooled = [kee.Embedding(table.shape[0], SPARSE_DIM, weights=table, combiner="mean", sparse_optimizer=name)]
    else:
        pooled = [keras.layers.Embedding(table.shape[0], SPARSE_DIM, weights=[table]),
                  keras.layers.GlobalAveragePooling1D()]
    model = keras.Sequential([keras.Input((SPARSE_BAG,), dtype="int32"), *pooled, keras.layers.Dense(1)])
    model.compile(keras.optimizers.get({"class_name": keras_name, "config": {"learning_rate": 0.01}}), "mse")
    return lambda: model.train_on_batch(x, y)


def sparse_markdown(points):
    lines = ["| backend | optimizer | V | ours ms | keras ms | native ms | ours / native | keras / ours | "
             "ours at V / ours at smallest V | training MB ours / keras / native |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    index = {(p["backend"], p["mode"], p["vocab"], p["layer"]): p for p in points}
    smallest = min(p["vocab"] for p in points)
    for backend, mode, vocab in sorted({k[:3] for k in index}):
        ours, keras_, native = (index.get((backend, mode, vocab, k)) for k in ("ours", "keras", "native"))
        if not (ours and native):
            continue
        keras_ = keras_ or {"step_ms": float("nan"), "training_mb": float("nan")}  # not run
        first = index.get((backend, mode, smallest, "ours"))
        lines.append(
            f"| {backend} | {mode} | {vocab:,} | {ours['step_ms']:.2f} | {keras_['step_ms']:.1f} | "
            f"{native['step_ms']:.2f} | {ours['step_ms'] / native['step_ms']:.2f}x | "
            f"{keras_['step_ms'] / ours['step_ms']:.0f}x | {ours['step_ms'] / first['step_ms']:.2f}x | "
            f"{ours['training_mb']:.0f} / {keras_['training_mb']:.0f} / {native['training_mb']:.0f} |")
    return "\n".join(lines)


def sparse_main(args):
    points = []
    vocabs = args.vocab if args.vocab_given else [100_000, 1_000_000, 4_000_000]
    for backend in args.backends:
        for vocab in vocabs:
            # ours and the native step interleaved in one process; keras' step (seconds at 4M rows) alone
            groups = [[c for c in args.contenders if c != "keras"], [c for c in args.contenders if c == "keras"]]
            for group in filter(None, groups):
                result = subprocess.run(
                    [sys.executable, __file__, "--sparse-point", str(vocab), ",".join(group), *args.optimizers],
                    env={**os.environ, "KERAS_BACKEND": backend, "OMP_NUM_THREADS": "1",
                         "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"},
                    capture_output=True, text=True)
                if result.returncode:
                    sys.exit(f"{backend} {vocab} {group} failed:\n{result.stderr[-3000:]}")
                points += json.loads(result.stdout.strip().splitlines()[-1])
                print(result.stdout.strip().splitlines()[-1], file=sys.stderr)
    title = (f"{SPARSE_BAGS} bags of {SPARSE_BAG} ids, D={SPARSE_DIM}, one CPU thread, "
             "`sparse_optimizer` against keras' layer and the native sparse step")
    write_table(args.out, "train_sparse.md", title, sparse_markdown(points))
    with open(os.path.join(args.out, "train_sparse.json"), "w") as f:
        json.dump(points, f, indent=1)
    if charts_available():
        chart(points, os.path.join(args.out, "train_sparse.png"), layers=(("ours", "-"), ("native", "--"), ("keras", ":")))


def markdown(points):
    lines = ["| backend | device | mode | V | ours step ms | keras step ms | keras / ours | "
             "training MB ours | training MB keras | resident MB ours |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    index = {(p["backend"], p["mode"], p["vocab"], p["layer"]): p for p in points}
    for backend, mode, vocab in sorted({k[:3] for k in index}, key=lambda k: (k[0], k[1], k[2])):
        ours, theirs = index.get((backend, mode, vocab, "ours")), index.get((backend, mode, vocab, "keras"))
        if not (ours and theirs):
            continue
        grad = f" ({ours['table_gradient']})" if "table_gradient" in ours else ""
        lines.append(f"| {backend} | {ours['device']} | {mode}{grad} | {vocab:,} | {ours['step_ms']:.2f} | "
                     f"{theirs['step_ms']:.2f} | {theirs['step_ms'] / ours['step_ms']:.1f}x | "
                     f"{ours['training_mb']:.0f} | {theirs['training_mb']:.0f} | {ours['resident_mb']:.0f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--vocab", nargs="+", type=int)
    parser.add_argument("--modes", nargs="+", default=["lora", "lora_sgd", "float"])
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--sparse-optimizer", action="store_true",
                        help="row-wise table training (sparse_optimizer=) against keras and the native step")
    parser.add_argument("--point", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--sparse-point", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--optimizers", nargs="+", default=list(SPARSE_OPTIMIZERS), help="with --sparse-optimizer")
    parser.add_argument("--contenders", nargs="+", default=["ours", "native", "keras"], help="with --sparse-optimizer")
    args = parser.parse_args()
    args.vocab_given = args.vocab is not None
    if args.point:
        return run_point(int(args.point[0]), args.point[1], args.point[2])
    if args.sparse_point:
        return run_sparse_points(int(args.sparse_point[0]), args.sparse_point[1].split(","),
                                 args.sparse_point[2:] or SPARSE_OPTIMIZERS)
    if args.sparse_optimizer:
        return sparse_main(args)
    args.vocab = args.vocab or [10_000, 200_000, 1_000_000]
    points = []
    for backend in args.backends:
        for mode in args.modes:
            for vocab in args.vocab:
                for layer_kind in ("ours", "keras"):
                    result = subprocess.run([sys.executable, __file__, "--point", str(vocab), layer_kind, mode],
                                            env={**os.environ, "KERAS_BACKEND": backend}, capture_output=True, text=True)
                    if result.returncode:
                        sys.exit(f"{backend} {mode} {vocab} {layer_kind} failed:\n{result.stderr[-3000:]}")
                    points.append(json.loads(result.stdout.strip().splitlines()[-1]))
                    print(json.dumps(points[-1]), file=sys.stderr)
    write_table(args.out, "train.md", f"batch {BATCH}x{LENGTH} ids, D={DIM}, LoRA rank {RANK}", markdown(points))
    if charts_available():
        chart(points, os.path.join(args.out, "train.png"))


def chart(points, path, layers=(("ours", "-"), ("keras", ":"))):
    """Step time vs vocabulary size: a panel per mode, a line per backend and layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = sorted({p["mode"] for p in points})
    fig, axes = plt.subplots(1, len(modes), figsize=(4.5 * len(modes), 4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for backend in sorted({p["backend"] for p in points}):
            for layer_kind, style in layers:
                line = sorted((p["vocab"], p["step_ms"]) for p in points
                              if (p["backend"], p["mode"], p["layer"]) == (backend, mode, layer_kind))
                if line:
                    ax.plot(*zip(*line), style, marker="o", label=f"{layer_kind} {backend}")
        ax.set(xscale="log", yscale="log", xlabel="vocabulary size", ylabel="ms per training step", title=mode)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()

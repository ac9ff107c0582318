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
"""

import argparse
import gc
import json
import os
import subprocess
import sys

from workers import write_table

HERE = os.path.dirname(os.path.abspath(__file__))
BATCH, LENGTH, DIM, RANK = 256, 16, 256, 8


def run_point(vocab, layer_kind, mode):
    sys.path.insert(0, HERE)
    import keras
    import numpy as np

    import keras_embed_ext as kee
    from common import BACKEND, device_name, median_ms, random_table

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


def reset_peak_memory():
    """Starts a new peak and returns the memory in use now, in MB (GPU memory on a GPU)."""
    from common import BACKEND, on_gpu

    if on_gpu() and BACKEND == "torch":
        import torch

        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    if on_gpu():
        import jax

        return jax.devices()[0].memory_stats()["bytes_in_use"] / 2**20
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the resident set's high-water mark (VmHWM)
    return _proc_status_mb("VmRSS")


def peak_memory():
    from common import BACKEND, on_gpu

    if on_gpu() and BACKEND == "torch":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    if on_gpu():
        import jax

        return jax.devices()[0].memory_stats()["peak_bytes_in_use"] / 2**20
    return _proc_status_mb("VmHWM")


def _proc_status_mb(field):
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


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
    parser.add_argument("--vocab", nargs="+", type=int, default=[10_000, 200_000, 1_000_000])
    parser.add_argument("--modes", nargs="+", default=["lora", "lora_sgd", "float"])
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--point", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        return run_point(int(args.point[0]), args.point[1], args.point[2])
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
    chart(points, os.path.join(args.out, "train.png"))


def chart(points, path):
    """Step time vs vocabulary size: a panel per mode, a line per backend and layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = sorted({p["mode"] for p in points})
    fig, axes = plt.subplots(1, len(modes), figsize=(4.5 * len(modes), 4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for backend in sorted({p["backend"] for p in points}):
            for layer_kind, style in (("ours", "-"), ("keras", ":")):
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

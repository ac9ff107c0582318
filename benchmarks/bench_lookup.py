"""Lookup time of keras_embed_ext.Embedding vs keras.layers.Embedding vs the native gather.

For each backend (a subprocess each), each state (float, LoRA, int8, int4, int4+LoRA)
and each vocabulary size, the median time of one lookup of a fixed batch of ids:
JAX under jax.jit, TensorFlow and torch eager. Writes a markdown table and a PNG chart.

    python benchmarks/bench_lookup.py                    # all backends, V = 10k, 200k, 1M
    python benchmarks/bench_lookup.py --backends jax --vocab 10000 200000
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
STATES = ("float", "lora", "int8", "int4", "int4_lora")


def make_layers(cls, vocab, dim, state, table):
    import keras

    layer = cls(vocab, dim)
    layer.build()
    layer.set_weights([table])
    if state.startswith("int"):
        layer.quantize(state.split("_")[0])
    if state.endswith("lora"):
        layer.enable_lora(8)
        layer.lora_embeddings_b.assign(keras.ops.ones((8, dim)) * 0.01)
    return layer


def lookup_fn(layer):
    """One lookup as this backend runs it fastest: jitted on JAX, eager elsewhere."""
    from common import BACKEND

    if BACKEND == "jax":
        import jax

        state = [v.value for v in layer.trainable_variables], [v.value for v in layer.non_trainable_variables]
        jitted = jax.jit(lambda t, n, ids: layer.stateless_call(t, n, ids)[0])
        return lambda ids: jitted(*state, ids)
    if BACKEND == "torch":
        import torch

        def call(ids):
            with torch.no_grad():
                return layer(ids)

        return call
    return layer


def native_fn():
    from common import BACKEND

    if BACKEND == "jax":
        import jax

        return jax.jit(lambda table, ids: table.take(ids, axis=0))
    if BACKEND == "torch":
        import torch

        return lambda table, ids: torch.nn.functional.embedding(ids, table)
    import tensorflow as tf

    return lambda table, ids: tf.gather(table, ids)


def run_backend(vocabs, dim, n_ids, states):
    sys.path.insert(0, HERE)
    import keras
    import numpy as np

    import keras_embed_ext as kee
    from common import BACKEND, device_name, median_ms, random_table, to_device

    rows = []
    ids = to_device(np.random.default_rng(1).integers(0, min(vocabs), size=(n_ids,)).astype("int32"))
    native = native_fn()
    for vocab in vocabs:
        table = random_table(vocab, dim)
        device_table = to_device(table)
        native_ms = median_ms(lambda: native(device_table, ids))
        for state in states:
            ours = lookup_fn(make_layers(kee.Embedding, vocab, dim, state, table))
            theirs = lookup_fn(make_layers(keras.layers.Embedding, vocab, dim, state, table))
            rows.append({"backend": BACKEND, "device": device_name(), "vocab": vocab, "state": state,
                         "ours_ms": median_ms(lambda: ours(ids)), "keras_ms": median_ms(lambda: theirs(ids), repeats=10),
                         "native_ms": native_ms})
    print(json.dumps(rows))


def markdown(rows):
    lines = ["| backend | device | V | state | ours ms | keras ms | native gather ms | ours / our float | keras / ours |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    floats = {(r["backend"], r["vocab"]): r["ours_ms"] for r in rows if r["state"] == "float"}
    for r in rows:
        lines.append(f"| {r['backend']} | {r['device']} | {r['vocab']:,} | {r['state']} | {r['ours_ms']:.3f} | "
                     f"{r['keras_ms']:.3f} | {r['native_ms']:.3f} | {r['ours_ms'] / floats[r['backend'], r['vocab']]:.2f} | "
                     f"{r['keras_ms'] / r['ours_ms']:.1f}x |")
    return "\n".join(lines)


def chart(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = sorted({r["backend"] for r in rows})
    fig, axes = plt.subplots(1, len(backends), figsize=(5 * len(backends), 4), squeeze=False)
    for ax, backend in zip(axes[0], backends):
        for state in STATES:
            for who, style in (("ours", "-"), ("keras", ":")):
                points = sorted((r["vocab"], r[f"{who}_ms"]) for r in rows if r["backend"] == backend and r["state"] == state)
                if points:
                    ax.plot(*zip(*points), style, marker="o", label=f"{who} {state}")
        native = sorted({(r["vocab"], r["native_ms"]) for r in rows if r["backend"] == backend})
        ax.plot(*zip(*native), "k--", label="native gather")
        ax.set(xscale="log", yscale="log", xlabel="vocabulary size", ylabel="ms per lookup", title=backend)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--vocab", nargs="+", type=int, default=[10_000, 200_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--ids", type=int, default=4096)
    parser.add_argument("--states", nargs="+", default=list(STATES))
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return run_backend(args.vocab, args.dim, args.ids, args.states)
    rows = []
    for backend in args.backends:
        command = [sys.executable, __file__, "--worker", "--dim", str(args.dim), "--ids", str(args.ids),
                   "--vocab", *map(str, args.vocab), "--states", *args.states]
        result = subprocess.run(command, env={**os.environ, "KERAS_BACKEND": backend}, capture_output=True, text=True)
        if result.returncode:
            sys.exit(f"{backend} failed:\n{result.stderr[-3000:]}")
        rows += json.loads(result.stdout.strip().splitlines()[-1])
    os.makedirs(args.out, exist_ok=True)
    table = markdown(rows)
    with open(os.path.join(args.out, "lookup.md"), "w") as f:
        f.write(f"D={args.dim}, {args.ids} ids\n\n{table}\n")
    chart(rows, os.path.join(args.out, "lookup.png"))
    print(table)


if __name__ == "__main__":
    main()

"""Lookup time of keras_embed_ext.Embedding vs keras.layers.Embedding vs the native gather.

For each backend (a subprocess each), each way of running it (JAX: jax.jit; TensorFlow:
eager and tf.function(jit_compile=True); torch: eager and torch.compile), each state
(float, LoRA, int8, int4, int4+LoRA) and each vocabulary size, the median time of one
lookup of a fixed batch of ids, and the bytes a lookup must move (stored rows read,
float32 rows written) per second against the machine's copy bandwidth.
Writes lookup.md, lookup.png (time vs vocabulary) and bandwidth.png.

    python benchmarks/bench_lookup.py                    # all backends, V = 10k, 200k, 1M
    python benchmarks/bench_lookup.py --backends jax --vocab 10000 200000
"""

import argparse
import json
import os
import sys

from workers import charts_available, rows_from_workers, write_table

HERE = os.path.dirname(os.path.abspath(__file__))
STATES = ("float", "lora", "int8", "int4", "int4_lora")
RUNS = {"jax": ("jit",), "tensorflow": ("eager", "xla"), "torch": ("eager", "compile")}


def make_layer(cls, vocab, dim, state, table):
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


def bytes_per_id(layer):
    """What one looked-up id must move: its stored row (and adapter row) read, a float32 row written."""
    import numpy as np

    stored = sum(
        int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
        for v in layer.weights
        if len(v.shape) and v.shape[0] == layer.input_dim
    )
    return stored / layer.input_dim + 4 * layer.output_dim + 4


def run(fn, how):
    """`fn(*args)` as `how` runs it on this backend."""
    from common import BACKEND

    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    if how == "xla":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    if BACKEND == "torch":
        import torch

        call = torch.compile(fn) if how == "compile" else fn

        def no_grad(*args):
            with torch.no_grad():
                return call(*args)

        return no_grad
    return fn


def lookup_fn(layer, how):
    from common import BACKEND

    if BACKEND == "jax":
        state = [v.value for v in layer.trainable_variables], [v.value for v in layer.non_trainable_variables]
        jitted = run(lambda t, n, ids: layer.stateless_call(t, n, ids)[0], how)
        return lambda ids: jitted(*state, ids)
    return run(layer, how)


def forget_compiled():
    """Drops torch.compile's compiled code before a row's contenders are built.

    Dynamo keeps up to 8 compiled versions of one function (keras' `Layer.__call__`
    for every layer alike); past that it runs the function eagerly, so without a
    reset all but the first rows would time the eager fallback.
    """
    from common import BACKEND

    if BACKEND == "torch":
        import torch

        torch._dynamo.reset()


def native_gather_fn():
    """`(table, ids) -> rows`, the backend's own gather."""
    from common import BACKEND

    if BACKEND == "jax":
        return lambda table, ids: table[ids]
    if BACKEND == "torch":
        import torch

        return lambda table, ids: torch.nn.functional.embedding(ids, table)
    import tensorflow as tf

    return lambda table, ids: tf.gather(table, ids)


def native_gather(how):
    return run(native_gather_fn(), how)


def run_backend(vocabs, dim, n_ids, states):
    sys.path.insert(0, HERE)
    import keras
    import numpy as np

    import keras_embed_ext as kee
    from common import BACKEND, copy_bandwidth_gbs, device_name, rounds_median_ms, random_table, to_device

    rows = []
    bandwidth = copy_bandwidth_gbs()
    for vocab in vocabs:
        ids = to_device(np.random.default_rng(1).integers(0, vocab, size=(n_ids,)).astype("int32"))
        table = random_table(vocab, dim)
        device_table = to_device(table)
        for how in RUNS[BACKEND]:
            native = native_gather(how)
            for state in states:
                forget_compiled()
                ours_layer = make_layer(kee.Embedding, vocab, dim, state, table)
                ours = lookup_fn(ours_layer, how)
                theirs = lookup_fn(make_layer(keras.layers.Embedding, vocab, dim, state, table), how)
                native_ms, ours_ms, keras_ms = rounds_median_ms(
                    [lambda: native(device_table, ids), lambda: ours(ids), lambda: theirs(ids)])
                rows.append({"backend": BACKEND, "device": device_name(), "run": how, "vocab": vocab, "state": state,
                             "ours_ms": ours_ms, "keras_ms": keras_ms, "native_ms": native_ms, "copy_gbs": bandwidth,
                             "ours_gbs": n_ids * bytes_per_id(ours_layer) / ours_ms / 1e6})
    print(json.dumps(rows))


def markdown(rows):
    lines = ["| backend | device | run | V | state | ours ms | keras ms | native gather ms | ours / native | "
             "ours / our float | keras / ours | ours GB/s (copy GB/s) |",
             "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    floats = {(r["backend"], r["run"], r["vocab"]): r["ours_ms"] for r in rows if r["state"] == "float"}
    for r in rows:
        float_ms = floats[r["backend"], r["run"], r["vocab"]]
        lines.append(f"| {r['backend']} | {r['device']} | {r['run']} | {r['vocab']:,} | {r['state']} | "
                     f"{r['ours_ms']:.3f} | {r['keras_ms']:.3f} | {r['native_ms']:.3f} | "
                     f"{r['ours_ms'] / r['native_ms']:.2f} | {r['ours_ms'] / float_ms:.2f} | "
                     f"{r['keras_ms'] / r['ours_ms']:.1f}x | {r['ours_gbs']:.1f} ({r['copy_gbs']:.1f}) |")
    return "\n".join(lines)


def _panels(rows):
    return sorted({(r["backend"], r["run"]) for r in rows})


def chart(rows, path):
    import matplotlib.pyplot as plt

    panels = _panels(rows)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (backend, how) in zip(axes[0], panels):
        mine = [r for r in rows if (r["backend"], r["run"]) == (backend, how)]
        for state in STATES:
            for who, style in (("ours", "-"), ("keras", ":")):
                points = sorted((r["vocab"], r[f"{who}_ms"]) for r in mine if r["state"] == state)
                if points:
                    ax.plot(*zip(*points), style, marker="o", label=f"{who} {state}")
        native = sorted((r["vocab"], r["native_ms"]) for r in mine if r["state"] == "float")
        ax.plot(*zip(*native), "k--", label="native gather")
        ax.set(xscale="log", yscale="log", xlabel="vocabulary size", ylabel="ms per lookup",
               title=f"{backend} ({how}, {mine[0]['device']})")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def bandwidth_chart(rows, path):
    """Effective bandwidth of our lookups at the largest vocabulary, against the copy bandwidth."""
    import matplotlib.pyplot as plt

    largest = max(r["vocab"] for r in rows)
    panels = _panels(rows)
    fig, ax = plt.subplots(figsize=(1.6 * len(panels) * len(STATES) / 3, 4))
    width = 0.8 / len(STATES)
    for i, state in enumerate(STATES):
        values = [next((r["ours_gbs"] for r in rows if (r["backend"], r["run"]) == panel
                        and r["state"] == state and r["vocab"] == largest), 0) for panel in panels]
        ax.bar([p + i * width for p in range(len(panels))], values, width, label=state)
    for p, panel in enumerate(panels):
        copy = next(r["copy_gbs"] for r in rows if (r["backend"], r["run"]) == panel)
        ax.hlines(copy, p - width / 2, p + 0.8, colors="k", linestyles="--",
                  label="copy bandwidth" if p == 0 else None)
    ax.set_xticks([p + 0.4 - width / 2 for p in range(len(panels))], [f"{b}\n{h}" for b, h in panels])
    ax.set(ylabel="GB/s (rows read + rows written)", title=f"bytes moved per second, V={largest:,}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


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
    states = list(dict.fromkeys(["float", *args.states]))  # the ratios are to our float lookup
    rows = rows_from_workers(__file__, args.backends, ["--dim", str(args.dim), "--ids", str(args.ids),
                                                       "--vocab", *map(str, args.vocab), "--states", *states])
    write_table(args.out, "lookup.md", f"D={args.dim}, {args.ids} ids", markdown(rows))
    if not charts_available():
        return
    chart(rows, os.path.join(args.out, "lookup.png"))
    bandwidth_chart(rows, os.path.join(args.out, "bandwidth.png"))


if __name__ == "__main__":
    main()

"""Fixed cost per call: keras_embed_ext.Embedding vs keras.layers.Embedding vs the native
gather, with 1 id and with 4,096.

A float table (V = 10k, D = 256) run each way bench_lookup.py runs it. With one id the
time is what a call costs besides moving rows. Eagerly, `.call` is also timed
without keras' `Layer.__call__` around it. Under torch.compile, Dynamo checks its
guards (the attributes and globals that `Layer.__call__` read while traced) before
every call; "compile, tensor guards" keeps only the guards on tensors
(`torch.compiler.keep_tensor_guards_unsafe`), which a model whose layers no longer
change can afford. Writes overhead.md.

    python benchmarks/bench_overhead.py
"""

import argparse
import json
import os
import sys

from workers import rows_from_workers, write_table

HERE = os.path.dirname(os.path.abspath(__file__))
TENSOR_GUARDS = "compile, tensor guards"
RUNS = {"jax": ("jit",), "tensorflow": ("eager", "xla"), "torch": ("eager", "compile", TENSOR_GUARDS)}


def tensor_guards_compile(fn):
    """`fn` under torch.compile that checks only the guards on tensors before each call."""
    import torch

    call = torch.compile(fn, options={"guard_filter_fn": torch.compiler.keep_tensor_guards_unsafe})

    def no_grad(*args):
        with torch.no_grad():
            return call(*args)

    return no_grad


def run_backend(vocab, dim, id_counts):
    sys.path.insert(0, HERE)
    import keras
    import numpy as np

    import keras_embed_ext as kee
    from bench_lookup import forget_compiled, lookup_fn, make_layer, native_gather, native_gather_fn, run
    from common import BACKEND, device_name, random_table, rounds_median_ms, to_device

    table = random_table(vocab, dim)
    device_table = to_device(table)
    rows = []
    for n_ids in id_counts:
        ids = to_device(np.random.default_rng(1).integers(0, vocab, size=(n_ids,)).astype("int32"))
        for how in RUNS[BACKEND]:
            forget_compiled()
            ours_layer = make_layer(kee.Embedding, vocab, dim, "float", table)
            keras_layer = make_layer(keras.layers.Embedding, vocab, dim, "float", table)
            if how == TENSOR_GUARDS:
                native = tensor_guards_compile(native_gather_fn())
                ours, theirs = tensor_guards_compile(ours_layer), tensor_guards_compile(keras_layer)
            else:
                native = native_gather(how)
                ours, theirs = lookup_fn(ours_layer, how), lookup_fn(keras_layer, how)
            contenders = [lambda: native(device_table, ids), lambda: ours(ids), lambda: theirs(ids)]
            if how == "eager":
                call = run(ours_layer.call, how)
                contenders.append(lambda: call(ids))
            times = [ms * 1e3 for ms in rounds_median_ms(contenders)]
            rows.append({"backend": BACKEND, "device": device_name(), "run": how, "ids": n_ids,
                         "native_us": times[0], "ours_us": times[1], "keras_us": times[2],
                         "call_us": times[3] if how == "eager" else None})
    print(json.dumps(rows))


def markdown(rows):
    lines = ["| backend | device | run | ids | native µs | ours µs | ours `.call` µs | keras µs | ours - native µs |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        call = "-" if r["call_us"] is None else f"{r['call_us']:.0f}"
        lines.append(f"| {r['backend']} | {r['device']} | {r['run']} | {r['ids']:,} | {r['native_us']:.0f} | "
                     f"{r['ours_us']:.0f} | {call} | {r['keras_us']:.0f} | {r['ours_us'] - r['native_us']:.0f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--vocab", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--ids", nargs="+", type=int, default=[1, 4096])
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return run_backend(args.vocab, args.dim, args.ids)
    rows = rows_from_workers(__file__, args.backends, ["--vocab", str(args.vocab), "--dim", str(args.dim),
                                                       "--ids", *map(str, args.ids)])
    write_table(args.out, "overhead.md", f"V={args.vocab:,}, D={args.dim}, float table", markdown(rows))


if __name__ == "__main__":
    main()

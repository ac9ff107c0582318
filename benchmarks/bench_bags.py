"""Bag time of keras_embed_ext.Embedding(combiner=...) vs keras.layers.Embedding and a
masked reduction vs the backend's own ops.

Bags of ids padded with 0 (`mask_zero=True`), each reduced to one row by `sum` or
`mean`. keras' layer has no combiner, so its time includes the masked reduction a
keras user writes after it; the native bag is torch's `embedding_bag` with the mask
as per-id weights, and a gather then a masked sum on TensorFlow and JAX. The ways of
running each backend are those of bench_lookup.py. Writes bags.md.

    python benchmarks/bench_bags.py                      # all backends, V = 200k, D = 64 and 256
"""

import argparse
import json
import os
import sys

from workers import rows_from_workers, write_table

HERE = os.path.dirname(os.path.abspath(__file__))
RUNS = {"jax": ("jit",), "tensorflow": ("eager", "xla"), "torch": ("eager", "compile")}


def masked_bags(combiner):
    """`(gather(ids) -> rows) -> bags`, as keras' ops reduce rows padded with id 0."""
    from keras import ops

    def reduce(rows, ids):
        mask = ops.cast(ops.not_equal(ids, 0), rows.dtype)
        total = ops.sum(rows * ops.expand_dims(mask, -1), axis=-2)
        if combiner == "sum":
            return total
        return total / ops.expand_dims(ops.maximum(ops.sum(mask, axis=-1), 1.0), -1)

    return reduce


def native_bags(combiner):
    from common import BACKEND

    reduce = masked_bags(combiner)
    if BACKEND == "torch":
        import torch

        def bags(table, ids):
            mask = (ids != 0).to(table.dtype)
            total = torch.nn.functional.embedding_bag(ids, table, mode="sum", per_sample_weights=mask)
            return total if combiner == "sum" else total / mask.sum(-1, keepdim=True).clamp_min(1)

        return bags
    if BACKEND == "jax":
        return lambda table, ids: reduce(table[ids], ids)
    import tensorflow as tf

    return lambda table, ids: reduce(tf.gather(table, ids), ids)


def reduced_fn(layer, reduce, how):
    """`reduce(layer(ids), ids)` as `how` runs it; under jax.jit with the table an argument."""
    from bench_lookup import run
    from common import BACKEND

    if BACKEND == "jax":
        state = [v.value for v in layer.trainable_variables], [v.value for v in layer.non_trainable_variables]
        jitted = run(lambda t, n, ids: reduce(layer.stateless_call(t, n, ids)[0], ids), how)
        return lambda ids: jitted(*state, ids)
    return run(lambda ids: reduce(layer(ids), ids), how)


def run_backend(vocab, dims, bags, bag_size):
    sys.path.insert(0, HERE)
    import keras
    import numpy as np

    import keras_embed_ext as kee
    from bench_lookup import forget_compiled, lookup_fn, run
    from common import BACKEND, device_name, random_table, rounds_median_ms, to_device

    rng = np.random.default_rng(1)
    lengths = rng.integers(1, bag_size + 1, size=(bags, 1))
    ids_np = np.where(np.arange(bag_size) < lengths, rng.integers(1, vocab, size=(bags, bag_size)), 0)
    ids = to_device(ids_np.astype("int32"))
    rows = []
    for dim in dims:
        table = random_table(vocab, dim)
        device_table = to_device(table)
        for how in RUNS[BACKEND]:
            for combiner in ("sum", "mean"):
                forget_compiled()
                native = run(native_bags(combiner), how)
                ours = lookup_fn(kee.Embedding(vocab, dim, weights=table, mask_zero=True, combiner=combiner), how)
                keras_layer = keras.layers.Embedding(vocab, dim, mask_zero=True)
                keras_layer.build()
                keras_layer.set_weights([table])
                theirs = reduced_fn(keras_layer, masked_bags(combiner), how)
                native_ms, ours_ms, keras_ms = rounds_median_ms(
                    [lambda: native(device_table, ids), lambda: ours(ids), lambda: theirs(ids)])
                rows.append({"backend": BACKEND, "device": device_name(), "run": how, "dim": dim,
                             "combiner": combiner, "ours_ms": ours_ms, "keras_ms": keras_ms, "native_ms": native_ms})
    print(json.dumps(rows))


def markdown(rows):
    lines = ["| backend | device | run | D | combiner | ours ms | keras + reduction ms | native bag ms | "
             "ours / native | keras / ours |", "|---|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['device']} | {r['run']} | {r['dim']} | {r['combiner']} | "
                     f"{r['ours_ms']:.3f} | {r['keras_ms']:.3f} | {r['native_ms']:.3f} | "
                     f"{r['ours_ms'] / r['native_ms']:.2f} | {r['keras_ms'] / r['ours_ms']:.1f}x |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--vocab", type=int, default=200_000)
    parser.add_argument("--dims", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--bags", type=int, default=1024)
    parser.add_argument("--bag-size", type=int, default=16)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return run_backend(args.vocab, args.dims, args.bags, args.bag_size)
    rows = rows_from_workers(__file__, args.backends, ["--vocab", str(args.vocab), "--bags", str(args.bags),
                                                       "--bag-size", str(args.bag_size), "--dims", *map(str, args.dims)])
    title = f"V={args.vocab:,}, {args.bags} bags of up to {args.bag_size} ids padded with 0"
    write_table(args.out, "bags.md", title, markdown(rows))


if __name__ == "__main__":
    main()

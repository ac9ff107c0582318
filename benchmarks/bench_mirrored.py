"""A training step under `tf.distribute.MirroredStrategy` on 2 logical CPU devices:
`kee.Embedding` against `keras.layers.Embedding`, both built in the strategy's scope,
timed interleaved in one process.

512 bags of 8 ids -> Embedding(V, 64), mean over the bag -> Dense(1), MSE, Adagrad.
States: "float" (the model's Adagrad trains the table, V = 100k) and "sparse" (ours with
`sparse_optimizer="adagrad"`, keras' layer with the model's Adagrad, V = 1M).

    python benchmarks/bench_mirrored.py [--rounds 7]
"""

import argparse
import os
import time

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

import keras_embed_ext as kee  # noqa: E402

BAGS, BAG, DIM = 512, 8, 64


def model(strategy, layer_kind, vocab, sparse):
    with strategy.scope():
        if layer_kind == "ours":
            embedding = kee.Embedding(vocab, DIM, combiner="mean", sparse_optimizer="adagrad" if sparse else None)
            pooled = [embedding]
        else:
            pooled = [keras.layers.Embedding(vocab, DIM), keras.layers.GlobalAveragePooling1D()]
        built = keras.Sequential([keras.Input((BAG,), dtype="int32"), *pooled, keras.layers.Dense(1)])
        built.compile(keras.optimizers.Adagrad(0.01), "mse")
    return built


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="table sizes times this")
    args = parser.parse_args()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    rows = []
    for state, vocab in (("float", int(100_000 * args.scale)), ("sparse", int(1_000_000 * args.scale))):
        x = rng.integers(0, vocab, (BAGS, BAG)).astype("int32")
        y = rng.standard_normal((BAGS, 1)).astype("float32")
        models = {kind: model(strategy, kind, vocab, state == "sparse") for kind in ("ours", "keras")}
        for m in models.values():
            m.train_on_batch(x, y)
            m.train_on_batch(x, y)
        times = {kind: [] for kind in models}
        for _ in range(args.rounds):
            for kind, m in models.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    m.train_on_batch(x, y)
                times[kind].append(1e3 * (time.perf_counter() - start) / args.steps)
        ours, theirs = (float(np.median(times[k])) for k in ("ours", "keras"))
        rows.append(f"| {state} | {vocab:,} | {ours:.1f} ({min(times['ours']):.1f}-{max(times['ours']):.1f}) | "
                    f"{theirs:.1f} ({min(times['keras']):.1f}-{max(times['keras']):.1f}) | {ours / theirs:.2f} |")
    print(f"MirroredStrategy on 2 logical CPU devices, {BAGS} bags of {BAG} ids, D = {DIM}, ms per train_on_batch, "
          f"median (min-max) of {args.rounds} rounds of {args.steps} steps, interleaved\n")
    print("| state | V | ours | keras' layer | ours / keras |")
    print("|---|---:|---|---|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

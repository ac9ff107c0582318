"""Reverse projection (`call(x, reverse=True)`) of kee.ReversibleEmbedding vs
keras.layers.ReversibleEmbedding, forward and backward, on the backend of KERAS_BACKEND.

For each state (float, LoRA, int8, int4 per-row, int4+LoRA) and tying, both layers hold
the same weights; the two are timed in turn, round after round, and the median of each
is printed with its spread, as a markdown table (ms per call; `x` of `tokens x D`).
JAX runs under `jax.jit`, torch eagerly, TensorFlow in `tf.function`. `--forward` times
the forward pass alone: keras' quantized reverse projection quantizes its inputs, whose
gradient then reaches only each row's largest input, through its scale, so its backward
pass does almost none of the work of ours.

    KERAS_BACKEND=jax python benchmarks/bench_reverse.py --vocab 32000 --dim 256 --tokens 256
"""

import argparse
import os
import sys
import time

import numpy as np

STATES = ("float", "lora", "int8", "int4", "int4_lora")


def make_pair(vocab, dim, state, tie, weights):
    """Ours and keras' layer holding `weights`. Only ours quantizes them; keras' is
    built quantized and given our stored values, so that one float copy of the
    tables exists at a time (two of a 256k x 2,048 table and kernel exceed 24 GiB)."""
    import keras

    import keras_embed_ext as kee

    ours = kee.ReversibleEmbedding(vocab, dim, tie_weights=tie)
    ours.build()
    ours.set_weights(weights)
    if state.startswith("int"):
        int4 = state.startswith("int4")
        ours.quantize(state[:4], config=keras.quantizers.Int4QuantizationConfig(block_size=-1) if int4 else None)
        policy = (keras.dtype_policies.Int4DTypePolicy("int4/-1", "float32") if int4
                  else keras.dtype_policies.QuantizedDTypePolicy("int8", "float32"))
        theirs = keras.layers.ReversibleEmbedding(vocab, dim, tie_weights=tie, dtype=policy)
        theirs.build()
        theirs.set_weights(ours.get_weights())
        theirs.inputs_quantizer = ours.inputs_quantizer  # as keras' `quantize` sets it
    else:
        theirs = keras.layers.ReversibleEmbedding(vocab, dim, tie_weights=tie)
        theirs.build()
        theirs.set_weights(weights)
    if state.endswith("lora"):
        ours.enable_lora(8)
        theirs.enable_lora(8)
    return {"ours": ours, "keras": theirs}


def step_fn(layer, forward_only=False):
    """Forward and backward (or forward only) of the reverse projection, as each backend compiles it."""
    import keras

    backend = keras.backend.backend()
    if forward_only:
        return forward_fn(layer, backend)
    if backend == "jax":
        import jax

        def loss(trainable, non_trainable, x):
            logits, _ = layer.stateless_call(trainable, non_trainable, x, reverse=True)
            return keras.ops.mean(logits)

        # The loss is returned too: otherwise XLA drops the forward pass, which the
        # gradient of a mean does not read.
        grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 2)))
        trainable = [v.value for v in layer.trainable_variables]
        non_trainable = [v.value for v in layer.non_trainable_variables]
        return lambda x: jax.block_until_ready(grad(trainable, non_trainable, x))
    if backend == "torch":
        import torch

        def run(x):
            x = x.clone().requires_grad_(True)
            keras.ops.mean(layer(x, reverse=True)).backward()
            return synchronized(x.grad)

        return run
    import tensorflow as tf

    @tf.function
    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_mean(layer(x, reverse=True))
        return [loss, *tape.gradient(loss, [x, *layer.trainable_variables])]

    return lambda x: [t.numpy() for t in run(x) if t is not None]


def synchronized(tensor):
    """`tensor` once a GPU has computed it: torch returns before its kernels run."""
    import torch

    if tensor.is_cuda:
        torch.cuda.synchronize()
    return tensor


def forward_fn(layer, backend):
    if backend == "jax":
        import jax

        @jax.jit
        def run(trainable, non_trainable, x):
            return layer.stateless_call(trainable, non_trainable, x, reverse=True)[0]

        trainable = [v.value for v in layer.trainable_variables]
        non_trainable = [v.value for v in layer.non_trainable_variables]
        return lambda x: jax.block_until_ready(run(trainable, non_trainable, x))
    if backend == "torch":
        import torch

        def run(x):
            with torch.no_grad():
                return synchronized(layer(x, reverse=True))

        return run
    import tensorflow as tf

    run = tf.function(lambda x: layer(x, reverse=True))
    return lambda x: run(x).numpy()


def device_name(x):
    import keras

    if keras.backend.backend() == "torch":
        import torch

        return torch.cuda.get_device_name(x.device) if x.is_cuda else "cpu"
    if keras.backend.backend() == "jax":
        return next(iter(x.devices())).device_kind
    return x.device


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tie", choices=("both", "tied", "untied"), default="both")
    parser.add_argument("--states", default=",".join(STATES), help="comma-separated subset of " + ", ".join(STATES))
    parser.add_argument("--forward", action="store_true", help="time the forward pass alone")
    parser.add_argument("--block-mib", type=float, help="float32 MiB per block of a quantized table (0: one block)")
    args = parser.parse_args()

    import keras

    from keras_embed_ext import blocked_logits

    if args.block_mib is not None:
        blocked_logits.BLOCK_BYTES = int(args.block_mib * 2**20) or 2**62
        blocked_logits.MAX_BLOCKS = 2**62

    rng = np.random.default_rng(0)
    table = rng.standard_normal((args.vocab, args.dim), dtype="float32")
    table *= 0.05
    kernel = None
    if args.tie != "tied":
        kernel = rng.standard_normal((args.dim, args.vocab), dtype="float32")
        kernel *= 0.05
    x = keras.ops.convert_to_tensor(rng.standard_normal((args.tokens, args.dim), dtype="float32"))
    measured = "forward" if args.forward else "forward + backward"
    blocks = "" if args.block_mib is None else f"; quantized tables read in {args.block_mib} MiB blocks"
    print(f"backend {keras.backend.backend()} on {device_name(x)}, V = {args.vocab}, D = {args.dim}, "
          f"{args.tokens} tokens; ms per {measured}, median (min-max) of {args.rounds} rounds{blocks}\n")
    print("| state | tied | ours | keras | keras / ours |")
    print("|---|---|---|---|---|")
    for tie in {"both": (True, False), "tied": (True,), "untied": (False,)}[args.tie]:
        weights = [table] if tie else [table, kernel]
        for state in args.states.split(","):
            fns = None  # the last state's layers go before the next ones are built
            fns = {name: step_fn(layer, args.forward)
                   for name, layer in make_pair(args.vocab, args.dim, state, tie, weights).items()}
            times = {name: [] for name in fns}
            for fn in fns.values():
                fn(x)
                fn(x)
            for _ in range(args.rounds):
                for name, fn in fns.items():
                    start = time.perf_counter()
                    fn(x)
                    times[name].append(1e3 * (time.perf_counter() - start))
            cells = [f"{np.median(t):.2f} ({min(t):.2f}-{max(t):.2f})" for t in times.values()]
            ratio = np.median(times["keras"]) / np.median(times["ours"])
            print(f"| {state} | {tie} | {cells[0]} | {cells[1]} | {ratio:.2f}x |")
            sys.stdout.flush()


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()

"""A keras-hub causal LM with an int4 token table, LoRA on the table and on attention.

A small `GemmaCausalLM` is built from its constructor (no preset is downloaded)
under `kee.replacing_embeddings()`, quantized to int4, given LoRA adapters on the
token table and the query/value projections, and trained for a few steps on
generated text: sequences that count up by 3 from a start below 64. Greedy
generation is shown before and after, and a training step is timed against the
same model with keras-hub's own layers.
Run: `python examples/llm_embedding_lora.py` (KERAS_BACKEND=jax or torch; needs keras-hub).
"""

import time

import keras
import keras_hub
import numpy as np

import keras_embed_ext as kee

VOCAB, HIDDEN, LENGTH, BATCH, STEP = 32_000, 64, 16, 8, 3
LORA_TARGETS = ["query", "value", "token_embedding"]


def counting_batch(rng):
    """Sequences `s, s + 3, s + 6, ...` and their padding mask."""
    starts = rng.integers(0, 64, (BATCH, 1))
    tokens = starts + STEP * np.arange(LENGTH)
    return {"token_ids": tokens.astype("int32"), "padding_mask": np.ones((BATCH, LENGTH), "int32")}


def build(ours):
    """The tiny Gemma, int4 with LoRA on table and attention, ready to train."""
    keras.utils.set_random_seed(0)
    backbone_args = dict(vocabulary_size=VOCAB, num_layers=2, num_query_heads=4, num_key_value_heads=1,
                         hidden_dim=HIDDEN, intermediate_dim=128, head_dim=16)
    if ours:
        with kee.replacing_embeddings():
            backbone = keras_hub.models.GemmaBackbone(**backbone_args)
    else:
        backbone = keras_hub.models.GemmaBackbone(**backbone_args)
    model = keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None)
    model.quantize("int4")
    backbone.enable_lora(4, target_layer_names=LORA_TARGETS)
    model.compile(optimizer=keras.optimizers.Adam(3e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), sampler="greedy")
    return model


def step(model, batch):
    """One training step: predict each next token of the batch."""
    x = {"token_ids": batch["token_ids"][:, :-1], "padding_mask": batch["padding_mask"][:, :-1]}
    return float(np.ravel(model.train_on_batch(x, batch["token_ids"][:, 1:]))[0])


def continuation_accuracy(model, rng):
    """The share of greedily generated tokens that continue the count."""
    batch = counting_batch(rng)
    prompt = {"token_ids": batch["token_ids"].copy(), "padding_mask": batch["padding_mask"].copy()}
    prompt["padding_mask"][:, LENGTH // 2:] = 0
    generated = model.generate(prompt, max_length=LENGTH, stop_token_ids=None)["token_ids"]
    return float(np.mean(generated[:, LENGTH // 2:] == batch["token_ids"][:, LENGTH // 2:])), generated[0]


def main():
    rng = np.random.default_rng(0)
    ours, theirs = build(ours=True), build(ours=False)
    table = ours.backbone.token_embedding
    print(f"token table: {type(table).__name__} from {type(table).__module__}, {table.quantization_mode}, "
          f"LoRA rank {table.lora_rank}; {len(ours.trainable_weights)} trainable variables")
    before, sample = continuation_accuracy(ours, np.random.default_rng(1))
    print(f"before training, generated: {sample.tolist()}")

    timings = {"keras_embed_ext": [], "keras-hub alone": []}
    losses = []
    for index in range(150):
        batch = counting_batch(rng)
        for name, model in (("keras_embed_ext", ours), ("keras-hub alone", theirs)):
            start = time.perf_counter()
            loss = step(model, batch)
            if index >= 2:  # the first steps compile
                timings[name].append(time.perf_counter() - start)
            if model is ours:
                losses.append(loss)
    after, sample = continuation_accuracy(ours, np.random.default_rng(1))
    print(f"after training, generated:  {sample.tolist()}")
    print(f"loss {np.mean(losses[:3]):.3f} -> {np.mean(losses[-3:]):.3f}")
    print(f"continuation accuracy {before:.2f} -> {after:.2f}")
    for name, times in timings.items():
        print(f"train step, {name}: median {1e3 * np.median(times):.1f} ms "
              f"({1e3 * np.percentile(times, 25):.1f}-{1e3 * np.percentile(times, 75):.1f})")


if __name__ == "__main__":
    main()

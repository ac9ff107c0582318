"""keras-hub models with this package's layers, on the backend of `KERAS_BACKEND`.

Run by `test_keras_hub.py`, once per backend: `python hub_models.py DIR MODEL...`. Tiny
models are built from their constructors (no preset is downloaded); each check
compares against the same model with keras' layers, and an assertion fails the run.
"""

import os
import sys

import keras
import keras_hub
import numpy as np
from keras_hub import models

import keras_embed_ext as kee

V, HIDDEN, LENGTH = 97, 16, 8
ATTENTION_LORA = ["query_dense", "value_dense", "query", "value"]


def build(name):
    """A tiny model with keras' layers, and its inputs."""
    keras.utils.set_random_seed(0)
    if name == "gpt2":
        backbone = models.GPT2Backbone(vocabulary_size=V, num_layers=1, num_heads=2, hidden_dim=HIDDEN,
                                       intermediate_dim=32, max_sequence_length=16)
        model = models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    elif name == "gemma":
        backbone = models.GemmaBackbone(vocabulary_size=V, num_layers=1, num_query_heads=2, num_key_value_heads=1,
                                        hidden_dim=HIDDEN, intermediate_dim=32, head_dim=8)
        model = models.GemmaCausalLM(backbone=backbone, preprocessor=None)
    elif name == "gemma3":
        backbone = models.Gemma3Backbone(vocabulary_size=V, image_size=16, num_layers=1, num_query_heads=2,
                                         num_key_value_heads=1, hidden_dim=HIDDEN, intermediate_dim=32, head_dim=8,
                                         final_logit_soft_cap=30.0)
        model = models.Gemma3CausalLM(backbone=backbone, preprocessor=None)
    elif name == "llama":
        backbone = models.LlamaBackbone(vocabulary_size=V, num_layers=1, num_query_heads=2, num_key_value_heads=1,
                                        hidden_dim=HIDDEN, intermediate_dim=32)
        assert not backbone.token_embedding.tie_weights
        model = models.LlamaCausalLM(backbone=backbone, preprocessor=None)
    else:
        backbone = models.BertBackbone(vocabulary_size=V, num_layers=1, num_heads=2, hidden_dim=HIDDEN,
                                       intermediate_dim=32, max_sequence_length=16)
        model = models.BertMaskedLM(backbone=backbone, preprocessor=None)
    rng = np.random.default_rng(0)
    inputs = {"token_ids": rng.integers(1, V, (2, LENGTH)).astype("int32"),
              "padding_mask": np.ones((2, LENGTH), "int32")}
    if name == "bert":
        inputs["segment_ids"] = np.zeros((2, LENGTH), "int32")
        inputs["mask_positions"] = np.array([[1, 4], [2, 6]], "int32")
    return model, inputs


def copy(model, ours):
    """The same model, built with this package's layers (`ours`) or keras'."""
    if ours:
        with kee.replacing_embeddings():
            twin = model.__class__.from_config(model.get_config())
    else:
        twin = model.__class__.from_config(model.get_config())
    twin.set_weights(model.get_weights())
    return twin


def generated(model, prompt):
    """Greedy generation of the tokens after the prompt's padding."""
    model.compile(sampler="greedy")
    if isinstance(model, models.Gemma3CausalLM):
        # keras-hub 0.32's generate() without a preprocessor fails for Gemma3 after generating
        # (in `_normalize_generate_outputs`, with keras' layer too): the generation step itself.
        return keras.ops.convert_to_numpy(model.generate_step(prompt, stop_token_ids=None)["token_ids"])
    return model.generate(prompt, max_length=LENGTH, stop_token_ids=None)["token_ids"]


def quantize(model):
    # keras-hub 0.32 cannot reload BERT's int4 `intermediate_dense` (keras' layers alike).
    filters = (lambda layer: not isinstance(layer, keras.layers.Dense)) if isinstance(model, models.BertMaskedLM) else None
    model.quantize("int4", filters=filters)


def logits(model, inputs):
    return np.asarray(keras.ops.convert_to_numpy(model(inputs)), "float32")


def token_layers(model):
    return [layer for layer in model._flatten_layers() if isinstance(layer, (keras.layers.Embedding, kee.Embedding))]


def check_swapped(model, keras_model):
    reversible = [layer for layer in token_layers(model) if layer.name == "token_embedding"]
    assert reversible and all(type(layer) is kee.ReversibleEmbedding for layer in reversible), token_layers(model)
    assert not any(type(layer) in (keras.layers.Embedding, keras.layers.ReversibleEmbedding)
                   for layer in token_layers(model))
    assert type(model) is type(keras_model) and type(model.backbone) is type(keras_model.backbone)


def run(name, directory):
    reference, inputs = build(name)
    expected = logits(reference, inputs)

    # Built under the context manager, and swapped in place: same class, same logits.
    ours = copy(reference, ours=True)
    check_swapped(ours, reference)
    np.testing.assert_allclose(logits(ours, inputs), expected, rtol=1e-6, atol=1e-6)
    swapped = copy(reference, ours=False)
    assert kee.replace_embeddings(swapped) is swapped
    check_swapped(swapped, reference)
    np.testing.assert_allclose(logits(swapped, inputs), expected, rtol=1e-6, atol=1e-6)
    print(name, "logits equal keras'")

    if name != "bert":
        prompt = {"token_ids": inputs["token_ids"].copy(), "padding_mask": inputs["padding_mask"].copy()}
        prompt["padding_mask"][:, 4:] = 0
        np.testing.assert_array_equal(generated(ours, prompt), generated(reference, prompt))
        print(name, "generate() equals keras'")

    # LoRA on the token table (and, by keras-hub, on attention) trains.
    ours.backbone.enable_lora(2, target_layer_names=ATTENTION_LORA + ["token_embedding"])
    table = ours.backbone.token_embedding
    assert table.lora_enabled
    before = [keras.ops.convert_to_numpy(v) for v in ours.trainable_weights]
    base = keras.ops.convert_to_numpy(table._table.format.dequantize())
    ours.compile(optimizer=keras.optimizers.Adam(1e-2),
                 loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    targets = inputs["mask_positions"] if name == "bert" else inputs["token_ids"]
    ours.fit(inputs, targets, epochs=3, batch_size=2, verbose=0)
    moved = [not np.array_equal(b, keras.ops.convert_to_numpy(v)) for b, v in zip(before, ours.trainable_weights)]
    names = [v.path for v in ours.trainable_weights]
    assert all(moved), [n for n, m in zip(names, moved) if not m]
    assert any("lora_embeddings" in n for n in names) and any("lora_kernel" in n for n in names), names
    assert any("lora_reverse_embeddings" in n for n in names) == (not table.tie_weights), names
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(table._table.format.dequantize()), base)
    tuned = logits(ours, inputs)
    print(name, "LoRA on table and attention trains:", len(names), "trainable variables")

    # keras-hub's LoRA weight files carry the table's adapter.
    lora_file = os.path.join(directory, f"{name}.lora.h5")
    ours.backbone.save_lora_weights(lora_file)
    fresh = copy(reference, ours=True)
    fresh.backbone.enable_lora(2, target_layer_names=ATTENTION_LORA + ["token_embedding"])
    fresh.backbone.load_lora_weights(lora_file)
    # keras-hub's file holds two arrays per layer: the table's adapter, not an untied kernel's.
    carried = lambda path: "lora_" in path and "lora_reverse" not in path  # noqa: E731
    adapters = [(v.path, keras.ops.convert_to_numpy(v)) for v in ours.weights if carried(v.path)]
    loaded_adapters = [(v.path, keras.ops.convert_to_numpy(v)) for v in fresh.weights if carried(v.path)]
    assert [p for p, _ in adapters] == [p for p, _ in loaded_adapters]
    for (_, value), (_, loaded_value) in zip(adapters, loaded_adapters):
        np.testing.assert_array_equal(loaded_value, value)
    print(name, "save_lora_weights / load_lora_weights keep the table's adapter")

    # A .keras file with the adapter: keras-hub's config does not record LoRA, the table takes it.
    path = os.path.join(directory, f"{name}_lora.keras")
    ours.save(path)
    with kee.replacing_embeddings():
        loaded = keras.saving.load_model(path)
    check_swapped(loaded, reference)
    np.testing.assert_allclose(logits(loaded, inputs), tuned, rtol=1e-5, atol=1e-6)
    print(name, "a .keras file with the adapter reloads")

    # int4, with LoRA on top; saved and reloaded quantized.
    quantized = copy(reference, ours=True)
    quantize(quantized)
    table = quantized.backbone.token_embedding
    assert table.quantization_mode == "int4"
    keras_quantized = copy(reference, ours=False)
    quantize(keras_quantized)
    # A tiny random model quantized throughout moves its logits a lot; keras' moves them alike.
    quantized_logits = logits(quantized, inputs)
    np.testing.assert_allclose(quantized_logits, logits(keras_quantized, inputs), rtol=1e-5, atol=1e-6)
    spread = np.abs(quantized_logits - expected).max()
    assert spread > 0, "int4 left the logits unchanged"
    print(name, f"int4 logits equal keras' int4 (largest change from float {spread:.3g})")
    quantized.backbone.enable_lora(2, target_layer_names=["token_embedding"])
    table.lora_embeddings_b.assign(np.full(table.lora_embeddings_b.shape, 0.1, "float32"))
    adapted = logits(quantized, inputs)
    path = os.path.join(directory, f"{name}_int4.keras")
    quantized.save(path)
    with kee.replacing_embeddings():
        loaded = keras.saving.load_model(path)
    assert loaded.backbone.token_embedding.quantization_mode == "int4"
    np.testing.assert_array_equal(logits(loaded, inputs), adapted)
    if name != "bert":
        generated(loaded, {"token_ids": inputs["token_ids"], "padding_mask": inputs["padding_mask"]})
    print(name, "int4 + LoRA saves, reloads and generates")


if __name__ == "__main__":
    print("keras-hub", keras_hub.__version__, "on", keras.backend.backend())
    for name in sys.argv[2:]:
        run(name, sys.argv[1])
    print("OK")

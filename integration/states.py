"""Builds a small model in each storage state, saves it, or loads and runs one.

    python states.py save OUT_DIR               # one .keras file and one output .npy per state
    python states.py load OUT_DIR IN_DIR...     # outputs of each IN_DIR's files in OUT_DIR/<its name>

Run under each KERAS_BACKEND by the cross-backend test.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_embed_ext as kee  # noqa: E402

STATES = ("float", "lora", "int8", "int4", "int8_lora", "int4_lora", "collection", "dynamic")
V, D, RANK = 64, 10, 3
IDS = np.random.default_rng(1).integers(0, V, size=(4, 7)).astype("int32")
KEYS = np.random.default_rng(3).integers(-2**31, 2**31 - 1, size=(4, 7)).astype("int32")  # raw ids, any int32


def build_collection():
    """A DistributedEmbedding of a shared Adagrad table and an FTRL one, trained a step so
    that the optimizers' state the file holds is not the initial one."""
    shared = kee.TableConfig("shared", V, D, optimizer="adagrad", initializer=keras.initializers.RandomNormal(seed=2))
    other = kee.TableConfig("other", 9, 4, optimizer="ftrl", combiner="sum")
    configs = {"one": kee.FeatureConfig("one", shared, (4,), (4, D)),
               "bag": kee.FeatureConfig("bag", shared, (4, 7), (4, D)),
               "other": kee.FeatureConfig("other", other, (4, 7), (4, 4))}
    inputs = {name: keras.Input(f.input_shape[1:], dtype="int32", name=name) for name, f in configs.items()}
    outputs = kee.DistributedEmbedding(configs, name="emb")(inputs)
    model = keras.Model(inputs, keras.layers.Concatenate()([outputs[n] for n in sorted(outputs)]))
    model.compile("sgd", "mse")
    model.train_on_batch(collection_ids(), np.ones((4, 2 * D + 4), "float32"))
    return model


def collection_ids():
    return {"one": IDS[:, 0], "bag": IDS, "other": IDS % 9}


def build_dynamic():
    """A dynamic table smaller than the keys it has seen, trained a few steps: its file holds
    a map with evictions behind it, and the optimizer's state."""
    inputs = keras.Input((KEYS.shape[1],), dtype="int32")
    layer = kee.Embedding(24, D, dynamic=kee.DynamicIds(min_count=2), name="emb")
    model = keras.Model(inputs, layer(inputs))
    model.compile("sgd", "mse")
    for shift in (0, 0, 1, 1, 2):
        model.train_on_batch(np.roll(KEYS, shift), np.ones((4, 7, D), "float32"))
    return model


def build(state):
    if state == "collection":
        return build_collection()
    if state == "dynamic":
        return build_dynamic()
    rng = np.random.default_rng(0)
    table = rng.standard_normal((V, D)).astype("float32")
    inputs = keras.Input((IDS.shape[1],), dtype="int32")
    layer = kee.Embedding(V, D, weights=table, name="emb")
    model = keras.Model(inputs, layer(inputs))
    mode = state.split("_")[0] if state.startswith("int") else None
    lora_first = state == "int4_lora"  # LoRA before quantizing; int8_lora after
    if "lora" in state and lora_first:
        layer.enable_lora(RANK, lora_alpha=6)
    if mode:
        layer.quantize(mode)
    if "lora" in state and not lora_first:
        layer.enable_lora(RANK, lora_alpha=6)
    if "lora" in state:
        layer.lora_embeddings_a.assign(rng.standard_normal((V, RANK)).astype("float32"))
        layer.lora_embeddings_b.assign(rng.standard_normal((RANK, D)).astype("float32"))
    return model


def run(model):
    """The model's outputs, and for the collection its optimizers' state too."""
    layer = model.get_layer("emb")
    if getattr(layer, "dynamic", None) is not None:
        state = [np.ravel(keras.ops.convert_to_numpy(v)) for v in layer.row_optimizer_variables]
        outputs = np.ravel(keras.ops.convert_to_numpy(model(KEYS)))
        return np.concatenate([outputs, *layer.id_map(), *state]).astype("float64")
    if layer.__class__.__name__ != "DistributedEmbedding":
        return np.asarray(keras.ops.convert_to_numpy(model(IDS)))
    state = [np.ravel(keras.ops.convert_to_numpy(v)) for v in model.get_layer("emb").row_optimizer_variables]
    return np.concatenate([np.ravel(keras.ops.convert_to_numpy(model(collection_ids()))), *state]).astype("float64")


def main(command, *dirs):
    if command == "save":
        for state in STATES:
            model = build(state)
            model.save(os.path.join(dirs[0], f"{state}.keras"))
            np.save(os.path.join(dirs[0], f"{state}.npy"), run(model))
    else:
        for source in dirs[1:]:
            out = os.path.join(dirs[0], os.path.basename(source))
            os.makedirs(out)
            for state in STATES:
                model = keras.saving.load_model(os.path.join(source, f"{state}.keras"))
                layer = model.get_layer("emb")
                if state not in ("collection", "dynamic"):
                    assert layer.lora_enabled == ("lora" in state)
                    assert layer.quantization_mode == (state.split("_")[0] if state.startswith("int") else None)
                np.save(os.path.join(out, f"{state}.npy"), run(model))


if __name__ == "__main__":
    main(*sys.argv[1:])

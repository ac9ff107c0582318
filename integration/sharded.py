"""Row-sharded tables with keras.distribution on 8 virtual JAX CPU devices.

Prints one JSON line: per-device bytes of each sharded variable and the largest
differences from the single-device outputs and gradients. Run by test_sharding.py.
"""

import json
import os

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_embed_ext as kee  # noqa: E402

V, D, RANK = 4096, 32, 8
IDS = np.random.default_rng(0).integers(0, V, size=(16, 10)).astype("int32")
TARGET = np.random.default_rng(1).standard_normal((16, 1)).astype("float32")


def build(state):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((10,), dtype="int32")
    sparse_optimizer = "adagrad" if state.endswith("sparse") else None
    state = state.removesuffix("_sparse")
    initial = np.random.default_rng(2).standard_normal((V, D)).astype("float32")
    layer = kee.Embedding(V, D, weights=initial, name="emb", sparse_optimizer=sparse_optimizer)
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(layer(inputs))))
    if state.startswith("int"):
        layer.quantize(state[:4])
    if state.endswith("lora"):
        layer.enable_lora(RANK)
        layer.lora_embeddings_b.assign(np.ones((RANK, D), "float32") * 0.01)
    return model, layer


def outputs_and_gradients(model):
    trainable = [v.value for v in model.trainable_variables]
    frozen = [v.value for v in model.non_trainable_variables]

    def loss(trainable):
        out, _ = model.stateless_call(trainable, frozen, IDS)
        return ((out - TARGET) ** 2).mean(), out

    (value, out), grads = jax.value_and_grad(loss, has_aux=True)(trainable)
    return np.asarray(out), [np.asarray(g) for g in grads]


def reverse_outputs_and_gradient(state):
    """A tied quantized `ReversibleEmbedding`'s logits of random inputs, their inputs'
    gradient, and the per-device bytes of its table."""
    initial = np.random.default_rng(2).standard_normal((V, D)).astype("float32")
    layer = kee.ReversibleEmbedding(V, D, weights=initial, name="tokens")
    layer.quantize(state)
    hidden = np.random.default_rng(3).standard_normal((16, 10, D)).astype("float32")
    upstream = np.random.default_rng(4).standard_normal((16, 10, V)).astype("float32")
    frozen = [v.value for v in layer.non_trainable_variables]

    def loss(hidden):
        logits, _ = layer.stateless_call([], frozen, hidden, reverse=True)
        return (logits * upstream).sum(), logits

    (_, logits), gradient = jax.jit(jax.value_and_grad(loss, has_aux=True))(hidden)
    shards = layer._embeddings.value.addressable_shards
    return np.asarray(logits), np.asarray(gradient), [int(shards[0].data.nbytes), int(layer._embeddings.value.nbytes)]


def collection():
    """A `DistributedEmbedding` of three tables, two stacked, trained by Adagrad and SGD
    with `fit`: its outputs and trained tables, and each stack's per-device bytes."""
    keras.utils.set_random_seed(0)
    tables = [kee.TableConfig("a", 1000, 16, optimizer="adagrad", initializer=keras.initializers.RandomNormal(seed=1)),
              kee.TableConfig("b", 24, 16, optimizer="adagrad", combiner="sum"),
              kee.TableConfig("c", 512, 8, optimizer="sgd")]
    configs = {"a": kee.FeatureConfig("a", tables[0], (16,), (16, 16)),
               "bag_a": kee.FeatureConfig("bag_a", tables[0], (16, 10), (16, 16)),
               "b": kee.FeatureConfig("b", tables[1], (16, 10), (16, 16)),
               "c": kee.FeatureConfig("c", tables[2], (16,), (16, 8))}
    rng = np.random.default_rng(5)
    ids = {name: rng.integers(0, f.table.vocabulary_size, f.input_shape).astype("int32") for name, f in configs.items()}
    inputs = {name: keras.Input(f.input_shape[1:], dtype="int32", name=name) for name, f in configs.items()}
    layer = kee.DistributedEmbedding(configs)
    outputs = layer(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Concatenate()([outputs[n] for n in sorted(outputs)])))
    before = {name: np.asarray(x) for name, x in layer(ids).items()}
    initial = {name: np.asarray(t) for name, t in layer.get_embedding_tables().items()}
    model.compile(keras.optimizers.SGD(0.01), "mse")
    model.fit(ids, TARGET, epochs=3, batch_size=8, verbose=0, shuffle=False)
    shards = {v.path: [int(v.value.addressable_shards[0].data.nbytes), int(v.value.nbytes)] for v in layer.weights}
    return before, {name: np.asarray(t) for name, t in layer.get_embedding_tables().items()}, shards, initial


def main():
    report = {"devices": len(jax.devices())}
    layout_map = keras.distribution.LayoutMap(keras.distribution.DeviceMesh((8,), ["model"]))
    layout_map[r".*/embeddings$"] = ("model", None)
    layout_map[r".*/embeddings_scale$"] = ("model",)
    layout_map[r".*/lora_embeddings_a$"] = ("model", None)
    layout_map[r".*/(lora_embeddings_a|embeddings)_accumulator$"] = ("model", None)
    states = ("float", "float_lora", "int8", "int8_lora", "int4", "int4_lora", "float_sparse", "float_lora_sparse")
    for state in states:
        single, single_layer = build(state)
        expected_out, expected_grads = outputs_and_gradients(single)
        single.compile(keras.optimizers.SGD(0.01), "mse")
        single.fit(IDS, TARGET, epochs=3, batch_size=8, verbose=0, shuffle=False)
        with keras.distribution.ModelParallel(layout_map=layout_map).scope():
            model, layer = build(state)
            out, grads = outputs_and_gradients(model)
            model.compile(keras.optimizers.SGD(0.01), "mse")
            history = model.fit(IDS, TARGET, epochs=3, batch_size=8, verbose=0, shuffle=False)
        sharded = {}
        for variable in layer.weights:
            shards = variable.value.addressable_shards
            name = variable.path.split("/")[-1]
            if name in ("embeddings", "embeddings_scale", "lora_embeddings_a"):
                sharded[name] = [int(shards[0].data.nbytes), int(variable.value.nbytes), len({s.device for s in shards})]
        report[state] = {
            "per_device_bytes": sharded,
            "max_output_diff": float(np.abs(out - expected_out).max()),
            "max_grad_diff": float(max(np.abs(a - b).max() for a, b in zip(grads, expected_grads))),
            "fit_losses": [float(l) for l in history.history["loss"]],
            "max_trained_diff": float(max(
                np.abs(np.asarray(a.value) - np.asarray(b.value)).max() for a, b in zip(layer.variables, single_layer.variables)
            )),
        }
    # A key that also matches the optimizer's state: its per-row variables are sharded as
    # the rows, its step count replicated.
    greedy = keras.distribution.LayoutMap(keras.distribution.DeviceMesh((8,), ["model"]))
    greedy[r".*embeddings.*"] = ("model", None)
    for state in ("float_sparse", "float_lora_sparse"):
        single, single_layer = build(state)
        single.compile(keras.optimizers.SGD(0.01), "mse")
        single.fit(IDS, TARGET, epochs=3, batch_size=8, verbose=0, shuffle=False)
        with keras.distribution.ModelParallel(layout_map=greedy).scope():
            model, layer = build(state)
            model.compile(keras.optimizers.SGD(0.01), "mse")
            model.fit(IDS, TARGET, epochs=3, batch_size=8, verbose=0, shuffle=False)
        report[f"greedy_key_{state}"] = {
            "devices_per_variable": {v.path.split("/")[-1]: len(v.value.sharding.device_set) if v.shape else 0
                                     for v in layer.variables},
            "sharded": {v.path.split("/")[-1]: int(v.value.addressable_shards[0].data.size) * 8 == int(v.value.size)
                        for v in layer.variables if v.shape},
            "max_trained_diff": float(max(np.abs(np.asarray(a.value) - np.asarray(b.value)).max()
                                          for a, b in zip(layer.variables, single_layer.variables))),
        }
    single_outputs, single_tables, _, _ = collection()
    with keras.distribution.ModelParallel(layout_map=layout_map).scope():
        outputs, tables, shards, initial = collection()
    report["collection"] = {
        "per_device_bytes": shards,
        "max_output_diff": float(max(np.abs(outputs[n] - single_outputs[n]).max() for n in outputs)),
        "max_trained_diff": float(max(np.abs(tables[n] - single_tables[n]).max() for n in tables)),
        "max_moved": float(max(np.abs(tables[n] - initial[n]).max() for n in tables)),
    }
    for state in ("int8", "int4"):
        expected = reverse_outputs_and_gradient(state)
        with keras.distribution.ModelParallel(layout_map=layout_map).scope():
            got = reverse_outputs_and_gradient(state)
        report[f"reverse_{state}"] = {
            "per_device_bytes": got[2],
            "max_output_diff": float(np.abs(got[0] - expected[0]).max()),
            "max_grad_diff": float(np.abs(got[1] - expected[1]).max()),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()

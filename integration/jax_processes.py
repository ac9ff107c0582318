"""Training with `keras.distribution` over two local JAX processes of two CPU devices
each (`jax.distributed` on 127.0.0.1, gloo collectives), or in one process.

    python jax_processes.py single OUT.npz
    python jax_processes.py process INDEX PORT OUT.npz       # both processes, at once

Each run trains every state in STATES on the same global batches, under
`DataParallel` and under `ModelParallel` with the tables' rows sharded by the key
".*embeddings.*" (which also matches the optimizer's state), each process feeding
its half of every batch; process 0 writes the trained weights. Run by
test_scaling_out.py.
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

V, D, L, BATCH, STEPS = 64, 8, 5, 16, 3
STATES = ("float", "sparse_adagrad", "lora_sparse_adam", "collection", "dynamic")


def build(state):
    import keras
    import numpy as np

    import keras_embed_ext as kee

    keras.utils.set_random_seed(0)
    table = np.random.default_rng(2).standard_normal((V, D)).astype("float32")
    if state == "collection":
        tables = [kee.TableConfig("a", V, D, optimizer="adagrad", initializer=keras.initializers.Constant(0.1)),
                  kee.TableConfig("b", V, D, optimizer="ftrl", combiner="sum")]
        configs = {"bag": kee.FeatureConfig("bag", tables[0], (BATCH, L), (BATCH, D)),
                   "other": kee.FeatureConfig("other", tables[1], (BATCH, L), (BATCH, D))}
        inputs = {n: keras.Input((L,), dtype="int32", name=n) for n in configs}
        outputs = kee.DistributedEmbedding(configs)(inputs)
        embedded = keras.layers.Concatenate()([outputs["bag"], outputs["other"]])
    elif state == "dynamic":  # raw keys, more of them than rows: keys are evicted and rows renewed
        inputs = keras.Input((L,), dtype="int32")
        embedded = kee.Embedding(V // 4, D, dynamic=kee.DynamicIds(eviction="lru"), combiner="mean", seed=1)(inputs)
    else:
        inputs = keras.Input((L,), dtype="int32")
        optimizer = {"sparse_adagrad": "adagrad", "lora_sparse_adam": "adam"}.get(state)
        layer = kee.Embedding(V, D, weights=table, combiner="mean", sparse_optimizer=optimizer)
        embedded = layer(inputs)
        if state.startswith("lora"):
            layer.enable_lora(2)
            layer.lora_embeddings_b.assign(np.full((2, D), 0.1, "float32"))
    model = keras.Model(inputs, keras.layers.Dense(1, kernel_initializer="ones")(embedded))
    model.compile(keras.optimizers.SGD(0.1), "mse")
    return model


def data(state):
    import numpy as np

    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, (STEPS * BATCH, L)).astype("int32")
    target = rng.standard_normal((STEPS * BATCH, 1)).astype("float32")
    if state == "dynamic":
        return ids * 7919 - 30000, target
    return ({"bag": ids, "other": (ids * 5) % V} if state == "collection" else ids), target


def local_half(array, index):
    """Process `index`'s half of every global batch."""
    half = BATCH // 2
    rows = [row for start in range(0, len(array), BATCH) for row in range(start + index * half, start + (index + 1) * half)]
    return array[rows]


def main(mode, *args):
    import jax

    if mode == "process":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"127.0.0.1:{args[1]}", num_processes=2, process_id=int(args[0]))
    import keras
    import numpy as np
    from jax.experimental import multihost_utils

    def distributions():
        if mode == "single":
            return {"single": None}
        devices = jax.devices()
        layout_map = keras.distribution.LayoutMap(keras.distribution.DeviceMesh((4,), ["model"], devices))
        layout_map[r".*embeddings.*"] = ("model", None)
        result = {"data_parallel": keras.distribution.DataParallel(devices=devices),
                  "model_parallel": keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="model")}
        for distribution in result.values():
            distribution.auto_shard_dataset = False  # each process feeds its half itself
        return result

    weights = {}
    for name, distribution in distributions().items():
        for state in STATES:
            x, y = data(state)
            batch = BATCH
            if distribution is not None:
                index = jax.process_index()
                x = keras.tree.map_structure(lambda a: local_half(a, index), x)
                y, batch = local_half(y, index), BATCH // 2
            with distribution.scope() if distribution is not None else _nothing():
                model = build(state)
                if distribution is None:
                    for i, variable in enumerate(model.variables):
                        weights[f"initial/{state}/{i}"] = np.asarray(variable.value)
                model.fit(x, y, batch_size=batch, epochs=2, shuffle=False, verbose=0)
            for i, variable in enumerate(model.variables):
                value = multihost_utils.process_allgather(variable.value, tiled=True)
                weights[f"{name}/{state}/{i}"] = np.asarray(value)
    if mode == "single" or jax.process_index() == 0:
        np.savez(args[-1], **weights)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    if sys.argv[1] == "process":
        os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    main(*sys.argv[1:])

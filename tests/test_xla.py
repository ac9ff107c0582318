"""TensorFlow: a train step compiled by XLA (`jit_compile=True`, keras' default where a
GPU is present) trains every state as the uncompiled step does."""

import keras
import numpy as np
import pytest

import keras_embed_ext as kee
from conftest import BACKEND, table

V, D, L = 30, 4, 5


def model(state):
    ids = keras.Input((L,), dtype="int32")
    if state == "collection":
        tables = [kee.TableConfig("a", V, D, optimizer="adagrad", initializer=keras.initializers.Constant(0.1)),
                  kee.TableConfig("b", V, D, optimizer="ftrl", combiner="sum")]
        configs = {"x": kee.FeatureConfig("x", tables[0], (8, L), (8, D)),
                   "y": kee.FeatureConfig("y", tables[1], (8, L), (8, D))}
        outputs = kee.DistributedEmbedding(configs)({"x": ids, "y": ids})
        return keras.Model(ids, keras.layers.Dense(1)(outputs["x"] + outputs["y"]))
    if state.startswith("reversible"):
        layer = kee.ReversibleEmbedding(V, D, weights=table(V, D))
        logits = layer(layer(ids), reverse=True)
        return keras.Model(ids, keras.ops.mean(logits, axis=(1, 2))[:, None])
    kwargs = {"weights": table(V, D), "combiner": "mean", "mask_zero": True}
    if state.startswith("sparse"):
        kwargs["sparse_optimizer"] = "adagrad"
    layer = kee.Embedding(V, D, **kwargs)
    built = keras.Model(ids, keras.layers.Dense(1)(layer(ids)))
    if state == "lora":
        layer.enable_lora(2)
    if state.startswith("int"):
        layer.quantize(state)
        layer.enable_lora(2)
    return built


if BACKEND == "tensorflow":  # XLA compiles keras' TensorFlow train step

    @pytest.mark.parametrize("state", ["float", "lora", "int8", "int4", "sparse", "reversible", "collection"])
    def test_xla_compiled_step_trains_as_the_uncompiled_one(state):
        rng = np.random.default_rng(0)
        ids = rng.integers(0, V, (8, L)).astype("int32")
        y = rng.standard_normal((8, 1)).astype("float32")
        trained = []
        for jit_compile in (False, True):
            keras.utils.set_random_seed(0)
            m = model(state)
            m.compile(keras.optimizers.SGD(0.1), "mse", jit_compile=jit_compile)
            before = [w.copy() for w in m.get_weights()]
            for _ in range(3):
                m.train_on_batch(ids, y)
            trained.append(m.get_weights())
        for compiled, plain in zip(*trained[::-1]):
            np.testing.assert_allclose(compiled, plain, rtol=1e-5, atol=1e-6)
        assert any(not np.allclose(a, b) for a, b in zip(trained[0], before))

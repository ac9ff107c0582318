"""Shared helpers: every test runs on the backend named by KERAS_BACKEND."""

import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()

if BACKEND == "jax":
    import jax

    # The references are float32 numpy products; XLA's GPU default multiplies float32
    # in TF32, whose 10-bit mantissa is further off than any tolerance here.
    jax.config.update("jax_default_matmul_precision", "highest")


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def traced(fn, compiled=False):
    """`fn` as each backend compiles it: tf.function, jax.jit, torch.compile.

    With `compiled`, down to machine code on every backend: XLA on TensorFlow and
    inductor on torch (otherwise a traced graph run op by op).
    """
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=compiled)
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    import torch

    return torch.compile(fn, backend="inductor" if compiled else "eager")


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    # Without keras' full garbage collection, which took as long as the average test.
    keras.utils.clear_session(free_memory=False)
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")


def table(input_dim, output_dim, seed=0):
    """A reproducible float32 table with rows of varied scale."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.1, 3.0, size=(input_dim, 1))
    return (rng.standard_normal((input_dim, output_dim)) * scale).astype("float32")


def gradients(layer, ids, upstream, compiled=False, **call_kwargs):
    """d sum(layer(ids, **call_kwargs) * upstream) / d each trainable variable, as dense
    numpy arrays (zeros for variables the output does not depend on); with `compiled`,
    computed by a function that `traced(..., compiled=True)` compiles."""
    ids = keras.ops.convert_to_tensor(ids)
    run = (lambda fn: traced(fn, compiled=True)) if compiled else (lambda fn: fn)
    variables = layer.trainable_variables
    if BACKEND == "tensorflow":
        import tensorflow as tf

        def tape_gradients(ids):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(layer(ids, **call_kwargs) * upstream)
            return tape.gradient(loss, [v.value for v in variables], unconnected_gradients="zero")

        grads = run(tape_gradients)(ids)
        return [to_numpy(tf.convert_to_tensor(g)) for g in grads]
    if BACKEND == "jax":
        import jax

        def loss(values, ids):
            frozen = [v.value for v in layer.non_trainable_variables]
            outputs, _ = layer.stateless_call(values, frozen, ids, **call_kwargs)
            return (outputs * upstream).sum()

        return [to_numpy(g) for g in run(jax.grad(loss))([v.value for v in variables], ids)]
    import torch

    def loss(ids):
        return (layer(ids, **call_kwargs) * keras.ops.convert_to_tensor(upstream)).sum()  # on the layer's device

    for v in variables:
        v.value.grad = None
    run(loss)(ids).backward()
    return [np.zeros(v.shape, v.dtype) if v.value.grad is None else to_numpy(v.value.grad) for v in variables]

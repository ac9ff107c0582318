"""Ragged (TensorFlow) and sparse (TensorFlow, JAX) ids, brought to dense ids plus a presence mask."""

import sys

import keras


def _tf():
    """TensorFlow if it is in use here, without importing it for other backends."""
    return sys.modules.get("tensorflow")


def is_ragged(x) -> bool:
    tf = _tf()
    return tf is not None and isinstance(x, tf.RaggedTensor)


def is_sparse(x) -> bool:
    tf = _tf()
    if tf is not None and isinstance(x, tf.SparseTensor):
        return True
    if keras.backend.backend() == "jax":
        from jax.experimental import sparse as jax_sparse

        return isinstance(x, jax_sparse.BCOO)
    return False


def map_ragged_values(fn, ragged):
    """Applies `fn` to the flat ids of a `tf.RaggedTensor`; ragged rows out."""
    return _tf().ragged.map_flat_values(fn, ragged)


def ragged_to_padded(ragged):
    """`(ids, present)`: a ragged bag padded with 0, and 1.0 where an id is present."""
    tf = _tf()
    present = ragged.with_flat_values(tf.ones_like(ragged.flat_values, dtype=tf.float32))
    return ragged.to_tensor(0), present.to_tensor(0.0)


def sparse_to_padded(x):
    """`(ids, present)`: the sparse ids densified with 0, and 1.0 at present entries."""
    tf = _tf()
    if tf is not None and isinstance(x, tf.SparseTensor):
        ones = tf.SparseTensor(x.indices, tf.ones_like(x.values, tf.float32), x.dense_shape)
        return tf.sparse.to_dense(x), tf.sparse.to_dense(ones)
    from jax import numpy as jnp
    from jax.experimental import sparse as jax_sparse

    ones = jax_sparse.BCOO((jnp.ones_like(x.data, jnp.float32), x.indices), shape=x.shape)
    return x.todense(), ones.todense()

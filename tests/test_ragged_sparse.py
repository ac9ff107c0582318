"""Ragged ids (TensorFlow), sparse ids (TensorFlow, JAX), and the error where a backend has neither.

Each backend runs the cases that exist on it; none is skipped.
"""

import re

import keras
import numpy as np
import pytest

import keras_embed_ext as kee
from conftest import BACKEND, table, to_numpy

V, D = 20, 4
BAGS = [[3, 5, 7], [], [1], [19, 19, 0, 2]]
COMBINERS = ["sum", "mean", "sqrtn"]
STATES = ["float", "lora", "int8", "int4"]


def in_state(state, **kwargs):
    layer = kee.Embedding(V, D, weights=table(V, D), **kwargs)
    if state.startswith("int"):
        layer.quantize(state)
    if state == "lora":
        layer.enable_lora(2)
        layer.lora_embeddings_b.assign(np.ones((2, D), "float32"))
    return layer


def numpy_bags(effective, bags, combiner, weights=None):
    out = []
    for i, bag in enumerate(bags):
        w = np.ones(len(bag)) if weights is None else np.asarray(weights[i], "float64")
        total = (effective[bag] * w[:, None]).sum(0) if bag else np.zeros(D)
        norm = {"sum": 1.0, "mean": w.sum(), "sqrtn": np.sqrt((w ** 2).sum())}[combiner]
        out.append(total / (norm if norm else 1.0))
    return np.stack(out)


def sparse_from_bags(bags, values=None):
    """Sparse (len(bags), 4) ids: entry j of bag i at [i, j]."""
    indices = np.array([[i, j] for i, bag in enumerate(bags) for j in range(len(bag))], "int64")
    data = np.array([v for bag in bags for v in bag]) if values is None else np.asarray(values)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.SparseTensor(indices, data, (len(bags), 4))
    from jax.experimental import sparse as jax_sparse

    return jax_sparse.BCOO((data, indices.astype("int32")), shape=(len(bags), 4))


def multi_hot(bags, weights):
    """Sparse (len(bags), V) with weight w at [i, id]."""
    indices = np.array([[i, v] for i, bag in enumerate(bags) for v in bag], "int64")
    data = np.array([w for ws in weights for w in ws], "float32")
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.SparseTensor(indices, data, (len(bags), V))
    from jax.experimental import sparse as jax_sparse

    return jax_sparse.BCOO((data, indices.astype("int32")), shape=(len(bags), V))


if BACKEND in ("tensorflow", "jax"):
    UNIQUE_BAGS = [[3, 5, 7], [], [1], [19, 0, 2]]

    @pytest.mark.parametrize("state", STATES)
    def test_sparse_ids_give_the_dense_lookup_with_zero_rows_where_missing(state):
        layer = in_state(state)
        out = to_numpy(layer(sparse_from_bags(BAGS)))
        effective = to_numpy(layer.embeddings)
        expected = np.zeros((len(BAGS), 4, D), "float32")
        for i, bag in enumerate(BAGS):
            expected[i, :len(bag)] = effective[bag]
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)

    @pytest.mark.parametrize("combiner", COMBINERS)
    @pytest.mark.parametrize("state", STATES)
    def test_sparse_bags_reduce_over_present_ids(state, combiner):
        layer = in_state(state, combiner=combiner)
        expected = numpy_bags(to_numpy(layer.embeddings), BAGS, combiner)
        np.testing.assert_allclose(to_numpy(layer(sparse_from_bags(BAGS))), expected, rtol=1e-5, atol=1e-6)

    @pytest.mark.parametrize("combiner", COMBINERS)
    def test_weighted_bags_from_sparse_weights_and_from_multi_hot_values(combiner):
        weights = [[0.5, 2.0, 1.0], [], [3.0], [1.0, 0.25, 2.0]]
        layer = in_state("float", combiner=combiner)
        expected = numpy_bags(table(V, D), UNIQUE_BAGS, combiner, weights)
        flat_weights = [w for ws in weights for w in ws]
        out = layer(sparse_from_bags(UNIQUE_BAGS), weights=sparse_from_bags(UNIQUE_BAGS, np.float32(flat_weights)))
        np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(to_numpy(layer(multi_hot(UNIQUE_BAGS, weights))), expected, rtol=1e-5, atol=1e-6)

    def test_float_sparse_without_combiner_is_an_error():
        with pytest.raises(ValueError, match="needs a combiner"):
            in_state("float")(multi_hot([[1]], [[1.0]]))

    def test_mask_zero_leaves_padding_out_of_sparse_bags():
        layer = in_state("float", combiner="mean", mask_zero=True)
        out = to_numpy(layer(sparse_from_bags([[0, 4], [0]])))
        np.testing.assert_allclose(out, np.stack([table(V, D)[4], np.zeros(D)]), rtol=1e-6)

if BACKEND == "tensorflow":
    import tensorflow as tf

    @pytest.mark.parametrize("state", STATES)
    def test_ragged_ids_give_ragged_rows_equal_to_dense_lookup(state):
        layer = in_state(state, mask_zero=True)
        ragged = tf.ragged.constant(BAGS, dtype="int32")
        out = layer(ragged)
        assert isinstance(out, tf.RaggedTensor)
        np.testing.assert_array_equal(out.row_lengths().numpy(), [len(b) for b in BAGS])
        effective = to_numpy(layer.embeddings)
        np.testing.assert_allclose(out.flat_values.numpy(), effective[np.concatenate(BAGS).astype(int)],
                                   rtol=1e-5, atol=1e-6)
        assert layer.compute_mask(ragged) is None

    @pytest.mark.parametrize("combiner", COMBINERS)
    @pytest.mark.parametrize("state", STATES)
    def test_ragged_bags_reduce_over_present_ids(state, combiner):
        layer = in_state(state, combiner=combiner)
        out = layer(tf.ragged.constant(BAGS, dtype="int64"))
        np.testing.assert_allclose(to_numpy(out), numpy_bags(to_numpy(layer.embeddings), BAGS, combiner),
                                   rtol=1e-5, atol=1e-6)

    @pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
    @pytest.mark.parametrize("combiner", COMBINERS)
    def test_ragged_weights_of_any_float_dtype_weight_their_ids(combiner, dtype):
        # Dense and sparse per-id weights are cast to float32; ragged ones must be too.
        weights = [[0.5, 2.0, 1.0], [], [3.0], [1.0, 0.25, 2.0, 0.5]]
        layer = in_state("float", combiner=combiner)
        out = layer(tf.ragged.constant(BAGS, dtype="int32"), weights=tf.ragged.constant(weights, dtype=dtype))
        np.testing.assert_allclose(to_numpy(out), numpy_bags(table(V, D), BAGS, combiner, weights),
                                   rtol=1e-5, atol=1e-6)

    def test_ragged_ids_with_dense_weights_are_an_error():
        layer = in_state("float", combiner="sum")
        message = "Ragged ids take ragged per-id `weights` with the same row lengths. Received: weights of type ndarray."
        with pytest.raises(ValueError, match=re.escape(message)):
            layer(tf.ragged.constant(BAGS, dtype="int32"), weights=np.ones((4, 4), "float32"))

    def test_ragged_input_in_a_functional_model_and_fit():
        inputs = keras.Input((None,), dtype="int32", ragged=True)
        bags = kee.Embedding(V, D, combiner="mean")(inputs)
        model = keras.Model(inputs, keras.layers.Dense(1)(bags))
        model.compile("adam", "mse")
        x = tf.ragged.constant([[1, 2, 3], [4], [5, 6]] * 8)
        history = model.fit(x, np.ones((24, 1)), epochs=3, batch_size=8, verbose=0)
        assert history.history["loss"][-1] < history.history["loss"][0]

    def test_gradients_of_ragged_and_sparse_lookups_are_indexed_slices():
        layer = in_state("float", combiner="sum")
        for ids in (tf.ragged.constant(BAGS, dtype="int32"), sparse_from_bags(BAGS)):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(layer(ids))
            grad = tape.gradient(loss, layer.embeddings.value)
            assert isinstance(grad, tf.IndexedSlices)
            dense = tf.convert_to_tensor(grad).numpy()
            counts = np.bincount(np.concatenate(BAGS).astype(int), minlength=V)
            np.testing.assert_allclose(dense, np.repeat(counts[:, None], D, 1), rtol=1e-6)

if BACKEND == "jax":
    def test_sparse_bag_gradient_matches_hand_computed():
        import jax

        layer = in_state("float", combiner="sqrtn")
        ids = sparse_from_bags(BAGS)

        def loss(embeddings):
            values, _ = layer.stateless_call([embeddings], [], ids)
            return values.sum()

        grad = np.asarray(jax.grad(loss)(layer.embeddings.value))
        # d/dE[r] of sum(bag sum / sqrt(len)) = occurrences of r in the bag / sqrt(len).
        expected = np.zeros((V, D))
        for bag in BAGS:
            for r in bag:
                expected[r] += 1 / np.sqrt(len(bag))
        np.testing.assert_allclose(grad, expected, rtol=1e-6)

if BACKEND == "torch":
    def test_torch_sparse_ids_get_a_clear_error():
        import torch

        ids = torch.sparse_coo_tensor(torch.tensor([[0, 1], [1, 0]]), torch.tensor([3, 4]), (2, 2))
        with pytest.raises(ValueError, match="no such tensors in Keras.*mask_zero=True"):
            kee.Embedding(V, D)(ids)

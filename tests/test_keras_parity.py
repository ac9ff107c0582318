"""Faults found from outside and keras' layer API that keras' own tests read."""

import keras
import numpy as np
import pytest

import keras_embed_ext as kee
from conftest import BACKEND, gradients, table, to_numpy

V, D = 10, 4


@pytest.mark.parametrize("output_dim", [128, 256])
def test_empty_ids_on_an_int4_table_of_whole_blocks(output_dim):
    layer = kee.Embedding(V, output_dim)
    layer.build()
    layer.quantize("int4")
    assert tuple(layer(np.zeros((0,), "int32")).shape) == (0, output_dim)
    assert tuple(layer(np.zeros((2, 0), "int32")).shape) == (2, 0, output_dim)


@pytest.mark.parametrize("mode, block_size", [("int8", None), ("int4", -1), ("int4", 128)])
def test_a_scalar_id_on_a_quantized_table(mode, block_size):
    layer = kee.Embedding(V, D, weights=table(V, D))
    config = keras.quantizers.Int4QuantizationConfig(block_size=block_size) if mode == "int4" else None
    layer.quantize(mode, config=config)
    rows = to_numpy(layer(np.array([3, 7])))
    np.testing.assert_array_equal(to_numpy(layer(3)), rows[0])
    assert layer._int4_block_size == (block_size if mode == "int4" else None)


def test_sqrtn_weights_gradient_of_an_empty_bag_is_zero_not_nan():
    layer = kee.Embedding(V, D, weights=table(V, D), combiner="sqrtn", mask_zero=True)
    ids = np.array([[0, 0, 0], [1, 2, 0], [3, 4, 5]], "int32")
    weights = keras.Variable(np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 1.0], [1.0, 2.0, 3.0]], "float32"))

    class Weighted(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.weights_variable = weights

        def call(self, ids):
            return layer(ids, weights=keras.ops.convert_to_tensor(self.weights_variable))

    wrapper = Weighted()
    wrapper(ids)
    upstream = np.random.default_rng(0).standard_normal((3, D)).astype("float32")
    grads = gradients(wrapper, ids, upstream)
    assert all(np.isfinite(g).all() for g in grads)
    # The all-padding bag gets no gradient; a bag of zero weights gets the gradient of
    # its sum (it is divided by 1).
    weight_grad = next(g for g in grads if g.shape == (3, 3))
    np.testing.assert_array_equal(weight_grad[0], 0)
    rows = table(V, D)
    np.testing.assert_allclose(weight_grad[1, :2], rows[[1, 2]] @ upstream[1], rtol=1e-5)


def test_quantize_of_a_subclass_needs_its_own_quantize_as_in_keras():
    class Subclass(kee.Embedding):
        pass

    layer = Subclass(V, D)
    layer.build()
    with pytest.raises(NotImplementedError, match="does not have a `quantize` method"):
        layer.quantize("int8")
    layer.quantize("int8", type_check=False)
    assert layer.quantization_mode == "int8"


def test_quantized_build_and_call_check_the_mode():
    layer = kee.Embedding(V, D)
    with pytest.raises(NotImplementedError, match="Invalid quantization mode"):
        layer.quantized_build((V, D), mode="int2")
    layer.build()
    with pytest.raises(NotImplementedError, match="Invalid quantization mode"):
        layer.quantized_call(np.array([1]))
    fresh = kee.Embedding(V, D)
    fresh.quantized_build((V, D), mode="int8")
    assert [v.path.split("/")[-1] for v in fresh.weights] == ["embeddings", "embeddings_scale"]


def test_lora_enabled_twice_has_keras_wording():
    layer = kee.Embedding(V, D, lora_rank=2)
    layer.build()
    with pytest.raises(ValueError, match="lora is already enabled"):
        layer.enable_lora(2)


if BACKEND == "jax":

    def test_bcoo_ids_with_a_batch_dimension():
        from jax.experimental import sparse as jax_sparse

        ids = np.array([[1, 0, 3], [0, 0, 0], [2, 5, 0]], "int32")
        layer = kee.Embedding(V, D, weights=table(V, D))
        expected = np.where((ids != 0)[..., None], table(V, D)[ids], 0)
        for n_batch in (0, 1):
            np.testing.assert_array_equal(to_numpy(layer(jax_sparse.BCOO.fromdense(ids, n_batch=n_batch))), expected)
        bags = kee.Embedding(V, D, weights=table(V, D), combiner="sum")
        np.testing.assert_allclose(
            to_numpy(bags(jax_sparse.BCOO.fromdense(ids, n_batch=1))), expected.sum(axis=1), rtol=1e-6
        )


def _store(*arrays):
    return {str(index): array for index, array in enumerate(arrays)}


def test_a_file_of_another_integer_dtype_or_bools_is_refused():
    layer = kee.Embedding(V, D, weights=table(V, D))
    layer.quantize("int8")
    values, scale = (to_numpy(v) for v in layer.weights)
    with pytest.raises(ValueError, match="int32"):
        layer.load_own_variables(_store(values.astype("int32"), scale))
    floats = kee.Embedding(V, D)
    floats.build()
    with pytest.raises(ValueError, match="bool"):
        floats.load_own_variables(_store(np.ones((V, D), bool)))


def test_a_file_with_a_gap_in_its_keys_is_refused():
    layer = kee.Embedding(V, D)
    layer.build()
    with pytest.raises(ValueError, match="keys must be 0 to 1"):
        layer.load_own_variables({"0": table(V, D), "2": table(V, D)})


def test_a_file_whose_g_idx_is_not_the_block_of_each_value_is_refused():
    layer = kee.Embedding(V, 16, weights=table(V, 16))
    layer.quantize("int4", config=keras.quantizers.Int4QuantizationConfig(block_size=8))
    stored = [to_numpy(v) for v in layer.weights]
    stored[3] = stored[3] + 5
    with pytest.raises(ValueError, match="g_idx"):
        layer.load_own_variables(_store(*stored))


def test_weights_holding_a_table_and_another_array_is_a_clear_error():
    with pytest.raises(ValueError, match="a list of 2 arrays"):
        kee.Embedding(V, D, weights=[table(V, D), np.ones(D, "float32")])
    nested = table(V, D).tolist()
    np.testing.assert_array_equal(to_numpy(kee.Embedding(V, D, weights=nested).embeddings), table(V, D))


# Per-row, the packed shapes of 7 and 8 values agree; block-wise, `g_idx` differs.
@pytest.mark.parametrize("block_size, message", [(-1, "saved with output_dim=8"), (8, r"g_idx \(7,\)")])
def test_an_int4_file_of_a_wider_output_dim_is_refused(block_size, message):
    config = keras.quantizers.Int4QuantizationConfig(block_size=block_size)

    def quantized(output_dim):
        layer = kee.Embedding(V, output_dim, weights=table(V, output_dim))
        layer.quantize("int4", config=config)
        return layer

    wide, narrow = quantized(8), quantized(7)
    narrow.load_own_variables(_store(*(to_numpy(v) for v in quantized(7).weights)))
    with pytest.raises(ValueError, match=message):
        narrow.load_own_variables(_store(*(to_numpy(v) for v in wide.weights)))


if BACKEND == "torch":  # Dynamo's recompile limit is torch.compile's

    def test_torch_compile_past_its_recompile_limit_still_gives_zero_rows():
        import torch

        layer = kee.Embedding(V, D, weights=table(V, D))
        compiled = torch.compile(lambda ids: layer(ids), backend="eager", dynamic=False)
        limit = torch._dynamo.config.recompile_limit
        for length in range(1, limit + 1):  # one compile per shape, up to the limit
            compiled(torch.zeros(length, dtype=torch.int32))
        # Dynamo now runs the function eagerly; it is still the compiled function.
        ids = torch.tensor([1] * limit + [V], dtype=torch.int32)
        rows = to_numpy(compiled(ids))
        np.testing.assert_array_equal(rows[-1], np.zeros(D, "float32"))
        np.testing.assert_array_equal(rows[0], table(V, D)[1])
        with pytest.raises(ValueError, match=f"got id {V}"):
            layer(ids)

"""The backend-specific paths: each one checked on its own backend against the generic one."""

from unittest import mock

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import keras_embed_ext as kee
import reference as ref
from conftest import BACKEND, gradients, table, to_numpy, traced
from keras_embed_ext.backends.arithmetic import add_matmul
from keras_embed_ext.backends.arithmetic import add_product
from keras_embed_ext.backends.arithmetic import add_quotient
from keras_embed_ext.backends.arithmetic import any_nonzero
from keras_embed_ext.backends.arithmetic import in_place
from keras_embed_ext.backends.devices import on_accelerator
from keras_embed_ext.backends.devices import to_host
from keras_embed_ext.backends.int4 import take_int4_rows
from keras_embed_ext.backends.int4 import unpack_int4
from keras_embed_ext.backends.rows import scatter_into
from keras_embed_ext.backends.rows import take_rows
from keras_embed_ext.backends.rows import weighted_bag_sum

IDS = np.random.default_rng(0).integers(0, 50, size=(6, 7)).astype("int32")


if BACKEND == "jax":
    def test_traced_ids_are_recognised_under_jit():
        import jax

        from keras_embed_ext.backends.context import is_traced

        assert jax.jit(lambda x: np.int32(is_traced(x)) + x * 0)(np.int32(1)) == 1
        assert not is_traced(jax.numpy.ones(2))


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8", "float32", "float16", "bfloat16"])
def test_to_host_reads_the_values_of_an_eager_tensor(dtype):
    values = np.array([[3, 0, 7], [250, 1, 2]])
    x = keras.ops.convert_to_tensor(values, dtype)
    host = to_host(x)
    assert isinstance(host, np.ndarray) and host.shape == (2, 3)
    np.testing.assert_array_equal(host.astype("float64"), values)


@given(
    vocab=st.integers(1, 40),
    ids_shape=st.lists(st.integers(0, 5), max_size=3),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=30, deadline=None)
def test_take_rows_equals_numpy_gather(vocab, ids_shape, seed):
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((vocab, 3)).astype("float32")
    ids = rng.integers(0, vocab, size=ids_shape).astype("int32")
    variable = keras.Variable(values)
    for source in (variable, keras.ops.convert_to_tensor(values)):
        rows = to_numpy(take_rows(source, keras.ops.convert_to_tensor(ids)))
        np.testing.assert_array_equal(rows, values[ids])


@given(
    vocab=st.integers(1, 40),
    ids_shape=st.lists(st.integers(0, 5), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=30, deadline=None)
def test_weighted_bag_sum_equals_numpy(vocab, ids_shape, seed):
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((vocab, 3)).astype("float32")
    ids = rng.integers(0, vocab, size=ids_shape).astype("int32")
    weights = rng.uniform(-2, 2, size=ids_shape).astype("float32")
    expected = (values[ids] * weights[..., None]).sum(-2)
    for source in (keras.Variable(values), keras.ops.convert_to_tensor(values)):
        sums = to_numpy(weighted_bag_sum(source, *map(keras.ops.convert_to_tensor, (ids, weights))))
        assert sums.shape == expected.shape
        np.testing.assert_allclose(sums, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bag_size", [1, 64, 65])  # on JAX, traced: a sum of gathers up to 64
def test_traced_weighted_bag_sum_equals_numpy(bag_size):
    rng = np.random.default_rng(bag_size)
    values = rng.standard_normal((50, 3)).astype("float32")
    ids = rng.integers(0, 50, size=(2, 3, bag_size)).astype("int32")
    weights = rng.uniform(-2, 2, size=ids.shape).astype("float32")
    sums = traced(weighted_bag_sum)(*map(keras.ops.convert_to_tensor, (values, ids, weights)))
    np.testing.assert_allclose(to_numpy(sums), (values[ids] * weights[..., None]).sum(-2), rtol=1e-5, atol=1e-5)


def test_take_rows_gradient_is_a_scatter_add_of_the_row_gradients():
    layer = kee.Embedding(9, 4, weights=table(9, 4))
    ids = np.array([[1, 3], [3, 8]], dtype="int32")
    upstream = np.arange(16, dtype="float32").reshape(2, 2, 4)
    expected = np.zeros((9, 4), dtype="float32")
    np.add.at(expected, ids, upstream)
    (gradient,) = gradients(layer, ids, upstream)
    np.testing.assert_array_equal(gradient, expected)


if BACKEND == "tensorflow":
    CALLS = ("PartitionedCall", "StatefulPartitionedCall")

    def _ops_reading(library, nodes, name):
        """Types of the ops that read tensor `name` among `nodes`, followed into called functions."""
        found = []
        for node in nodes:
            inputs = [i.split(":")[0] for i in node.input]
            if name not in inputs:
                continue
            if node.op not in CALLS:
                found.append(node.op)
                continue
            called = library[node.attr["f"].func.name]
            argument = called.signature.input_arg[inputs.index(name)].name
            found += _ops_reading(library, called.node_def, argument)
        return sorted(found)

    def _written_shapes(compiled, *args):
        """Shapes of the buffers that XLA's optimized HLO of `compiled(*args)` writes."""
        import re

        hlo = compiled.experimental_get_compiler_ir(*args)(stage="optimized_hlo")
        entry = hlo.split("\nENTRY ")[1].splitlines()[1:]
        written = [re.match(r"\s*(?:ROOT )?%\S+ = \w+\[([\d,]*)\]", line) for line in entry]
        return [m.group(1) for m, line in zip(written, entry) if m and " parameter(" not in line]

    @pytest.mark.parametrize("state", ["lora", "int8_lora"])
    def test_lookup_reads_only_the_rows_of_the_table_and_adapter(state):
        # A dense read (ReadVariableOp) of a variable that a sparse optimizer step
        # has touched copies the whole table; a ResourceGather reads the rows only.
        import tensorflow as tf

        layer = kee.Embedding(1000, 8, lora_rank=2)
        layer.build()
        if state == "int8_lora":
            layer.quantize("int8")
        graph = tf.function(layer).get_concrete_function(tf.TensorSpec((4,), "int32")).graph
        graph_def = graph.as_graph_def()
        library = {f.signature.name: f for f in graph_def.library.function}
        handles = {id(v.value.handle) for v in (layer._embeddings, layer.lora_embeddings_a)}
        reads = [
            _ops_reading(library, graph_def.node, placeholder.op.name)
            for external, placeholder in graph.captures
            if id(external) in handles
        ]
        assert reads == [["ResourceGather"], ["ResourceGather"]]

    @pytest.mark.parametrize("state", ["int4", "int4_lora"])
    def test_compiled_int4_lookup_writes_no_buffer_of_the_table_size(state):
        # The lookup shifts the whole packed table and gathers; XLA must fuse the
        # shifts into the gather, unpacking only the looked-up rows.
        import tensorflow as tf

        vocab = 5003
        layer = kee.Embedding(vocab, 12)
        layer.build()
        layer.quantize("int4")
        if state == "int4_lora":
            layer.enable_lora(2)
        ids = tf.constant([[1, 7, vocab - 1]])
        layer(ids)
        fused = layer._table._fused_lookup
        shapes = _written_shapes(fused.compiled, fused.variables, ids, None)
        assert shapes and not [shape for shape in shapes if shape.startswith(f"{vocab},")]

    def test_eager_bags_of_a_float_table_are_compiled_by_xla_and_write_no_rows():
        # Eagerly, gather, multiply and sum each write their result: the (bags, L, D)
        # rows twice. Compiled by XLA, the gather is fused into the sum.
        import tensorflow as tf

        values = table(1000, 8)
        layer = kee.Embedding(1000, 8, weights=values, combiner="mean", mask_zero=True)
        ids = np.random.default_rng(0).integers(0, 1000, (6, 5)).astype("int32")
        ids[:, 3:] = 0
        expected = values[ids[:, :3]].mean(axis=1)
        np.testing.assert_allclose(to_numpy(layer(tf.constant(ids))), expected, rtol=1e-6)
        fused = layer._fused_float_bags
        shapes = _written_shapes(fused.compiled, fused.variables, tf.constant(ids), None, None, None)
        assert shapes and "6,5,8" not in shapes

    @pytest.mark.parametrize("combiner", [None, "mean"])
    def test_layers_and_states_share_compiled_functions_each_reading_its_own_table(combiner):
        # TensorFlow keeps every executable XLA compiles: one compiled function per
        # layer or per enable_lora would grow memory with each.
        import tensorflow as tf

        from keras_embed_ext.backends import fused

        ids = tf.constant([[1, 7, 3], [0, 2, 9]])

        def check(layer, values):
            rows = values[ids.numpy()]
            expected = rows if combiner is None else rows.mean(axis=1)
            np.testing.assert_allclose(to_numpy(layer(ids)), expected, rtol=1e-5, atol=1e-6)

        def cycle(seed):
            values = table(10, 8, seed=seed)
            layer = kee.Embedding(10, 8, weights=values, combiner=combiner)
            check(layer, values)  # float
            layer.enable_lora(2)
            check(layer, values)  # the adapter's delta starts at zero
            layer.lora_embeddings_b.assign(np.full((2, 8), 0.5, "float32"))
            layer.merge_lora()
            check(layer, to_numpy(layer.embeddings))
            layer.quantize("int8")
            check(layer, to_numpy(layer.embeddings))

        cycle(0)
        compiled = dict(fused._COMPILED)
        traces = {key: fn.experimental_get_tracing_count() for key, fn in compiled.items()}
        for seed in range(1, 4):
            cycle(seed)
        assert fused._COMPILED == compiled
        assert {key: fn.experimental_get_tracing_count() for key, fn in compiled.items()} == traces

    def test_sgd_on_the_table_updates_only_the_looked_up_rows():
        import tensorflow as tf

        layer = kee.Embedding(20, 4, weights=table(20, 4))
        before = to_numpy(layer._embeddings)
        ids = tf.constant([[2, 5], [5, 11]])
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(ids))
        gradient = tape.gradient(loss, layer._embeddings.value)
        assert isinstance(gradient, tf.IndexedSlices)
        keras.optimizers.SGD(0.5).apply([gradient], [layer._embeddings])
        expected = before.copy()
        np.add.at(expected, ids.numpy(), -0.5)
        np.testing.assert_allclose(to_numpy(layer._embeddings), expected, rtol=1e-6)

    @pytest.mark.parametrize("compiled", [False, True])
    def test_gradient_of_rows_taken_from_a_tensor_is_sparse_and_a_scatter_add(compiled):
        # A tensor table (an autocast read, a decoded table) goes through GatherV2.
        import tensorflow as tf

        values = tf.constant(table(9, 4))
        ids = tf.constant([[1, 3], [3, 8]])
        upstream = tf.reshape(tf.range(16, dtype="float32"), (2, 2, 4))

        def rows_gradient(values, ids):
            with tf.GradientTape() as tape:
                tape.watch(values)
                rows = take_rows(values, ids)
            return rows, tape.gradient(rows, values, output_gradients=upstream)

        rows, gradient = (traced(rows_gradient, compiled=True) if compiled else rows_gradient)(values, ids)
        np.testing.assert_array_equal(rows.numpy(), values.numpy()[ids.numpy()])
        if not compiled:
            assert isinstance(gradient, tf.IndexedSlices)
        expected = np.zeros((9, 4), dtype="float32")
        np.add.at(expected, ids.numpy(), upstream.numpy())
        np.testing.assert_array_equal(tf.convert_to_tensor(gradient).numpy(), expected)


@pytest.mark.parametrize("op, reference", [
    ("add", np.add), ("subtract", np.subtract), ("multiply", np.multiply), ("divide", np.divide),
])
def test_in_place_op_equals_numpy_and_reuses_the_fresh_tensor_on_torch(op, reference):
    rng = np.random.default_rng(2)
    fresh_values = rng.standard_normal((4, 3, 5)).astype("float32")
    other = rng.uniform(0.5, 2.0, size=(4, 3, 1)).astype("float32")
    fresh = keras.ops.convert_to_tensor(fresh_values)
    result = in_place(op, fresh, keras.ops.convert_to_tensor(other))
    np.testing.assert_allclose(to_numpy(result), reference(fresh_values, other), rtol=1e-6)
    if BACKEND == "torch":
        assert result.data_ptr() == fresh.data_ptr()


@pytest.mark.parametrize("fresh_shape, other_shape, result_shape", [
    ((3, 1), (1, 4), (3, 4)),
    ((3,), (2, 3), (2, 3)),
])
def test_in_place_op_broadcasting_to_a_larger_shape_makes_a_new_tensor(
    fresh_shape, other_shape, result_shape
):
    fresh = keras.ops.ones(fresh_shape)
    result = in_place("add", fresh, keras.ops.ones(other_shape))
    np.testing.assert_array_equal(to_numpy(result), np.full(result_shape, 2.0))
    np.testing.assert_array_equal(to_numpy(fresh), np.ones(fresh_shape))


def test_add_matmul_equals_numpy():
    rng = np.random.default_rng(3)
    rows, a, b = (rng.standard_normal(s).astype("float32") for s in [(2, 3, 6), (2, 3, 4), (4, 6)])
    fresh = keras.ops.convert_to_tensor(rows)
    result = add_matmul(fresh, keras.ops.convert_to_tensor(a), keras.ops.convert_to_tensor(b))
    np.testing.assert_allclose(to_numpy(result), rows + a @ b, rtol=1e-5, atol=1e-6)
    if BACKEND == "torch":
        assert result.data_ptr() == fresh.data_ptr()


@pytest.mark.parametrize("scale", [1.0, -1.0, -0.3, "tensor"])
def test_add_product_and_add_quotient_equal_numpy(scale):
    rng = np.random.default_rng(4)
    x, a, b = (rng.standard_normal((6, 5)).astype("float32") for _ in range(3))
    b = np.abs(b) + 0.5
    factor = np.float32(0.7) if scale == "tensor" else np.float32(scale)
    given = keras.ops.convert_to_tensor(factor) if scale == "tensor" else scale
    x_, a_, b_ = map(keras.ops.convert_to_tensor, (x, a, b))
    np.testing.assert_allclose(to_numpy(add_product(x_, a_, b_, given)), x + factor * a * b, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(to_numpy(add_quotient(x_, a_, b_, given)), x + factor * a / b, rtol=1e-6, atol=1e-6)


@settings(deadline=None, max_examples=20)
@given(rows=st.integers(1, 40), width=st.sampled_from([None, 1, 3, 16]),
       dtype=st.sampled_from(["float32", "bfloat16", "int32", "int64"]), seed=st.integers(0, 2**16))
def test_scatter_into_writes_the_rows_as_numpy_assigns_them(rows, width, dtype, seed):
    """`backends.rows.scatter_into` (whole rows by numpy on an eager torch CPU, each row
    one item of its bytes) equals numpy's assignment, for 1-D and 2-D variables."""
    rng = np.random.default_rng(seed)
    shape = (rows,) if width is None else (rows, width)
    start = rng.integers(-50, 50, shape).astype("float32")
    index = rng.choice(rows, rng.integers(0, rows + 1), replace=False).astype("int32")
    values = rng.integers(-50, 50, (len(index), *shape[1:])).astype("float32")
    variable = keras.Variable(start.astype(dtype) if dtype != "bfloat16" else start, dtype=dtype, trainable=False)
    scatter_into(variable, keras.ops.convert_to_tensor(index), keras.ops.convert_to_tensor(values, dtype))
    expected = start.copy()
    expected[index] = values
    np.testing.assert_array_equal(to_numpy(keras.ops.cast(variable.value, "float32")), expected)


@pytest.mark.parametrize("rank", [3, 20])  # multiply-adds and a matmul under torch.compile
def test_compiled_add_matmul_equals_numpy(rank):
    rng = np.random.default_rng(rank)
    rows, a, b = (rng.standard_normal(s).astype("float32") for s in [(5, 7), (5, rank), (rank, 7)])
    result = traced(add_matmul, compiled=True)(*map(keras.ops.convert_to_tensor, (rows, a, b)))
    np.testing.assert_allclose(to_numpy(result), rows + a @ b, rtol=1e-5, atol=1e-5)


@given(
    rows=st.integers(1, 9),
    width=st.integers(1, 9),
    ids_shape=st.lists(st.integers(0, 4), min_size=1, max_size=2),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=30, deadline=None)
def test_take_int4_rows_equals_numpy(rows, width, ids_shape, seed):
    rng = np.random.default_rng(seed)
    packed = rng.integers(-128, 128, size=(rows, width)).astype("int8")
    ids = rng.integers(0, rows, size=ids_shape).astype("int32")
    result = take_int4_rows(keras.Variable(packed, dtype="int8", trainable=False), keras.ops.convert_to_tensor(ids))
    assert keras.backend.standardize_dtype(result.dtype) == "int8"
    np.testing.assert_array_equal(to_numpy(result), ref.unpack_int4(packed, 2 * width)[ids])
    whole = take_int4_rows(keras.ops.convert_to_tensor(packed))
    np.testing.assert_array_equal(to_numpy(whole), ref.unpack_int4(packed, 2 * width))


@given(rows=st.integers(1, 5), width=st.integers(1, 6), seed=st.integers(0, 2**16))
@settings(max_examples=20, deadline=None)
def test_unpack_int4_along_the_first_axis_equals_numpy(rows, width, seed):
    """A `(D / 2, V)` kernel packed along `D`, as keras packs `reverse_embeddings`."""
    packed = np.random.default_rng(seed).integers(-128, 128, size=(rows, width)).astype("int8")
    result = unpack_int4(keras.ops.convert_to_tensor(packed), axis=0)
    assert keras.backend.standardize_dtype(result.dtype) == "int8"
    np.testing.assert_array_equal(to_numpy(result), ref.unpack_int4(packed.T, 2 * rows).T)


def test_take_int4_rows_in_one_compiled_function_with_the_whole_table():
    """The gather (JAX: int32 words bitcast to int4) and the whole-table unpack side by side."""
    packed = np.random.default_rng(5).integers(-128, 128, size=(7, 8)).astype("int8")
    ids = np.array([[6, 0], [3, 3]], "int32")

    def both(packed, ids):
        return take_int4_rows(packed, ids), take_int4_rows(packed)

    rows, whole = traced(both, compiled=True)(keras.ops.convert_to_tensor(packed), keras.ops.convert_to_tensor(ids))
    expected = ref.unpack_int4(packed, 16)
    np.testing.assert_array_equal(to_numpy(rows), expected[ids])
    np.testing.assert_array_equal(to_numpy(whole), expected)


def default_device_is_an_accelerator():
    """Where the backend puts a new tensor, by the backend's own account."""
    if BACKEND == "torch":
        import torch

        return torch.cuda.is_available()
    if BACKEND == "jax":
        import jax

        return jax.default_backend() != "cpu"
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


def test_on_accelerator_says_where_a_tensor_lives():
    accelerator = default_device_is_an_accelerator()
    assert on_accelerator(keras.ops.zeros((2, 3))) == accelerator
    assert on_accelerator(keras.Variable(np.zeros((2, 3), "float32"))) == accelerator
    assert to_numpy(traced(lambda x: x + float(on_accelerator(x)))(keras.ops.zeros(2)))[0] == float(accelerator)
    with keras.device("cpu:0"):
        assert not on_accelerator(keras.ops.zeros((2, 3)))


def _check_grouping(buckets, keys, compiled=False):
    """On TensorFlow both routes: numpy in a host callback (a CPU) and its own sorts
    (elsewhere). JAX groups by XLA's sort (on an accelerator, or in a distribution;
    on a CPU its whole admission is numpy's, `test_host_admission.py`)."""
    from keras_embed_ext.backends import keys as keys_module

    for on_host in (True, False) if BACKEND == "tensorflow" else (None,):
        with mock.patch.object(keys_module, "_sorts_on_host", lambda: on_host):
            group = keys_module.group_by_bucket_then_key
            group = traced(group) if compiled else group
            order, position = (to_numpy(x) for x in group(keras.ops.convert_to_tensor(buckets),
                                                          keras.ops.convert_to_tensor(keys)))
        _check_order(buckets, keys, order, position)


def _check_order(buckets, keys, order, position):
    expected = np.lexsort((keys, buckets))
    np.testing.assert_array_equal(keys[order], keys[expected])
    np.testing.assert_array_equal(buckets[order], buckets[expected])
    np.testing.assert_array_equal(keys[order][position], keys)
    np.testing.assert_array_equal(buckets[order][position], buckets)


@settings(deadline=None, max_examples=30)
@given(st.lists(st.tuples(st.integers(-2**63, 2**63 - 1), st.integers(0, 4)), min_size=1, max_size=40),
       st.integers(0, 3))
def test_keys_grouped_on_the_host_as_numpy_sorts_them(pairs, repeats):
    """The numpy grouping of TensorFlow and JAX on a CPU, for 64-bit keys (JAX with x64)
    and int32 ones."""
    from keras_embed_ext.backends.keys import _group_on_host

    keys = np.array([key for key, _ in pairs] * (repeats + 1), "int64")
    buckets = np.array([bucket for _, bucket in pairs] * (repeats + 1), "int32")
    for dtype in ("int64", "int32"):
        typed = keys.astype(dtype)  # int32: the low words, wrapped
        order, position = _group_on_host(buckets, typed)
        assert order.dtype == position.dtype == np.int32
        _check_order(buckets, typed, order, position)


@settings(deadline=None, max_examples=30)
@given(st.lists(st.tuples(st.one_of(st.integers(-3, 3), st.integers(-2**31, 2**31 - 1)), st.integers(0, 4)),
                min_size=1, max_size=40),
       st.booleans())
def test_keys_grouped_by_bucket_then_key_as_numpy_sorts_them(pairs, one_bucket_per_key):
    """Buckets drawn with the keys, or (several tables in one key map) one key in
    several buckets."""
    keys = np.array([key for key, _ in pairs], "int32")
    buckets = np.array([bucket for _, bucket in pairs], "int32")
    if one_bucket_per_key:
        buckets = (np.abs(keys.astype("int64")) % 5).astype("int32")
    _check_grouping(buckets, keys)


def test_grouping_beyond_the_size_of_int32_ranks():
    rng = np.random.default_rng(0)
    keys = rng.integers(-1000, 1000, 46_341).astype("int32")
    _check_grouping(rng.integers(0, 7, 46_341).astype("int32"), keys)


@pytest.mark.parametrize("all_distinct", [False, True])
@pytest.mark.parametrize("compiled", [False, True])
def test_grouping_of_keys_whose_positions_overflow_32_bit_ranks(all_distinct, compiled):
    """66,000 keys: ranked among their distinct values, or, as many distinct keys and
    buckets as keys, whose product does not fit in 32 bits, sorted as three arrays."""
    rng = np.random.default_rng(1)
    n = 66_000
    if all_distinct:
        keys, buckets = rng.permutation(n) * 3 - 70_000, rng.permutation(n)
    else:
        keys, buckets = rng.integers(-1000, 1000, n), rng.integers(0, 7, n)
    _check_grouping(buckets.astype("int32"), keys.astype("int32"), compiled)


@settings(deadline=None, max_examples=20)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(-2**15, 2**15)), min_size=1, max_size=30))
def test_segment_sum_keeps_ints_exact_as_numpy(pairs):
    from keras_embed_ext.backends.keys import segment_sum

    ids = np.array([i for i, _ in pairs], "int32")
    data = np.array([v for _, v in pairs], "int32") * 4099  # beyond float32's exact integers once summed
    expected = np.zeros(10, "int64")
    np.add.at(expected, ids, data.astype("int64"))
    result = segment_sum(keras.ops.convert_to_tensor(data), keras.ops.convert_to_tensor(ids), 10)
    assert keras.backend.standardize_dtype(result.dtype) == "int32"
    np.testing.assert_array_equal(to_numpy(result), expected.astype("int32"))


@settings(deadline=None, max_examples=40)
@given(buckets=st.integers(1, 6), slots=st.sampled_from([1, 3, 16]), seed=st.integers(0, 2**16),
       compiled=st.booleans(), first_heavy=st.booleans())
def test_first_holding_row_equals_a_scan_of_each_bucket(buckets, slots, seed, compiled, first_heavy):
    """Buckets whose given rows (score > 0) come first, holding keys of a small pool
    (0 and repeats included), the rest never given (key 0, score 0); keys of the pool
    and others, each in any bucket, and rows past a capacity found nowhere; with
    `first_heavy`, most keys held in their bucket's first slot. The backend's ops
    compare every slot at once; numpy's (`host_find`, eager torch's on a CPU) probe
    each key's first two slots before searching on where most keys live there, and
    search at once elsewhere, of int32 keys and of int64 (read as pairs of one dtype
    each)."""
    from keras_embed_ext import host_find
    from keras_embed_ext.backends.keys import first_holding_row

    rng = np.random.default_rng(seed)
    pool = np.array([0, -1, 5, 2**31 - 1, -(2**31), 77, 78, 79], "int32")
    given_count = rng.integers(0, slots + 1, buckets + 1)
    given_count[-1] = 0  # the scratch bucket
    given = np.arange(slots) < given_count[:, None]
    stored_keys = np.where(given, rng.choice(pool, (buckets + 1, slots)), 0).astype("int32")
    scores = np.where(given, rng.integers(1, 9, (buckets + 1, slots)), 0).astype("int32")
    keys = np.concatenate([pool, rng.choice(pool, 20), rng.integers(-50, 50, 10)]).astype("int32")
    key_buckets = rng.integers(0, buckets, keys.size).astype("int32")
    given_slots = np.argwhere(given)
    if given_slots.size:  # and keys held, with `first_heavy` mostly in their bucket's first slot
        first_slots = given_slots[given_slots[:, 1] == 0]
        held = np.concatenate([first_slots[rng.integers(0, len(first_slots), 7 * keys.size * first_heavy)],
                               given_slots[rng.integers(0, len(given_slots), keys.size)]])
        keys = np.concatenate([keys, stored_keys[held[:, 0], held[:, 1]]])
        key_buckets = np.concatenate([key_buckets, held[:, 0].astype("int32")])
    capacity = int(rng.integers(1, buckets * slots + 1))
    expected_rows, expected_found = np.zeros(keys.size, "int32"), np.zeros(keys.size, bool)
    for i, (key, bucket) in enumerate(zip(keys, key_buckets)):
        holding = np.flatnonzero(stored_keys[bucket] == key)
        row = bucket * slots + holding[0] if holding.size else capacity
        if row < capacity and scores.reshape(-1)[row] > 0:
            expected_rows[i], expected_found[i] = row, True
    find = traced(first_holding_row, compiled) if compiled else first_holding_row
    results = [find(*(keras.ops.convert_to_tensor(x) for x in (keys, key_buckets, stored_keys, scores)), capacity)]
    for dtype in ("int32", "int64"):
        for find_on_host in (host_find.first_holding_row, host_find._search_buckets):  # the route of a full table too
            results.append(find_on_host(keys.astype(dtype), key_buckets, stored_keys.astype(dtype), scores, capacity))
    for rows, found in results:
        np.testing.assert_array_equal(to_numpy(found), expected_found)
        np.testing.assert_array_equal(to_numpy(rows), expected_rows)


@settings(deadline=None, max_examples=40)
@given(slots=st.sampled_from([1, 3, 8, 16]), count=st.integers(0, 40), chunk=st.integers(1, 9),
       wide=st.booleans(), seed=st.integers(0, 2**16))
def test_first_in_buckets_equals_numpy_argmax(slots, count, chunk, wide, seed):
    """The host search of eager torch: each key's first slot holding it in its bucket,
    a chunk of keys at a time, against numpy's `argmax` of the comparisons."""
    from keras_embed_ext.host_find import first_in_buckets

    rng = np.random.default_rng(seed)
    pool = np.array([0, -1, 5, 2**31 - 1, -(2**31)] + ([2**40 + 5, -(2**62)] if wide else []),
                    "int64" if wide else "int32")
    stored_keys = rng.choice(pool, (5, slots))
    keys, buckets = rng.choice(pool, count), rng.integers(0, 5, count).astype("int32")
    slot, held = first_in_buckets(stored_keys, buckets, keys, chunk)
    matches = stored_keys[buckets] == keys[:, None]
    np.testing.assert_array_equal(held, matches.any(axis=1))
    np.testing.assert_array_equal(slot, np.where(matches.any(axis=1), matches.argmax(axis=1), 0))


@settings(deadline=None, max_examples=30)
@given(rows=st.integers(1, 6), width=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_any_nonzero_equals_numpy_a_nan_counting(rows, width, seed):
    rng = np.random.default_rng(seed)
    values = rng.choice(np.array([0.0, -0.0, 1.5, -2.0, np.nan, np.inf, -np.inf, 1e-30], "float32"),
                        (rows, width), p=[0.5, 0.2, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05])
    x = keras.ops.convert_to_tensor(values)
    assert bool(to_numpy(any_nonzero(x))) == bool(np.any(values != 0))
    np.testing.assert_array_equal(to_numpy(any_nonzero(x, axis=-1)), np.any(values != 0, axis=-1))

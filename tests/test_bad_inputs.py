"""Bad inputs: the same error type and message on every backend, naming the value."""

import re

import keras
import numpy as np
import pytest

import keras_embed_ext as kee
from conftest import table


def raises(error, message):
    """The error as a call shows it: keras' `Layer.__call__` adds its own lines around it."""
    return pytest.raises(error, match=re.escape(message))


@pytest.mark.parametrize("ids,received", [
    (np.array(["a", "b"]), "ids of dtype str32"),
    (np.array([1 + 2j]), "ids of dtype complex128"),
    (np.array([{}], dtype=object), "ids of dtype object"),
    (None, "None"),
])
def test_ids_of_another_dtype_are_a_type_error(ids, received):
    layer = kee.Embedding(10, 3, name="tokens")
    with raises(TypeError, "Embedding layer 'tokens' expects integer ids (float ids are truncated to "
                           f"integers, as Keras does). Received: {received}."):
        layer(ids)


def test_weights_need_a_combiner():
    layer = kee.Embedding(10, 3, name="tokens")
    with raises(ValueError, "Embedding layer 'tokens' got per-id `weights`, which weigh the ids of a bag; it "
                            "has no combiner. Pass combiner='sum', 'mean' or 'sqrtn', or leave out `weights`."):
        layer(np.array([[1, 2]]), weights=np.ones((1, 2), "float32"))


@pytest.mark.parametrize("state", ["float", "int8"])
@pytest.mark.parametrize("shape", [(2, 3), (3, 2), (2,), (2, 2, 1)])
def test_weights_of_another_shape_than_the_ids(state, shape):
    layer = kee.Embedding(10, 3, combiner="sum", name="bags")
    if state == "int8":
        layer.build()
        layer.quantize("int8")
    with raises(ValueError, "Embedding layer 'bags' needs per-id `weights` of the ids' shape (2, 2). "
                            f"Received: weights of shape {shape}."):
        layer(np.array([[1, 2], [3, 4]]), weights=np.ones(shape, "float32"))


def test_a_scalar_id_is_no_bag():
    layer = kee.Embedding(10, 3, combiner="mean", name="bags")
    with raises(ValueError, "Embedding layer 'bags' has combiner='mean', which reduces the last axis of the "
                            "ids (a bag of ids). Received a scalar id; pass ids of shape (..., bag_size)."):
        layer(np.array(3))


def test_weights_argument_with_several_arrays():
    with raises(ValueError, "`weights` must be the table, one array of shape (10, 3), or a list holding only "
                            "it. Received: a list of 2 arrays."):
        kee.Embedding(10, 3, weights=[table(10, 3), table(10, 3)])


def test_table_given_as_nested_lists():
    rows = table(4, 3).tolist()
    layer = kee.Embedding(4, 3, weights=rows)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.embeddings), np.array(rows, "float32"))


@pytest.mark.parametrize("dtype", ["int32", "int64", "bool"])
def test_integer_dtype_for_the_table(dtype):
    with raises(ValueError, "Embedding layer 'tokens' stores a float table; its dtype must be a float type (or "
                            f"a quantized or mixed policy of one). Received: dtype='{dtype}'"):
        kee.Embedding(10, 3, dtype=dtype, name="tokens")


def test_weights_of_strings():
    layer = kee.Embedding(10, 3, combiner="sum", name="bags")
    with raises(TypeError, "Embedding layer 'bags' needs numeric per-id `weights`. Received: weights of dtype str32."):
        layer(np.array([[1, 2]]), weights=np.array([["a", "b"]]))


def test_lora_alpha_of_enable_lora():
    layer = kee.Embedding(10, 3)
    layer.build()
    with raises(ValueError, "`lora_alpha` must be a number or None. Received: lora_alpha='8'"):
        layer.enable_lora(2, lora_alpha="8")
    assert not layer.lora_enabled


@pytest.mark.parametrize("x,error,message", [
    (np.float32(1.0), ValueError, "attend() expects inputs whose last axis is output_dim=3. Received shape ()."),
    (np.ones((2, 4), "float32"), ValueError,
     "attend() expects inputs whose last axis is output_dim=3. Received shape (2, 4)."),
    (np.array([["a", "b", "c"]]), TypeError, "attend() expects float inputs. Received: dtype str32."),
])
def test_attend_inputs(x, error, message):
    layer = kee.Embedding(10, 3)
    layer.build()
    with raises(error, message):
        layer.attend(x)


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_reverse_call_inputs(tie):
    layer = kee.ReversibleEmbedding(10, 3, tie_weights=tie)
    layer.build()
    with raises(ValueError, "call(reverse=True) expects inputs whose last axis is output_dim=3. Received shape (2, 4)."):
        layer(np.ones((2, 4), "float32"), reverse=True)
    with raises(TypeError, "call(reverse=True) expects float inputs. Received: dtype str32."):
        layer(np.array([["a", "b", "c"]]), reverse=True)


def test_replace_embeddings_takes_a_model():
    with raises(TypeError, "replace_embeddings() takes a keras.Model. Received: Embedding."):
        kee.replace_embeddings(kee.Embedding(10, 3))

"""The untied output table of `ReversibleEmbedding`: `reverse_embeddings (D, V)`, a
kernel stored as float, int8 or int4 columns in keras 3.15's layout, and its LoRA
adapter.

Each vocabulary column has its own scale (int4 block-wise: one per block of `D` and
column, with a zero point), as keras' `ReversibleEmbedding` stores it, so files move
both ways.
"""

import functools
import math

import numpy as np
from keras import initializers
from keras import ops
from keras import quantizers

from keras_embed_ext.backends import unpack_int4
from keras_embed_ext.blocked_logits import blocked_logits
from keras_embed_ext.blocked_logits import dense_logits
from keras_embed_ext.formats import Int4Blocks
from keras_embed_ext.formats import int4_block_size
from keras_embed_ext.formats import quantize_blocks

_NAMES = ("reverse_embeddings", "reverse_embeddings_scale", "reverse_embeddings_zero")
_ADAPTER_NAMES = ("lora_reverse_embeddings_a", "lora_reverse_embeddings_b")


def _frozen(layer, name, shape, dtype=None, initializer="zeros"):
    return layer.add_weight(
        name=name, shape=shape, initializer=initializer, dtype=dtype, trainable=False, autocast=False
    )


class FloatColumns:
    """A trainable float kernel `reverse_embeddings (D, V)`."""

    def build(self, layer):
        layer.reverse_embeddings = layer.add_weight(
            name="reverse_embeddings",
            shape=(layer.output_dim, layer.input_dim),
            initializer=layer.embeddings_initializer,
            trainable=True,
        )

    def variables(self, layer):
        return [layer.reverse_embeddings]

    def dequantize(self, layer):
        return layer.reverse_embeddings

    def encode(self, layer, kernel):
        layer.reverse_embeddings.assign(kernel)

    def logits(self, layer, x, dtype, inputs_quantizer=None, adapter=None):
        """`x @ kernel` in `dtype`, plus an adapter's logits `projected @ factor` for
        `adapter=(projected, factor)`."""
        return dense_logits(x, layer.reverse_embeddings, dtype, axis=-1, adapter=adapter)


class Int8Columns(FloatColumns):
    """int8 `reverse_embeddings (D, V)` and `reverse_embeddings_scale (V,)`:
    a column is `reverse_embeddings[:, v] / reverse_embeddings_scale[v]`."""

    logit_value_kind = "stored"

    def build(self, layer):
        layer.reverse_embeddings = _frozen(layer, "reverse_embeddings", (layer.output_dim, layer.input_dim), "int8")
        layer.reverse_embeddings_scale = _frozen(layer, "reverse_embeddings_scale", (layer.input_dim,),
                                                 initializer="ones")

    def variables(self, layer):
        return [layer.reverse_embeddings, layer.reverse_embeddings_scale]

    def dequantize(self, layer):
        values, scale = self.logit_operands(layer, *self.variables(layer))
        values = ops.cast(values, "float32")
        return values if scale is None else values / ops.cast(scale, "float32")

    def logits(self, layer, x, dtype, inputs_quantizer=None, adapter=None):
        """`x @ kernel` (and the adapter's logits), read a block of columns at a time
        (`blocked_logits`)."""
        operands = functools.partial(self.logit_operands, layer)
        return blocked_logits(x, self.variables(layer), operands, dtype, axis=-1, inputs_quantizer=inputs_quantizer,
                              value_kind=self.logit_value_kind, adapter=adapter)

    def logit_operands(self, layer, values, scale):
        """`(values, scale)` of stored columns: the logits are `(x @ values) / scale`."""
        return values, scale

    def encode(self, layer, kernel):
        values, scale = quantizers.abs_max_quantize(
            kernel, axis=0, value_range=(-127, 127), dtype="int8", to_numpy=True
        )
        layer.reverse_embeddings.assign(values)
        layer.reverse_embeddings_scale.assign(ops.squeeze(scale, axis=0))


class Int4Columns(Int4Blocks, Int8Columns):
    """int4 values packed two per byte along `D`: `reverse_embeddings (ceil(D / 2), V)`,
    with `reverse_embeddings_scale (V,)` per column, or, block-wise with block `b`,
    `reverse_embeddings_scale` and `reverse_embeddings_zero` of shape
    `(ceil(D / b), V)`, a value decoding as `(q - zero) * scale`."""

    def build(self, layer):
        dim, vocabulary = layer.output_dim, layer.input_dim
        layer.reverse_embeddings = _frozen(layer, "reverse_embeddings", ((dim + 1) // 2, vocabulary), "int8")
        shape = (vocabulary,) if self.block_size is None else (math.ceil(dim / self.block_size), vocabulary)
        layer.reverse_embeddings_scale = _frozen(layer, "reverse_embeddings_scale", shape, initializer="ones")
        if self.block_size is not None:
            layer.reverse_embeddings_zero = _frozen(layer, "reverse_embeddings_zero", shape)

    def variables(self, layer):
        names = _NAMES if self.block_size is not None else _NAMES[:2]
        return [getattr(layer, name) for name in names]

    def logit_operands(self, layer, packed, scale, zero=None):
        values = unpack_int4(packed, axis=0)
        if layer.output_dim % 2:
            values = values[: layer.output_dim]  # the padding nibble
        if zero is None:
            return values, scale
        groups = np.arange(layer.output_dim) // self.block_size
        zero, scale = ops.cast(zero, "float32"), ops.cast(scale, "float32")
        return (ops.cast(values, "float32") - ops.take(zero, groups, axis=0)) * ops.take(scale, groups, axis=0), None

    def encode(self, layer, kernel):
        if self.block_size is None:
            values, scale = quantizers.abs_max_quantize(
                kernel, axis=0, value_range=(-8, 7), dtype="int8", to_numpy=True
            )
            layer.reverse_embeddings_scale.assign(ops.squeeze(scale, axis=0))
        else:
            # The columns of the kernel are the rows `quantize_blocks` takes.
            values, scale, zero = quantize_blocks(ops.convert_to_numpy(kernel).T, self.block_size)
            values = values.T
            layer.reverse_embeddings_scale.assign(scale.T)
            layer.reverse_embeddings_zero.assign(zero.T)
        packed, _, _ = quantizers.pack_int4(values, axis=0)
        layer.reverse_embeddings.assign(packed)


def columns_for(mode, policy=None, config=None, path=None):
    """The output table's format for a quantization mode (`None`: float)."""
    if mode == "int8":
        return Int8Columns()
    if mode == "int4":
        return Int4Columns(int4_block_size(policy, config, path))
    return FloatColumns()


def remove(layer):
    """Deletes the output table's variables, before it is built in another format."""
    for name in _NAMES:
        if hasattr(layer, name):
            delattr(layer, name)


def add_adapter(layer, rank, a_initializer="he_uniform", b_initializer="zeros"):
    """Adds float32 `lora_reverse_embeddings_a (D, r)` and `_b (r, V)` and freezes a
    float kernel: the kernel becomes `reverse_embeddings + (alpha / r) * A @ B`."""
    shapes = ((layer.output_dim, rank), (rank, layer.input_dim))
    for name, shape, initializer in zip(_ADAPTER_NAMES, shapes, (a_initializer, b_initializer)):
        variable = layer.add_weight(name=name, shape=shape, initializer=initializers.get(initializer),
                                    dtype="float32", autocast=False)
        setattr(layer, name, variable)
    layer.reverse_embeddings.trainable = False


def adapter_variables(layer):
    return [getattr(layer, name) for name in _ADAPTER_NAMES]


def _scaled_b(layer):
    return (layer.lora_alpha / layer.lora_rank) * ops.convert_to_tensor(layer.lora_reverse_embeddings_b)


def logit_factors(layer, x):
    """`(x @ A, B)` scaled: the adapter's logits `x @ ((alpha / r) * A @ B)` are their
    product, `r` columns wide, never a `(D, V)` delta."""
    return ops.matmul(ops.cast(x, "float32"), layer.lora_reverse_embeddings_a), _scaled_b(layer)


def merge_adapter(layer, output_format):
    """Folds the adapter into the kernel (encoded again in its format) and removes it."""
    kernel = ops.cast(output_format.dequantize(layer), "float32")
    kernel = kernel + ops.matmul(layer.lora_reverse_embeddings_a, _scaled_b(layer))
    for name in _ADAPTER_NAMES:
        delattr(layer, name)
    output_format.encode(layer, kernel)
    if layer.quantization_mode is None:
        layer.reverse_embeddings.trainable = True

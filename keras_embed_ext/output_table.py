"""The untied output table of `ReversibleEmbedding`: `reverse_embeddings (D, V)`, a
kernel stored as float, int8 or int4 columns in keras 3.15's layout, and its LoRA
adapter.

Each vocabulary column has its own scale (int4 block-wise: one per block of `D` and
column, with a zero point), as keras' `ReversibleEmbedding` stores it, so files move
both ways.
"""

import math

import numpy as np
from keras import ops
from keras import quantizers

from keras_embed_ext.backends.int4 import unpack_int4
from keras_embed_ext.blocked_logits import blocked_logits
from keras_embed_ext.blocked_logits import dense_logits
from keras_embed_ext.formats import Int4Blocks
from keras_embed_ext.formats import quantize_blocks
from keras_embed_ext.lora import Adapter
from keras_embed_ext.tracking import unlocked

_ADAPTER_NAMES = ("lora_reverse_embeddings_a", "lora_reverse_embeddings_b")


def _frozen(add_weight, name, shape, dtype=None, initializer="zeros"):
    return add_weight(name=name, shape=shape, initializer=initializer, dtype=dtype, trainable=False, autocast=False)


class FloatColumns:
    """A trainable float kernel `reverse_embeddings (D, V)`."""

    mode = None

    def build(self, add_weight, shape, initializer="zeros"):
        self.output_dim = shape[0]
        self.reverse_embeddings = add_weight(name="reverse_embeddings", shape=shape, initializer=initializer,
                                             trainable=True)

    def variables(self):
        return [self.reverse_embeddings]

    def dequantize(self):
        return self.reverse_embeddings

    def encode(self, kernel):
        self.reverse_embeddings.assign(kernel)

    def logits(self, x, dtype, inputs_quantizer=None, adapter=None):
        """`x @ kernel` in `dtype`, plus an adapter's logits `projected @ factor` for
        `adapter=(projected, factor)`."""
        return dense_logits(x, self.reverse_embeddings, dtype, axis=-1, adapter=adapter)


class Int8Columns(FloatColumns):
    """int8 `reverse_embeddings (D, V)` and `reverse_embeddings_scale (V,)`:
    a column is `reverse_embeddings[:, v] / reverse_embeddings_scale[v]`."""

    mode = "int8"
    logit_value_kind = "stored"

    def build(self, add_weight, shape, initializer=None):
        self.output_dim = shape[0]
        self.reverse_embeddings = _frozen(add_weight, "reverse_embeddings", shape, "int8")
        self.reverse_embeddings_scale = _frozen(add_weight, "reverse_embeddings_scale", shape[1:], initializer="ones")

    def variables(self):
        return [self.reverse_embeddings, self.reverse_embeddings_scale]

    def dequantize(self):
        values, scale = self.logit_operands(*self.variables())
        values = ops.cast(values, "float32")
        return values if scale is None else values / ops.cast(scale, "float32")

    def logits(self, x, dtype, inputs_quantizer=None, adapter=None):
        """`x @ kernel` (and the adapter's logits), read a block of columns at a time
        (`blocked_logits`)."""
        return blocked_logits(x, self.variables(), self.logit_operands, dtype, axis=-1,
                              inputs_quantizer=inputs_quantizer, value_kind=self.logit_value_kind, adapter=adapter)

    def logit_operands(self, values, scale):
        """`(values, scale)` of stored columns: the logits are `(x @ values) / scale`."""
        return values, scale

    def encode(self, kernel):
        values, scale = quantizers.abs_max_quantize(
            kernel, axis=0, value_range=(-127, 127), dtype="int8", to_numpy=True
        )
        self.reverse_embeddings.assign(values)
        self.reverse_embeddings_scale.assign(ops.squeeze(scale, axis=0))


class Int4Columns(Int4Blocks, Int8Columns):
    """int4 values packed two per byte along `D`: `reverse_embeddings (ceil(D / 2), V)`,
    with `reverse_embeddings_scale (V,)` per column, or, block-wise with block `b`,
    `reverse_embeddings_scale` and `reverse_embeddings_zero` of shape
    `(ceil(D / b), V)`, a value decoding as `(q - zero) * scale`."""

    mode = "int4"

    def build(self, add_weight, shape, initializer=None):
        dim, vocabulary = shape
        self.output_dim = dim
        self.reverse_embeddings = _frozen(add_weight, "reverse_embeddings", ((dim + 1) // 2, vocabulary), "int8")
        scale_shape = (vocabulary,) if self.block_size is None else (math.ceil(dim / self.block_size), vocabulary)
        self.reverse_embeddings_scale = _frozen(add_weight, "reverse_embeddings_scale", scale_shape, initializer="ones")
        if self.block_size is not None:
            self.reverse_embeddings_zero = _frozen(add_weight, "reverse_embeddings_zero", scale_shape)

    def variables(self):
        if self.block_size is None:
            return [self.reverse_embeddings, self.reverse_embeddings_scale]
        return [self.reverse_embeddings, self.reverse_embeddings_scale, self.reverse_embeddings_zero]

    def logit_operands(self, packed, scale, zero=None):
        values = unpack_int4(packed, axis=0)
        if self.output_dim % 2:
            values = values[: self.output_dim]  # the padding nibble
        if zero is None:
            return values, scale
        groups = np.arange(self.output_dim) // self.block_size
        zero, scale = ops.cast(zero, "float32"), ops.cast(scale, "float32")
        return (ops.cast(values, "float32") - ops.take(zero, groups, axis=0)) * ops.take(scale, groups, axis=0), None

    def encode(self, kernel):
        if self.block_size is None:
            values, scale = quantizers.abs_max_quantize(
                kernel, axis=0, value_range=(-8, 7), dtype="int8", to_numpy=True
            )
            self.reverse_embeddings_scale.assign(ops.squeeze(scale, axis=0))
        else:
            # The columns of the kernel are the rows `quantize_blocks` takes.
            values, scale, zero = quantize_blocks(ops.convert_to_numpy(kernel).T, self.block_size)
            values = values.T
            self.reverse_embeddings_scale.assign(scale.T)
            self.reverse_embeddings_zero.assign(zero.T)
        packed, _, _ = quantizers.pack_int4(values, axis=0)
        self.reverse_embeddings.assign(packed)


def columns_for(mode, block_size=None):
    """The output table's format for a quantization mode (`None`: float)."""
    if mode == "int8":
        return Int8Columns()
    if mode == "int4":
        return Int4Columns(block_size)
    return FloatColumns()


class OutputTable:
    """The untied output table `(output_dim, input_dim)` in a column format, with an
    optional adapter; its variables are created through `owner.add_weight`."""

    def __init__(self, owner, shape, initializer="uniform"):
        self.owner = owner
        self.shape = tuple(shape)
        self.initializer = initializer
        self.format = None
        self.adapter = None

    def build(self, mode=None, block_size=None):
        self.format = columns_for(mode, block_size)
        self.format.build(self.owner.add_weight, self.shape, self.initializer)

    def variables(self):
        return self.format.variables()

    def logits(self, x, dtype, inputs_quantizer=None):
        """`x @ kernel` in `dtype` for the effective kernel, the adapter's part `r`
        columns wide."""
        adapter = None if self.adapter is None else self.adapter.column_logit_factors(x)
        return self.format.logits(x, dtype, inputs_quantizer, adapter)

    def rebuild(self, mode, block_size=None):
        """The variables built afresh in `mode`'s format (their values set by the caller)."""
        for variable in self.format.variables() if self.format is not None else []:
            self.owner._untrack_variable(variable)
        with unlocked(self.owner):
            self.build(mode, block_size)

    def quantize(self, mode, block_size=None):
        """Stores the kernel in `mode`'s format, the adapter kept."""
        # As numpy: the variables are untracked before the kernel is encoded again.
        kernel = ops.convert_to_numpy(self.format.dequantize())
        self.rebuild(mode, block_size)
        self.format.encode(kernel)

    def enable_lora(self, rank, alpha, a_initializer="he_uniform", b_initializer="zeros"):
        """Adds float32 `lora_reverse_embeddings_a (D, r)` and `_b (r, V)` and freezes a
        float kernel: the kernel becomes `reverse_embeddings + (alpha / r) * A @ B`."""
        with unlocked(self.owner):
            self.adapter = Adapter(self.owner.add_weight, self.shape, rank, alpha, _ADAPTER_NAMES, a_initializer,
                                   b_initializer)
        if self.format.mode is None:
            self.format.reverse_embeddings.trainable = False

    def merge_lora(self):
        """Folds the adapter into the kernel (encoded again in its format) and removes it."""
        kernel = ops.cast(self.format.dequantize(), "float32") + self.adapter.delta()
        for variable in self.adapter.variables():
            self.owner._untrack_variable(variable)
        self.adapter = None
        self.format.encode(kernel)
        if self.format.mode is None:
            self.format.reverse_embeddings.trainable = True

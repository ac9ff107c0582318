"""Storage formats of a table: float, int8 and int4 rows.

Each format owns the variables it stores (with the names, shapes, dtypes and order
of `keras.layers.Embedding` 3.15, created through the owning layer's `add_weight`)
and knows how to `build` them, how to `encode` a float table into them, how to read
them (`stored_rows`) and how to `decode` what it read into float32 rows. `gather`
decodes only the rows of the ids looked up; `logits` decodes a block of rows at a
time, for `attend`; `dequantize` decodes the whole table, for export and merging.
"""

import math

import numpy as np
from keras import backend
from keras import dtype_policies
from keras import ops
from keras import quantizers

from keras_embed_ext.backends.arithmetic import in_place
from keras_embed_ext.backends.arithmetic import reshape
from keras_embed_ext.backends.devices import on_device_of
from keras_embed_ext.backends.int4 import take_int4_rows
from keras_embed_ext.backends.rows import take_rows
from keras_embed_ext.blocked_logits import blocked_logits
from keras_embed_ext.blocked_logits import dense_logits


def _frozen(add_weight, name, shape, dtype=None, initializer="zeros"):
    """A frozen variable of a quantized table (keras' name, shape and dtype)."""
    return add_weight(name=name, shape=shape, initializer=initializer, dtype=dtype, trainable=False, autocast=False)


def _rows_at(variables, ids):
    """Each variable whole (`ids` is `None`) or its rows at `ids`."""
    return [v if ids is None else take_rows(v, ids) for v in variables]


class FloatRows:
    """A float table: `embeddings (V, D)`, trainable."""

    mode = None
    logit_value_kind = "float"  # the values `logit_operands` gives (see `blocked_logits`)

    def build(self, add_weight, shape, initializer="zeros", regularizer=None, constraint=None):
        """Creates the variables through `add_weight` (the owning layer's)."""
        self.output_dim = shape[1]
        self.embeddings = add_weight(
            shape=shape,
            initializer=initializer,
            name="embeddings",
            regularizer=regularizer,
            constraint=constraint,
            trainable=True,
            autocast=False,
        )

    def variables(self):
        """The stored variables, in keras' order."""
        return [self.embeddings]

    def row_variables(self):
        """The variables with one row per table row, as `stored_rows` reads them."""
        return [self.embeddings]

    def decode(self, rows):
        return rows

    def encode(self, table):
        self.embeddings.assign(table)

    def stored_rows(self, ids=None):
        """The stored rows at `ids` (all rows for `None`) of each row variable, as `decode` takes them."""
        return _rows_at(self.row_variables(), ids)

    def logits(self, x, dtype, inputs_quantizer=None, adapter=None):
        """`x @ table.T` in `dtype`, for a tied output projection, plus an adapter's
        logits `projected @ factor.T` for `adapter=(projected, factor)`. A quantized
        table is read a block of rows at a time (`blocked_logits`), its inputs
        quantized with `inputs_quantizer` if one is given."""
        if self.mode is None:
            return dense_logits(x, self.embeddings, dtype, adapter=adapter)
        return blocked_logits(x, self.row_variables(), self.logit_operands, dtype, inputs_quantizer=inputs_quantizer,
                              value_kind=self.logit_value_kind, adapter=adapter)

    def logit_operands(self, *stored):
        """`(values, scale)` of stored rows: the logits are `(x @ values.T) / scale`."""
        return self.decode(*stored), None

    def gather(self, ids):
        """The decoded rows of in-range `ids`, gathered where the table lives."""

        def gather_and_decode(ids):
            return self.decode(*self.stored_rows(ids))

        return on_device_of(self.embeddings, ids, gather_and_decode)

    def dequantize(self):
        return self.decode(*self.stored_rows())


class Int8Rows(FloatRows):
    """Per-row symmetric int8: `embeddings (V, D)` int8, `embeddings_scale (V,)`.

    A row is `embeddings[i] / embeddings_scale[i]`, with
    `embeddings_scale[i] = 127 / max|row i|`.
    """

    mode = "int8"
    logit_value_kind = "stored"

    def build(self, add_weight, shape, initializer=None, regularizer=None, constraint=None):
        self.output_dim = shape[1]
        self.embeddings = _frozen(add_weight, "embeddings", shape, "int8")
        self.embeddings_scale = _frozen(add_weight, "embeddings_scale", shape[:1], initializer="ones")

    def variables(self):
        return [self.embeddings, self.embeddings_scale]

    row_variables = variables

    def logit_operands(self, values, scale):
        return values, scale

    def decode(self, values, scale):
        values = ops.cast(values, "float32")  # int8 values: a new tensor
        return in_place("divide", values, ops.expand_dims(ops.cast(scale, "float32"), -1))

    def encode(self, table):
        values, scale = quantizers.abs_max_quantize(
            table, axis=-1, value_range=(-127, 127), dtype="int8",
            to_numpy=True,
        )
        self.embeddings.assign(values)
        self.embeddings_scale.assign(ops.squeeze(scale, axis=-1))


class Int4Blocks:
    """The block size of an int4 table (`None`: one scale per row or column), shared
    by its input and output forms."""

    def __init__(self, block_size=None):
        self.given_block_size = block_size  # as keras keeps it: -1 and None both mean per row
        self.block_size = None if block_size in (None, -1) else block_size

    @property
    def logit_value_kind(self):
        # Per row, the unpacked nibbles multiply; block-wise values decode with their zero points.
        return "int8" if self.block_size is None else "float"


class Int4Rows(Int4Blocks, FloatRows):
    """int4 values packed two per byte along D, as keras 3.15 stores them.

    Without a block size (per row, symmetric): `embeddings (V, ceil(D/2))` int8,
    `embeddings_scale (V,)`; a value is `q / scale`. With a block size `b`
    (block-wise, asymmetric): `embeddings_scale (V, G)`, `embeddings_zero (V, G)`
    int8 and `g_idx (D,)` with `G = ceil(D / b)`; a value is
    `(q - zero[g]) * scale[g]`.
    """

    mode = "int4"

    def build(self, add_weight, shape, initializer=None, regularizer=None, constraint=None):
        input_dim, output_dim = shape
        self.output_dim = output_dim
        self.embeddings = _frozen(add_weight, "embeddings", (input_dim, (output_dim + 1) // 2), "int8")
        if self.block_size is None:
            scale_shape = (input_dim,)
        else:
            scale_shape = (input_dim, math.ceil(output_dim / self.block_size))
        self.embeddings_scale = _frozen(add_weight, "embeddings_scale", scale_shape, initializer="ones")
        if self.block_size is not None:
            self.embeddings_zero = _frozen(add_weight, "embeddings_zero", scale_shape, "int8")
            self.g_idx = _frozen(add_weight, "g_idx", (output_dim,), "float32")
            self.g_idx.assign(ops.floor_divide(ops.arange(output_dim, dtype="float32"), self.block_size))

    def variables(self):
        if self.block_size is None:
            return [self.embeddings, self.embeddings_scale]
        return [self.embeddings, self.embeddings_scale, self.embeddings_zero, self.g_idx]

    def row_variables(self):
        return self.variables()[:3]

    def stored_rows(self, ids=None):
        """The int4 values unpacked to int8, then the scale (and zero point) rows."""
        packed, *params = self.row_variables()
        return [self._unpacked(packed, ids), *_rows_at(params, ids)]

    def _unpacked(self, packed, ids=None):
        """int8 values of the packed rows at `ids` (all for `None`), without the padding
        nibble of an odd `output_dim`."""
        values = take_int4_rows(packed, ids)
        return values if values.shape[-1] == self.output_dim else values[..., : self.output_dim]

    def logit_operands(self, packed, scale, zero=None):
        values = self._unpacked(packed)
        return (values, scale) if zero is None else (self.decode(values, scale, zero), None)

    def decode(self, values, scale, zero=None):
        values = ops.cast(values, "float32")
        scale = ops.cast(scale, "float32")
        if zero is None:
            return in_place("divide", values, ops.expand_dims(scale, -1))
        zero = ops.cast(zero, "float32")
        if self.output_dim % self.block_size == 0:
            # Whole blocks: broadcast each block's scale and zero point.
            shape = ops.shape(values)
            groups = self.output_dim // self.block_size  # not -1: rows may be empty
            blocks = reshape(values, (*shape[:-1], groups, self.block_size))
            blocks = in_place("subtract", blocks, ops.expand_dims(zero, -1))
            blocks = in_place("multiply", blocks, ops.expand_dims(scale, -1))
            return reshape(blocks, shape)
        groups = np.arange(self.output_dim) // self.block_size
        values = in_place("subtract", values, ops.take(zero, groups, axis=-1))
        return in_place("multiply", values, ops.take(scale, groups, axis=-1))

    def encode(self, table):
        if self.block_size is None:
            values, scale = quantizers.abs_max_quantize(
                table, axis=-1, value_range=(-8, 7), dtype="int8",
                to_numpy=True,
            )
            self.embeddings_scale.assign(ops.squeeze(scale, axis=-1))
        else:
            values, scale, zero = quantize_blocks(ops.convert_to_numpy(table), self.block_size)
            self.embeddings_scale.assign(scale)
            self.embeddings_zero.assign(zero)
        packed, _, _ = quantizers.pack_int4(values, axis=-1)
        self.embeddings.assign(packed)


def quantize_blocks(table, block_size):
    """Block-wise asymmetric int4 codes of a float `(V, D)` numpy table, in keras 3.15's
    layout: values `(V, D)` in [-8, 7], a scale and an int8 zero point per block.

    A value decodes as `(q - zero) * scale`. keras clips the zero point to [-8, 7],
    so a block whose values do not straddle 0 (all in [1, 2], or a constant row)
    decodes far off; here the zero point uses the int8 range, and the step is at
    least `max|x| / 119` so that it fits there. Every value then decodes within one
    step; a block that straddles 0 gets keras' codes.
    """
    rows, dim = table.shape
    groups = math.ceil(dim / block_size)
    padded = np.zeros((rows, groups * block_size), "float32")
    padded[:, :dim] = table
    blocks = padded.reshape(rows, groups, block_size)
    low, high = blocks.min(axis=-1), blocks.max(axis=-1)
    scale = np.maximum((high - low + backend.epsilon()) / 15.0, np.maximum(-low, high) / 119.0)
    zero = np.clip(np.round(-low / scale) - 8, -128, 127)
    values = np.clip(np.round(blocks / scale[..., None]) + zero[..., None], -8, 7)
    return values.reshape(rows, -1)[:, :dim].astype("int8"), scale.astype("float32"), zero.astype("int8")


def format_for(mode, block_size=None):
    """The storage format of a quantization mode (`None`, "int8", "int4")."""
    if mode is None:
        return FloatRows()
    if mode == "int8":
        return Int8Rows()
    if mode == "int4":
        return Int4Rows(block_size)
    raise ValueError(
        f"Unknown quantization mode: {mode!r}. Expected 'int8' or 'int4'."
    )


def int4_block_size(policy, config, path=None):
    """The int4 block size from a quantization config or an `int4/<b>` policy, which a
    `DTypePolicyMap` (as keras-hub saves quantized models) holds at the layer's `path`."""
    if config is not None and hasattr(config, "block_size"):
        return config.block_size
    if isinstance(policy, dtype_policies.DTypePolicyMap):
        policy = policy[path] if path else None
    return getattr(policy, "block_size", None)

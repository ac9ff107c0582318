"""Independent numpy references for the stored formats (keras 3.15's layout)."""

import numpy as np

EPS = 1e-7  # keras.backend.epsilon()


def int8_quantize(table):
    scale = 127.0 / (np.abs(table).max(axis=-1) + EPS)
    values = np.clip(np.round(table * scale[:, None]), -127, 127).astype("int8")
    return values, scale.astype("float32")


def abs_max_inputs(x):
    """keras' `AbsMaxQuantizer(axis=-1)`: int8-valued inputs and their scale, per row."""
    scale = 127.0 / (np.abs(x).max(axis=-1, keepdims=True) + EPS)
    return np.clip(np.round(x * scale), -127, 127), scale


def projected_inputs(layer, x):
    """The inputs a quantized reverse projection multiplies: rounded as keras rounds
    them where the layer has an `inputs_quantizer`."""
    if getattr(layer, "inputs_quantizer", None) is None or layer.quantization_mode is None:
        return x
    values, scale = abs_max_inputs(x)
    return values / scale


def int8_rows(values, scale, ids):
    return values[ids].astype("float32") / scale[ids][..., None]


def unpack_int4(packed, output_dim):
    """Low nibble first, then high nibble, sign-extended from 4 bits."""
    low = (packed.astype(np.int16) & 0x0F)
    high = (packed.astype(np.int16) >> 4) & 0x0F
    both = np.stack([low, high], axis=-1).reshape(*packed.shape[:-1], -1)[..., :output_dim]
    return np.where(both >= 8, both - 16, both).astype("int8")


def int4_rows(weights, ids, output_dim):
    """Decodes the rows `ids` of an int4 state given as `get_weights()` arrays."""
    values = unpack_int4(weights[0][ids], output_dim).astype("float32")
    scale = weights[1][ids]
    if len(weights) == 2:
        return values / scale[..., None]
    zero, groups = weights[2][ids].astype("float32"), weights[3].astype("int64")
    return (values - zero[..., groups]) * scale[..., groups]


def int4_grouped_quantize(table, block_size):
    """Asymmetric per-block quantization of each row to [-8, 7], with an int8 zero point
    and a step of at least max|x| / 119, so that any block decodes within one step."""
    rows, dim = table.shape
    groups = -(-dim // block_size)
    padded = np.zeros((rows, groups * block_size), "float32")
    padded[:, :dim] = table
    blocks = padded.reshape(rows, groups, block_size)
    low, high = blocks.min(-1), blocks.max(-1)
    scale = np.maximum((high - low + EPS) / 15.0, np.maximum(-low, high) / 119.0)
    zero = np.clip(np.round(-low / scale) - 8, -128, 127)
    values = np.clip(np.round(blocks / scale[..., None]) + zero[..., None], -8, 7)
    return values.reshape(rows, -1)[:, :dim], scale, zero


def lora_delta(a, b, ids, alpha, rank):
    return (alpha / rank) * (a[ids] @ b)

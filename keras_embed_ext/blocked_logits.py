"""Logits of inputs against a quantized table, read a block of rows at a time.

Decoding a whole quantized table for one product writes a float copy of it (4x the
bytes of int8, 8x those of int4) and reads it back; a block of rows decoded while it
is in cache costs only its arithmetic. The backward pass reads the blocks again
rather than keeping a float copy for it, and gives the inputs their gradient only: a
quantized table is frozen.

Tables with a scale per row multiply their integer values: the scales divide the
logits. Inputs quantized to int8 (keras' `inputs_quantizer`) then make an integer
product, which XLA and accelerators compute as int8 x int8; torch and TensorFlow on a
CPU compute the same integers in float32. Their gradient is the float product's
(straight through the rounding).

On a GPU, where a loop of cache-sized blocks costs a launch each and int8 products
run on tensor cores, int8 values multiply the whole table at once, as keras does: by
int8 inputs in one int8 product and, on XLA, by float inputs too, whose product
converts the values as it reads them. Only tables decoded to float are read in
blocks there, large ones that bound the copy.
"""

import math

import keras
from keras import ops

from keras_embed_ext.backends.arithmetic import add_matmul
from keras_embed_ext.backends.arithmetic import in_place
from keras_embed_ext.backends.devices import on_accelerator

BLOCK_BYTES = 4 * 2**20  # a float32 block that fits a core's cache
ACCELERATOR_BLOCK_BYTES = 256 * 2**20  # a float32 block that fills a GPU
MAX_BLOCKS = 64  # bounds the ops an unrolled call adds to a traced graph


def block_rows(vocabulary: int, dim: int, accelerator: bool = False) -> int:
    """Rows per block: a cache's worth (an accelerator's block's on one), or more where
    that would exceed `MAX_BLOCKS`. Under a `keras.distribution`, which may shard the
    table by rows, one block: each device then multiplies the rows it holds."""
    if keras.distribution.distribution() is not None:
        return max(vocabulary, 1)
    block_bytes = ACCELERATOR_BLOCK_BYTES if accelerator else BLOCK_BYTES
    return max(1, block_bytes // (4 * dim), math.ceil(vocabulary / MAX_BLOCKS))


def _on_xla():
    # XLA runs a loop over the blocks faster than the same blocks unrolled, whose
    # products it schedules one after another with the buffers of all of them; its
    # int8 x int8 product is as fast as a float one, where torch's CPU kernels are not.
    return keras.backend.backend() == "jax"


def _over_blocks(vocabulary, size, step, carry):
    """`carry = step(start, length, carry)` for each block of `size` rows, the last
    one shorter; on JAX the whole blocks run as one loop, whose `start` is traced."""
    whole, tail = divmod(vocabulary, size)
    if _on_xla() and whole > 1:
        carry = ops.fori_loop(0, whole, lambda i, carry: step(i * size, size, carry), carry)
    else:
        for start in range(0, whole * size, size):
            carry = step(start, size, carry)
    return step(whole * size, tail, carry) if tail else carry


def _block(array, start, length, axis):
    """`length` entries of `array` from `start` along `axis` (0 or -1)."""
    axis = axis % len(array.shape)
    starts = [start if i == axis else 0 for i in range(len(array.shape))]
    shape = [length if i == axis else size for i, size in enumerate(array.shape)]
    return ops.slice(array, starts, shape)


def _read(array):
    """A tensor of `array`. keras' TensorFlow tensor of a variable is the variable,
    which `tf.custom_gradient` rejects as an input when it is trainable."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.identity(array)
    return ops.convert_to_tensor(array)


def _columns(array, axis):
    """A `(V, n)` array (`axis=0`) as `(n, V)`; a `(n, V)` one (`axis=-1`) as it is."""
    return array if axis else ops.transpose(array)


def dense_logits(x, table, dtype, axis=0, adapter=None):
    """`x @ table.T` (`x @ table` for a `(D, V)` kernel, `axis=-1`) in `dtype` for a
    float table, which needs no blocks, plus an adapter's logits as `blocked_logits`
    adds them."""
    logits = ops.matmul(ops.cast(x, dtype), _columns(ops.cast(table, dtype), axis))
    if adapter is None:
        return logits
    projected, factor = adapter
    return logits + ops.cast(ops.matmul(projected, _columns(factor, axis)), dtype)


def blocked_logits(
    x, stored, operands, dtype, axis=0, inputs_quantizer=None, value_kind="float", adapter=None
):
    """`x @ table.T` in `dtype`, the table given by its stored arrays.

    Args:
        x: Float inputs of shape `(..., D)`.
        stored: The table's stored arrays (values, scales, zero points), which
            share their vocabulary axis `axis`.
        operands: Takes a block of each stored array and returns `(values, scale)`:
            values whose product with `x` divided by `scale` (one per row, or
            `None`) gives the logits, as int8 or float32 `(B, D)` rows or, for
            `axis=-1`, `(D, B)` columns.
        dtype: The dtype of the logits; float16 logits are computed in float32,
            whose range a product of integer values needs.
        axis: The vocabulary axis of the stored arrays: 0, or -1 for a `(D, V)` kernel.
        inputs_quantizer: Optional quantizer returning int8 inputs and their scale
            (keras' `AbsMaxQuantizer`), which divides the logits.
        value_kind: What `operands` returns as values: `"float"` decoded values,
            `"int8"` values computed from the stored ones (unpacked nibbles), or
            `"stored"` int8 values as they are stored. int8 values multiply the
            whole table at once on an accelerator, by int8 inputs (on XLA, by any
            inputs), and stored as `(D, V)` columns, by int8 inputs anywhere: blocks
            would slice them as strided copies.
        adapter: Optional `(projected, factor)` of a low-rank adapter, whose logits
            `projected @ factor.T` (`projected @ factor` for `axis=-1`) are added to
            each block while it is in cache: float32 `projected (..., r)`, computed
            from `x`, and `factor (V, r)` or `(r, V)`. Both get their gradients.

    Returns:
        Logits of shape `(..., V)`.
    """
    compute = "float32" if dtype == "float16" else dtype
    x = ops.convert_to_tensor(x)
    stored = [ops.convert_to_tensor(array) for array in stored]
    adapter = [] if adapter is None else [_read(array) for array in adapter]
    vocabulary, dim = stored[0].shape[axis], x.shape[-1]
    accelerator = on_accelerator(stored[0])
    size = block_rows(vocabulary, dim, accelerator)
    # On an accelerator XLA can fuse the conversion of int8 values into its product,
    # as keras' quantized layers rely on: one product of the whole table, both passes.
    whole_table = accelerator and _on_xla() and value_kind != "float"

    def block_operands(arrays, start, length):
        values, scale = operands(*(_block(array, start, length, axis) for array in arrays))
        return _columns(values, axis), scale  # values as (D, B)

    @ops.custom_gradient
    def logits(x, *arrays):
        arrays, (projected, factor) = arrays[: len(stored)], (arrays[len(stored):] or (None, None))
        flat = ops.reshape(x, (-1, dim))
        inputs_scale = None
        if inputs_quantizer is not None and flat.shape[0] != 0:  # keras' torch max rejects no rows
            flat, inputs_scale = inputs_quantizer(flat)
            inputs_scale = ops.cast(inputs_scale, compute)

        float_inputs = ops.cast(flat, compute)
        # On a GPU, XLA's int8 x int8 product of 2 features gave twice the logits
        # (H200, jax 0.11.2); int8 tensor cores take features in fours anyway.
        integer_products = dim % 4 == 0 if accelerator else _on_xla()
        integer_inputs = integer_products and keras.backend.standardize_dtype(flat.dtype) == "int8"
        if projected is not None:
            projected_rows = ops.reshape(projected, (-1, projected.shape[-1]))

        def product(start, length):
            values, scale = block_operands(arrays, start, length)
            if integer_inputs and keras.backend.standardize_dtype(values.dtype) == "int8":
                block = ops.cast(ops.matmul(flat, values), compute)  # int32 sums
            else:
                block = ops.matmul(float_inputs, ops.cast(values, compute))
            # `block` is new: on torch, the divisions and the adapter write into it.
            if scale is not None:
                block = in_place("divide", block, ops.cast(scale, compute))
            if inputs_scale is not None:
                block = in_place("divide", block, inputs_scale)
            if projected is not None:
                factor_block = _block(_columns(factor, axis), start, length, -1)
                block = ops.cast(add_matmul(block, projected_rows, factor_block), compute)
            return block

        def write(start, length, out):  # in place, within XLA's loop
            return ops.slice_update(out, (0, start), product(start, length))

        def append(start, length, blocks):
            return [*blocks, product(start, length)]

        # int8 values by int8 inputs are one product on an accelerator (its int8 kernels),
        # and stored as (D, V) columns anywhere (blocks would slice them as strided copies).
        integer_table = integer_inputs and value_kind != "float"
        if whole_table or (integer_table and (accelerator or (axis != 0 and value_kind == "stored"))):
            result = product(0, vocabulary)
        elif _on_xla():
            result = _over_blocks(vocabulary, size, write, ops.zeros((flat.shape[0], vocabulary), compute))
        else:
            blocks = _over_blocks(vocabulary, size, append, [])
            result = blocks[0] if len(blocks) == 1 else ops.concatenate(blocks, axis=-1)
        result = ops.reshape(result, (*ops.shape(x)[:-1], vocabulary))

        def grad(*args, upstream=None):
            # JAX and TensorFlow pass the upstream gradient alone; torch passes the
            # inputs and `upstream`.
            upstream = ops.reshape(ops.cast(args[0] if upstream is None else upstream, compute), (-1, vocabulary))

            def accumulate(start, length, total):
                values, scale = block_operands(arrays, start, length)
                block = _block(upstream, start, length, -1)
                if scale is not None:
                    block = block / ops.cast(scale, compute)
                return total + ops.matmul(block, ops.transpose(ops.cast(values, compute)))

            zeros = ops.zeros((ops.shape(upstream)[0], dim), compute)
            total = _over_blocks(vocabulary, vocabulary if whole_table else size, accumulate, zeros)
            grads = (ops.cast(ops.reshape(total, ops.shape(x)), x.dtype), *(None for _ in arrays))
            if projected is None:
                return grads
            # The adapter's products read no quantized values: each is one matmul.
            upstream = ops.cast(upstream, "float32")
            projected_grad = ops.matmul(upstream, ops.transpose(_columns(factor, axis)))
            factor_grad = _columns(ops.matmul(ops.transpose(projected_rows), upstream), axis)
            return (*grads, ops.reshape(projected_grad, ops.shape(projected)), factor_grad)

        return ops.cast(result, dtype), grad

    return logits(x, *stored, *adapter)

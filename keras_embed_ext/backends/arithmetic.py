"""Row-sized arithmetic on torch written in place or in one fused pass, where each new
output costs fresh pages from the allocator and each op a pass over the rows."""

import keras


def reshape(x, shape):
    """`keras.ops.reshape(x, shape)`; on torch the tensor's own, without keras' flattening
    of `shape` to look for symbolic tensors in every eager call."""
    if keras.backend.backend() == "torch":
        return x.reshape(shape)
    return keras.ops.reshape(x, shape)


def cast(x, dtype):
    """`keras.ops.cast(x, dtype)`; `x` itself when it has that dtype already: keras'
    cast looks for symbolic tensors in its argument in every eager call."""
    if keras.backend.standardize_dtype(x.dtype) == keras.backend.standardize_dtype(dtype):
        return x
    return keras.ops.cast(x, dtype)


_TORCH_IN_PLACE = {"add": "add_", "subtract": "sub_", "multiply": "mul_", "divide": "div_"}


def in_place(op, fresh, other):
    """`keras.ops.<op>(fresh, other)`; on torch written into `fresh`, a float tensor just made.

    On a CPU each new output of a row-sized op costs fresh pages from the allocator,
    often more than the arithmetic itself. `fresh` keeps its shape and dtype.
    """
    if keras.backend.backend() == "torch" and fresh.dtype == other.dtype:
        if _broadcasts_into(other.shape, fresh.shape):
            return getattr(fresh, _TORCH_IN_PLACE[op])(other)
    return getattr(keras.ops, op)(fresh, other)


def _broadcasts_into(shape, target):
    """Whether `shape` broadcasts to `target` unchanged, in plain Python:
    `torch.broadcast_shapes` costs more than the op it guards."""
    return len(shape) <= len(target) and all(
        size in (1, target_size) for size, target_size in zip(reversed(shape), reversed(target))
    )


def add_product(x, a, b, scale=1.0):
    """`x + scale * a * b`; on torch, for a number `scale`, one pass (`addcmul`), where
    the ops apart are a pass and a new tensor each."""
    if _fuses_on_torch(scale, x, a, b):
        import torch

        return torch.addcmul(x, a, b, value=scale)
    if isinstance(scale, (int, float)) and scale in (1, -1):  # no multiply by the sign
        return x + a * b if scale == 1 else x - a * b
    return x + scale * a * b


def add_quotient(x, a, b, scale=1.0):
    """`x + scale * a / b`; on torch, for a number `scale`, one pass (`addcdiv`)."""
    if _fuses_on_torch(scale, x, a, b):
        import torch

        return torch.addcdiv(x, a, b, value=scale)
    return x + scale * a / b


def _fuses_on_torch(scale, *tensors):
    return (keras.backend.backend() == "torch" and isinstance(scale, (int, float))
            and len({t.dtype for t in tensors}) == 1)


def add_matmul(fresh, a, b):
    """`fresh + a @ b` for `fresh (..., D)`, `a (..., r)`, `b (r, D)`; in place on torch.

    Under `torch.compile`, a rank up to 16 is written as `r` multiply-adds, which
    inductor fuses with the gather into one pass over the rows; `addmm` writes a new
    tensor. Larger ranks keep the matmul, faster there.
    """
    if keras.backend.backend() == "torch" and fresh.dtype == a.dtype == b.dtype:
        import torch

        if torch.compiler.is_compiling() and b.shape[0] <= 16:
            for k in range(b.shape[0]):
                fresh = fresh + a[..., k : k + 1] * b[k]
            return fresh
        if fresh.is_contiguous():
            fresh.view(-1, fresh.shape[-1]).addmm_(a.reshape(-1, a.shape[-1]), b)
            return fresh
    return fresh + keras.ops.matmul(a, b)


def any_nonzero(x, axis=None):
    """`keras.ops.any(x, axis)` of a float tensor, a NaN counting as nonzero. On torch
    read as extreme values (a NaN propagates to them): `torch.any` first converts
    every value to a bool."""
    if keras.backend.backend() == "torch" and x.dtype.is_floating_point and x.numel():
        import torch

        if axis is not None:  # torch reduces `aminmax` along an axis several times slower
            return torch.amax(torch.abs(x), dim=axis) != 0
        least, greatest = torch.aminmax(x)
        return (least != 0) | (greatest != 0)
    return keras.ops.any(x, axis=axis)

"""Where a table lives: its device, host reads, and its layout under a distribution."""

import keras

from keras_embed_ext.backends.context import is_traced


def to_host(x):
    """The values of eager tensor `x` as a numpy array, for reading: on TensorFlow and
    on torch's CPU without the copy that `keras.ops.convert_to_numpy` makes."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return x.numpy()
    if backend == "torch":
        import torch

        if x.device.type == "cpu" and x.dtype != torch.bfloat16:  # numpy has no bfloat16
            return x.detach().numpy()
    return keras.ops.convert_to_numpy(x)


def on_device_of(variable, ids, gather):
    """`gather(ids)` run where `variable` lives, the result moved back to where `ids` were.

    A table built under `keras.device("cpu:0")` stays in host memory: its rows are
    gathered there and only the rows move.
    """
    moved = to_device_of(ids, variable)
    if moved is ids:
        return gather(ids)
    return to_device_of(gather(moved), ids)


def to_device_of(x, reference):
    """`x` moved to the device of `reference` (a tensor or variable) when they differ.

    TensorFlow places ops by itself; under jax.jit the placement is XLA's, so on
    JAX this applies to eager arrays on one device only.
    """
    backend = keras.backend.backend()
    reference = getattr(reference, "value", reference)
    if backend == "torch":
        return x if x.device == reference.device else x.to(reference.device)
    if backend == "jax":
        import jax

        if isinstance(x, jax.core.Tracer) or isinstance(reference, jax.core.Tracer):
            return x
        devices = reference.devices()
        if len(devices) != 1 or x.devices() == devices:
            return x  # same place, or a sharded table: the sharding decides
        return jax.device_put(x, next(iter(devices)))
    return x


def rows_layout(variable, rank, sharded=True):
    """Under a `keras.distribution`, the layout of a rank-`rank` array beside `variable`:
    with `sharded`, its first axis sharded as the variable's rows are and the others
    replicated; without, replicated. `None` without a distribution."""
    layout = getattr(variable, "_layout", None)
    if keras.distribution.distribution() is None or not isinstance(layout, keras.distribution.TensorLayout):
        return None
    axes = (layout.axes[0] if sharded else None, *(None,) * (rank - 1)) if rank else ()
    return keras.distribution.TensorLayout(axes, layout.device_mesh)


def on_accelerator(x) -> bool:
    """Whether tensor or variable `x` lives on a GPU or another accelerator. Under
    jax.jit, where arrays have no place, JAX's default backend decides; TensorFlow's
    symbolic tensors likewise ask whether a GPU is visible."""
    backend = keras.backend.backend()
    x = getattr(x, "value", x)
    if backend == "torch":
        return x.device.type not in ("cpu", "meta")
    if backend == "jax":
        import jax

        if isinstance(x, jax.core.Tracer):
            return jax.default_backend() != "cpu"
        return any(device.platform != "cpu" for device in x.devices())
    import tensorflow as tf

    device = getattr(x, "device", "") or ""
    return ":CPU:" not in device.upper() if device else bool(tf.config.list_logical_devices("GPU"))


def all_true_on_host(mask) -> bool:
    """Whether bool `mask` is concrete, on the host and all True: eager code may then
    skip a select by it (reading a traced value fails, an accelerator's would wait)."""
    return not is_traced(mask) and not on_accelerator(mask) and bool(keras.ops.all(mask))

"""Timing helpers shared by the benchmarks: medians over repeats, per backend."""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

BACKEND = keras.backend.backend()


def device_name():
    if BACKEND == "torch":
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    if BACKEND == "jax":
        import jax

        return jax.devices()[0].device_kind
    return "cpu"


def synchronize(x):
    if BACKEND == "jax":
        import jax

        jax.block_until_ready(x)
    elif BACKEND == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()


def median_ms(fn, repeats=20, warmup=3, budget_s=20.0):
    """Median wall time of `fn()` in milliseconds (fewer repeats if it is slow)."""
    for _ in range(warmup):
        synchronize(fn())
    times = []
    start = time.perf_counter()
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        synchronize(fn())
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def to_device(array):
    """A numpy array as a tensor on the default device."""
    return keras.ops.convert_to_tensor(array)


def random_table(vocab, dim, seed=0):
    return np.random.default_rng(seed).standard_normal((vocab, dim), dtype=np.float32)

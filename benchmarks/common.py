"""Timing helpers shared by the benchmarks: medians over repeats, per backend."""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

BACKEND = keras.backend.backend()


def on_gpu():
    """Whether this backend computes on a GPU (TensorFlow here is the CPU build)."""
    if BACKEND == "torch":
        import torch

        return torch.cuda.is_available()
    if BACKEND == "jax":
        import jax

        return jax.devices()[0].platform == "gpu"
    return False


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


def rounds_median_ms(fns, rounds=5, block_s=0.25, max_calls=200):
    """Median wall time of each of `fns` in milliseconds, over `rounds` rounds of them in turn.

    Within a round each function gets its own warmed-up block of calls (as many as
    fit in `block_s`, at least one), so one contender's allocations (keras'
    whole-table LoRA delta is 1 GB at V = 1M) do not land inside another's timings;
    the rounds spread drift in the machine's state over all of them alike.
    """
    times = [[] for _ in fns]
    for round_index in range(rounds):
        for fn, spent in zip(fns, times):
            for _ in range(2 if round_index == 0 else 1):
                synchronize(fn())
            start = time.perf_counter()
            for _ in range(max_calls):
                t0 = time.perf_counter()
                synchronize(fn())
                spent.append((time.perf_counter() - t0) * 1e3)
                if time.perf_counter() - start > block_s:
                    break
    return [statistics.median(spent) for spent in times]


def to_device(array):
    """A numpy array as a tensor on the default device."""
    return keras.ops.convert_to_tensor(array)


def random_table(vocab, dim, seed=0):
    return np.random.default_rng(seed).standard_normal((vocab, dim), dtype=np.float32)


def copy_bandwidth_gbs(megabytes=256):
    """Bytes read plus bytes written per second by a plain copy: the memory's practical limit."""
    n = megabytes * 2**20 // 4
    if on_gpu() and BACKEND == "torch":
        import torch

        source = torch.ones(n, device="cuda")
        return 2 * 4 * n / median_ms(source.clone) / 1e6
    if on_gpu():
        import jax

        source = jax.numpy.ones(n)
        return 2 * 4 * n / median_ms(lambda: jax.numpy.array(source, copy=True)) / 1e6
    source, target = np.ones(n, dtype=np.float32), np.empty(n, dtype=np.float32)
    return 2 * 4 * n / median_ms(lambda: np.copyto(target, source)) / 1e6


def pin_one_thread():
    """One CPU thread for every backend, so that contenders compare work, not threading."""
    if BACKEND == "torch":
        import torch

        torch.set_num_threads(1)
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def reset_peak_memory():
    """Starts a new peak and returns the memory in use now, in MB (GPU memory on a GPU)."""
    if on_gpu() and BACKEND == "torch":
        import torch

        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    if on_gpu():
        import jax

        return jax.devices()[0].memory_stats()["bytes_in_use"] / 2**20
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the resident set's high-water mark (VmHWM)
    return _proc_status_mb("VmRSS")


def peak_memory():
    if on_gpu() and BACKEND == "torch":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    if on_gpu():
        import jax

        return jax.devices()[0].memory_stats()["peak_bytes_in_use"] / 2**20
    return _proc_status_mb("VmHWM")


def _proc_status_mb(field):
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024

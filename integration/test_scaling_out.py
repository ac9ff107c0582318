"""Each backend's own engine for more than one device: `tf.distribute` (one process with
two devices, and two worker processes), `keras.distribution` over two JAX processes,
and torch's DistributedDataParallel over two processes, all on 127.0.0.1, each against
one device on the same global batches."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run(script, *args, env=None, timeout=600):
    result = subprocess.run([sys.executable, os.path.join(HERE, script), *map(str, args)], capture_output=True,
                            text=True, timeout=timeout, env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def run_together(script, args_per_process, timeout=600, env=None):
    """Starts one process per argument list at once and waits for all of them."""
    processes = [subprocess.Popen([sys.executable, os.path.join(HERE, script), *map(str, args)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
                 for args in args_per_process]
    try:
        outputs = [p.communicate(timeout=timeout) for p in processes]
    finally:
        for p in processes:
            p.kill()
    for p, (_, err) in zip(processes, outputs):
        assert p.returncode == 0, err[-3000:]


def test_tensorflow_mirrored_strategy_equals_one_device():
    report = json.loads(run("mirrored.py").strip().splitlines()[-1])
    ragged = report.pop("ragged_custom_loop")
    assert max(ragged) <= 1e-5
    for state, entry in report.items():
        for check in ("trained", "evaluate", "predict", "loaded_inside", "loaded_outside"):
            assert entry[check] <= 2e-5, (state, check, entry)
        if not state.startswith("int"):
            assert entry["moved"] > 1e-3, (state, entry)


def test_tensorflow_multi_worker_equals_one_device(tmp_path):
    run("multi_worker.py", "single", tmp_path / "single.npz")
    ports = free_ports(2)
    run_together("multi_worker.py", [["worker", i, *ports, tmp_path / f"worker{i}.npz"] for i in range(2)])
    single = np.load(tmp_path / "single.npz")
    workers = [np.load(tmp_path / f"worker{i}.npz") for i in range(2)]
    trained = [key for key in single.files if not key.startswith("initial/")]
    for key in trained:
        for worker in workers:
            np.testing.assert_allclose(worker[key], single[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert max(np.abs(single[key] - single[f"initial/{key}"]).max() for key in trained) > 1e-3


def compare(single, distributed, prefix_of):
    """Each distributed entry against the single-process entry it names."""
    for key in distributed.files:
        expected = single[prefix_of(key)]
        np.testing.assert_allclose(distributed[key], expected, rtol=1e-4, atol=1e-6, err_msg=key)


def test_jax_two_processes_equal_one_process(tmp_path):
    run("jax_processes.py", "single", tmp_path / "single.npz")
    port, = free_ports(1)
    run_together("jax_processes.py", [["process", i, port, tmp_path / "processes.npz"] for i in range(2)])
    single, processes = np.load(tmp_path / "single.npz"), np.load(tmp_path / "processes.npz")
    assert {key.split("/")[0] for key in processes.files} == {"data_parallel", "model_parallel"}
    compare(single, processes, lambda key: "single/" + key.split("/", 1)[1])
    moved = [np.abs(single[k] - single["initial/" + k.split("/", 1)[1]]).max() for k in single.files
             if k.startswith("single/") and single[k].dtype == np.float32]
    assert max(moved) > 1e-3


def test_torch_ddp_equals_one_process(tmp_path):
    run("torch_ddp.py", "single", tmp_path / "single.npz")
    port, = free_ports(1)
    run_together("torch_ddp.py", [["process", i, port, tmp_path / "ddp.npz"] for i in range(2)])
    single, ddp = np.load(tmp_path / "single.npz"), np.load(tmp_path / "ddp.npz")
    assert len(ddp.files) > 0
    compare(single, ddp, lambda key: key)
    assert max(np.abs(ddp[k] - single["initial/" + k]).max() for k in ddp.files) > 1e-3

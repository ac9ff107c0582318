"""Each backend's own engine for more than one device: `tf.distribute` (one process with
two devices, and two worker processes), `keras.distribution` over two JAX processes,
and torch's DistributedDataParallel over two processes, all on 127.0.0.1, each against
one device on the same global batches."""

import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def free_ports(count):
    """Ports free now, below the kernel's range of ephemeral ports: a process that tries
    to reach a peer not yet listening on an ephemeral port can be given that very port as
    its own source and connect to itself."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            first_ephemeral = int(f.read().split()[0])
    except OSError:
        first_ephemeral = 32768  # Linux's default
    ports = []
    for port in random.Random().sample(range(10_000, first_ephemeral), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError(f"No {count} free ports below {first_ephemeral}.")


def run(script, *args, env=None, timeout=600):
    result = subprocess.run([sys.executable, os.path.join(HERE, script), *map(str, args)], capture_output=True,
                            text=True, timeout=timeout, env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def run_together(script, args_per_process, timeout=600, env=None):
    """Starts one process per argument list at once and waits for all of them. A process
    that fails stops the others at once (they would wait for it in a collective), and
    the failure shows its own output; so does a process still running at `timeout`."""
    with tempfile.TemporaryDirectory() as logs:
        processes = []
        for i, args in enumerate(args_per_process):
            log = open(os.path.join(logs, f"{i}.log"), "w+")
            command = [sys.executable, os.path.join(HERE, script), *map(str, args)]
            processes.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True,
                                               env={**os.environ, **(env or {})}), log))
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                states = [p.poll() for p, _ in processes]
                if None not in states or any(state not in (None, 0) for state in states):
                    break
                time.sleep(0.2)
        finally:
            states = [p.poll() for p, _ in processes]
            for p, _ in processes:
                p.kill()
                p.wait()
        outputs = []
        for _, log in processes:
            log.seek(0)
            outputs.append(log.read()[-3000:])
            log.close()
    # A process that failed first; one still running only where none failed.
    failed = [i for i, state in enumerate(states) if state not in (0, None)] or \
             [i for i, state in enumerate(states) if state is None]
    if failed:
        i = failed[0]
        what = f"exited with {states[i]}" if states[i] is not None else f"was still running after {timeout} s"
        pytest.fail(f"{script} process {i} {what} (every process: {states}):\n{outputs[i]}")


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

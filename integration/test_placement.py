"""Tables kept on another device than the computation (the tf.keras 2.x note on CPU placement)."""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _json_of(script, env=None):
    result = subprocess.run([sys.executable, os.path.join(HERE, script)], capture_output=True, text=True,
                            timeout=600, env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_jax_table_on_another_device_gathers_there_and_moves_only_rows():
    report = _json_of("placed.py")
    assert report == {"table_device": "cpu:1", "output_device": "cpu:0", "max_diff": 0.0,
                      "table_device_after_fit": "cpu:0"}


def _has_gpu(backend):
    code = ("import torch; print(torch.cuda.is_available())" if backend == "torch"
            else "import jax; print(any(d.platform == 'gpu' for d in jax.devices()))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return result.stdout.strip() == "True"


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_host_memory_table_with_model_on_gpu(backend):
    if not _has_gpu(backend):
        pytest.skip(f"no GPU visible to {backend} on this machine")
    report = _json_of("host_table_gpu.py", {"KERAS_BACKEND": backend})
    assert report["table_on_host"] and report["output_on_gpu"]
    # keras' JAX trainer assigns each step's results on the default device.
    assert report["table_on_host_after_fit"] == (backend == "torch")
    assert report["max_diff"] == 0.0
    assert report["losses"][-1] < report["losses"][0]

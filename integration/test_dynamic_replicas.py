"""Dynamic tables under several devices (`dynamic_replicas.py`): JAX's data parallelism
decides admission from the global batch, equal to one device; engines whose replicas
would each keep a map of their own are refused by name."""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run(backend):
    result = subprocess.run([sys.executable, os.path.join(HERE, "dynamic_replicas.py"), backend],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_jax_data_parallel_equals_one_device():
    result = run("jax")
    assert result["same_map"] and result["same_table"] and result["resident"] > 0


def test_mirrored_strategy_is_refused_by_name():
    error = run("tensorflow")["error"]
    assert error and "tf.distribute strategy of 2 replicas" in error and "dynamic table" in error

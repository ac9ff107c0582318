"""Tables sharded by rows over 8 devices give the single-device outputs, gradients and
trained weights, with the model's optimizer and with the layer's sparse_optimizer."""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def report():
    result = subprocess.run([sys.executable, os.path.join(HERE, "sharded.py")], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


STATES = ["float", "float_lora", "int8", "int8_lora", "int4", "int4_lora", "float_sparse", "float_lora_sparse"]


@pytest.mark.parametrize("state", STATES)
def test_rows_sharded_over_eight_devices_with_same_results(report, state):
    assert report["devices"] == 8
    entry = report[state]
    expected = {"embeddings"} | ({"embeddings_scale"} if state.startswith("int") else set()) | (
        {"lora_embeddings_a"} if "lora" in state else set())
    assert set(entry["per_device_bytes"]) == expected
    for per_device, total, devices in entry["per_device_bytes"].values():
        assert devices == 8 and per_device * 8 == total
    assert entry["max_output_diff"] <= 1e-5
    assert entry["max_grad_diff"] <= 1e-5
    assert entry["fit_losses"][-1] < entry["fit_losses"][0]
    # Trained with fit (the sparse_optimizer's states too): the single-device weights.
    assert entry["max_trained_diff"] <= 1e-5


@pytest.mark.parametrize("state", ["int8", "int4"])
def test_reverse_projection_of_a_sharded_quantized_table(report, state):
    entry = report[f"reverse_{state}"]
    per_device, total = entry["per_device_bytes"]
    assert per_device * 8 == total
    assert entry["max_output_diff"] <= 1e-4
    assert entry["max_grad_diff"] <= 1e-4


def test_a_collection_of_stacked_tables_sharded_over_eight_devices(report):
    entry = report["collection"]
    assert len(entry["per_device_bytes"]) == 2  # the stack of "a" and "b", and "c"
    for per_device, total in entry["per_device_bytes"].values():
        assert per_device * 8 == total
    assert entry["max_output_diff"] <= 1e-6
    assert entry["max_trained_diff"] <= 1e-6
    assert entry["max_moved"] > 1e-4


@pytest.mark.parametrize("state", ["float_sparse", "float_lora_sparse"])
def test_the_optimizer_state_follows_the_rows_whatever_key_matches_it(report, state):
    # The key ".*embeddings.*" matches the table and every variable of its optimizer.
    entry = report[f"greedy_key_{state}"]
    trained = "lora_embeddings_a" if "lora" in state else "embeddings"
    assert entry["sharded"][trained] and entry["sharded"][f"{trained}_accumulator"]
    assert entry["sharded"][f"{trained}_first_positions"]
    assert entry["max_trained_diff"] <= 1e-5

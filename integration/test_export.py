"""Every state exports wherever keras' own layer exports (`model.export`), and the
served artifact gives the model's output."""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_exports_wherever_keras_layer_does(backend, tmp_path):
    path = tmp_path / "report.json"
    result = subprocess.run([sys.executable, os.path.join(HERE, "exported.py"), str(path)], capture_output=True,
                            text=True, timeout=900, env={**os.environ, "KERAS_BACKEND": backend})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(path.read_text())
    assert report
    for case, entry in report.items():
        if isinstance(entry["keras"], float):
            assert isinstance(entry["ours"], float), (case, entry)
        if isinstance(entry["ours"], float):
            assert entry["ours"] <= 1e-5, (case, entry)
    # Both formats ran here (an exporter missing would fail both layers alike).
    assert isinstance(report["float/" + ("torch" if backend == "torch" else "tf_saved_model")]["ours"], float)
    assert isinstance(report["float/onnx"]["ours"], float), report["float/onnx"]
    # A dynamic table serves its frozen key map.
    dynamic = report["dynamic/" + ("torch" if backend == "torch" else "tf_saved_model")]["ours"]
    assert isinstance(dynamic, float) and dynamic <= 1e-5, dynamic

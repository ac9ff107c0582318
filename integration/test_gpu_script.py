"""`benchmarks/gpu.sh smoke`: every part of the GPU script runs, at tiny sizes on the CPU,
so that a lent GPU's few minutes are not spent on a broken script."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_part_of_the_gpu_script_runs(tmp_path):
    result = subprocess.run(["bash", "benchmarks/gpu.sh", "smoke"], cwd=ROOT, capture_output=True, text=True,
                            timeout=900, env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    expected = {"lookup.md": "| jax |", "train_sparse.md": "| torch |", "reverse.md": "| int4_lora | False |",
                "collection.md": "| kee_per_feature |", "dynamic.md": "| torch | 16,384 |"}
    for name, row in expected.items():
        with open(tmp_path / name) as f:
            text = f.read()
        assert row in text, f"{name}:\n{text[-2000:]}"
    assert "got / expected): 0" in (tmp_path / "xla_int8_dot.txt").read_text()

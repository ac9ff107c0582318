"""The demo and the examples run on every backend, and what they train improves."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("tensorflow", "jax", "torch")
SCRIPTS = {
    "examples/tied_language_model.py": r"loss ([\d.]+) -> ([\d.]+)",
    "examples/recommender.py": r"loss ([\d.]+) -> ([\d.]+)",
    "examples/dlrm.py": r"loss ([\d.]+) -> ([\d.]+)",
    "examples/dynamic_ids.py": r"loss ([\d.]+) -> ([\d.]+)",
    "-m keras_embed_ext.demo": r"shifted task accuracy: ([\d.]+) -> ([\d.]+)",
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("script", SCRIPTS)
def test_runs_and_improves(script, backend):
    result = subprocess.run([sys.executable, *script.split()], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "KERAS_BACKEND": backend})
    assert result.returncode == 0, result.stderr[-3000:]
    first, last = map(float, re.search(SCRIPTS[script], result.stdout).groups())
    improved = last > first if "accuracy" in SCRIPTS[script] else last < first
    assert improved, result.stdout[-2000:]


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_keras_hub_example_runs_and_learns(backend):
    pytest.importorskip("keras_hub", reason="keras-hub is not installed: pip install 'keras_embed_ext[hub]'")
    result = subprocess.run([sys.executable, "examples/llm_embedding_lora.py"], cwd=ROOT, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "KERAS_BACKEND": backend})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "token table: ReversibleEmbedding from keras_embed_ext" in result.stdout, result.stdout
    first, last = map(float, re.search(r"loss ([\d.]+) -> ([\d.]+)", result.stdout).groups())
    assert last < first, result.stdout

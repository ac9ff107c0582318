"""keras-hub language models with this package's layers: GPT2, Gemma, Gemma3, Llama
(untied) and BERT, each checked by `hub_models.py` on JAX and torch, and TensorFlow."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("keras_hub", reason="keras-hub is not installed: pip install 'keras_embed_ext[hub]'")

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ["gpt2", "gemma", "gemma3", "llama", "bert"]


@pytest.mark.parametrize("backend", ["jax", "torch", "tensorflow"])
def test_keras_hub_models_with_this_packages_layers(backend, tmp_path):
    result = subprocess.run([sys.executable, os.path.join(HERE, "hub_models.py"), str(tmp_path), *MODELS],
                            capture_output=True, text=True, timeout=900, env={**os.environ, "KERAS_BACKEND": backend})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert result.stdout.strip().endswith("OK"), result.stdout
    for model in MODELS:
        assert f"{model} int4 + LoRA saves, reloads and generates" in result.stdout, result.stdout

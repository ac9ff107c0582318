"""A .keras file saved on each backend loads on each backend, in every storage state."""

import os
import subprocess
import sys

import numpy as np
import pytest

from states import STATES

HERE = os.path.dirname(os.path.abspath(__file__))
BACKENDS = ("tensorflow", "jax", "torch")


def _run(backend, *args):
    env = {**os.environ, "KERAS_BACKEND": backend}
    result = subprocess.run([sys.executable, os.path.join(HERE, "states.py"), *args], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """outputs[(saved_on, loaded_on)][state], and the saving backend's own outputs."""
    root = tmp_path_factory.mktemp("files")
    saved, loaded = {}, {}
    for source in BACKENDS:
        saved[source] = root / f"saved_{source}"
        saved[source].mkdir()
        _run(source, "save", str(saved[source]))
    for target in BACKENDS:  # one process per backend loads every backend's files
        out = root / f"loaded_on_{target}"
        _run(target, "load", str(out), *(str(saved[source]) for source in BACKENDS))
        for source in BACKENDS:
            loaded[source, target] = out / saved[source].name
    return saved, loaded


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("target", BACKENDS)
@pytest.mark.parametrize("source", BACKENDS)
def test_file_loads_with_same_outputs(matrix, source, target, state):
    saved, loaded = matrix
    expected = np.load(saved[source] / f"{state}.npy")
    actual = np.load(loaded[source, target] / f"{state}.npy")
    if state == "float":
        np.testing.assert_array_equal(actual, expected)
    else:
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)

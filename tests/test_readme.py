"""README.md's Python code runs as written, block after block in one namespace, as a
reader pastes it; a block whose first line is `# On JAX:` runs on JAX only."""

import os
import re

import pytest

from conftest import BACKEND

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def python_blocks():
    with open(README) as f:
        return re.findall(r"^```python\n(.*?)^```", f.read(), flags=re.S | re.M)


def test_readme_has_code():
    assert len(python_blocks()) >= 5


def test_readme_code_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in python_blocks():
        if block.startswith("# On JAX:") and BACKEND != "jax":
            continue
        try:
            exec(compile(block, README, "exec"), namespace)
        except Exception as error:
            pytest.fail(f"README block failed on {BACKEND}: {error!r}\n{block}")

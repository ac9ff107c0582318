"""The Python code of README.md and of every page in docs/ runs as written, block after
block in one namespace per page, as a reader pastes it; a block whose first line is
`# On JAX:` (or `# On TensorFlow:`, `# On torch:`) runs on that backend only."""

import glob
import os
import re

import pytest

from conftest import BACKEND

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
PAGES = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


def python_blocks(path):
    with open(path) as f:
        return re.findall(r"^```python\n(.*?)^```", f.read(), flags=re.S | re.M)


def test_readme_and_the_topic_pages_have_code():
    assert python_blocks(README)
    with_code = [os.path.basename(page) for page in PAGES if python_blocks(page)]
    assert len(with_code) >= 7, with_code


@pytest.mark.parametrize("path", [README, *PAGES], ids=os.path.basename)
def test_code_runs(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in python_blocks(path):
        first_line = block.split("\n", 1)[0]
        only_on = {"# On JAX:": "jax", "# On TensorFlow:": "tensorflow", "# On torch:": "torch"}.get(first_line)
        if only_on not in (None, BACKEND):
            continue
        try:
            exec(compile(block, path, "exec"), namespace)
        except Exception as error:
            pytest.fail(f"{os.path.basename(path)} block failed on {BACKEND}: {error!r}\n{block}")

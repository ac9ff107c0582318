"""keras' own tests of `keras.layers.Embedding` and `keras.layers.ReversibleEmbedding`
pass against this package's layers.

The test files ship in the keras sdist on the package registry; they are downloaded
and run with the layers substituted (`keras_suite_conftest.py`), on each backend.
Every test that fails here is declared below, with the reason, and in README.md.
"""

import os
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ElementTree

import pytest

KERAS_VERSION = "3.15.1"
HERE = os.path.dirname(os.path.abspath(__file__))
SAVES_THE_ADAPTER = (
    "loads the file of a quantized layer with LoRA into a new layer built without it and expects "
    "no adapter; this layer's files hold the adapter, which such a layer takes (keras merges it "
    "into the table at save, re-quantizing it)"
)
EXPECTED_FAILURES = {
    "EmbeddingTest.test_quantize_lora_integration_int8": SAVES_THE_ADAPTER,
    "EmbeddingTest.test_quantize_lora_integration_int4": SAVES_THE_ADAPTER,
    "EmbeddingTest.test_quantize_int_int4": (
        "reads `layer.embeddings` of an int4 layer as keras' stored int values; this layer's "
        "`embeddings` is the effective float table in every state"
    ),
}


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """A directory holding keras' two test files and the substituting conftest.py."""
    root = tmp_path_factory.mktemp("keras_suite")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
         f"keras=={KERAS_VERSION}", "-d", str(root)],
        check=True, timeout=300,
    )
    with tarfile.open(root / f"keras-{KERAS_VERSION}.tar.gz") as sdist:
        for name in ("embedding", "reversible_embedding"):
            member = f"keras-{KERAS_VERSION}/keras/src/layers/core/{name}_test.py"
            with sdist.extractfile(member) as source, open(root / f"test_keras_{name}.py", "wb") as target:
                shutil.copyfileobj(source, target)
    shutil.copy(os.path.join(HERE, "keras_suite_conftest.py"), root / "conftest.py")
    return root


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_keras_layer_tests_pass_but_the_declared(suite, backend):
    report = suite / f"{backend}.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_keras_embedding.py",
         "test_keras_reversible_embedding.py", f"--junitxml={report}"],
        cwd=suite, env={**os.environ, "KERAS_BACKEND": backend}, capture_output=True, timeout=900,
    )
    cases = ElementTree.parse(report).getroot().iter("testcase")
    outcomes = {}
    for case in cases:
        failed = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped") is not None
        name = case.get("classname").split(".")[-1] + "." + case.get("name")
        outcomes[name] = "failed" if failed else "skipped" if skipped else "passed"
    failed = {name for name, outcome in outcomes.items() if outcome == "failed"}
    assert failed == set(EXPECTED_FAILURES), sorted(failed ^ set(EXPECTED_FAILURES))
    passed = {name.split(".")[0] for name, outcome in outcomes.items() if outcome == "passed"}
    assert passed == {"EmbeddingTest", "ReversibleEmbeddingTest"}
    assert sum(outcome == "passed" for outcome in outcomes.values()) >= 45 + 40

"""Runs keras-rs' own tests of `DistributedEmbedding` and `EmbedReduce` against this
package, on each backend, and prints what passed.

No package ships those tests: give a checkout of keras-team/keras-rs at the tag the
package follows (v0.4.0). Its two test files run unchanged from a scratch directory,
with `keras_rs_suite_conftest.py` as their conftest.py, which puts this package's
classes in place of keras-rs' (KERAS_RS_SUITE_AGAINST=keras-rs runs keras-rs itself):

    python integration/keras_rs_suite.py ../keras-rs [tensorflow jax torch]

It needs TensorFlow (the tests import it on every backend), absl-py, JAX and torch:
the `integration` tox env has them.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree

HERE = os.path.dirname(os.path.abspath(__file__))
TEST_FILES = (
    "keras_rs/src/layers/embedding/distributed_embedding_test.py",
    "keras_rs/src/layers/embedding/embed_reduce_test.py",
)


def outcomes(checkout, backend, scratch):
    """`{test: "passed" | "failed" | "skipped"}` of both files on `backend`."""
    report = os.path.join(scratch, f"{backend}.xml")
    files = [shutil.copy(os.path.join(checkout, path), scratch) for path in TEST_FILES]
    # keras-rs' test helpers come from the checkout; this package from the tree the script is in.
    path = os.pathsep.join([os.path.abspath(checkout), os.path.dirname(HERE)])
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": path}
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files,
                    f"--junitxml={report}"], cwd=scratch, env=env, capture_output=True, timeout=1800)
    result = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        failed = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped") is not None
        result[f"{case.get('classname').split('.')[-1]}.{case.get('name')}"] = (
            "failed" if failed else "skipped" if skipped else "passed")
    return result


def main(checkout, *backends):
    for backend in backends or ("tensorflow", "jax", "torch"):
        with tempfile.TemporaryDirectory() as scratch:
            shutil.copy(os.path.join(HERE, "keras_rs_suite_conftest.py"), os.path.join(scratch, "conftest.py"))
            result = outcomes(checkout, backend, scratch)
        counts = {kind: sum(v == kind for v in result.values()) for kind in ("passed", "failed", "skipped")}
        print(f"{backend}: {counts}")
        for name, outcome in sorted(result.items()):
            if outcome == "failed":
                print(f"  failed: {name}")


if __name__ == "__main__":
    main(*sys.argv[1:])

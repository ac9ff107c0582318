"""keras-rs' JAX route from a `tf.data` pipeline: ragged ids densified by
`DistributedEmbedding.preprocess`, looked up and trained with `fit` (`tf_data_on_jax.py`)."""

import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_ragged_ids_from_tf_data_feed_a_jax_model_through_preprocess():
    result = subprocess.run([sys.executable, os.path.join(HERE, "tf_data_on_jax.py")], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "KERAS_BACKEND": "jax"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(re.search(r"largest difference (\S+)", result.stdout).group(1)) < 1e-5, result.stdout
    first, last = map(float, re.search(r"loss ([\d.]+) -> ([\d.]+)", result.stdout).groups())
    assert last < first, result.stdout

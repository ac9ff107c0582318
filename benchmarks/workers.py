"""One worker process per backend: KERAS_BACKEND is read once, when keras is imported."""

import json
import os
import subprocess
import sys


def rows_from_workers(script, backends, worker_args):
    """The rows that `script --worker *worker_args` prints as JSON on its last line, run
    once per backend, each in a process of its own."""
    rows = []
    for backend in backends:
        command = [sys.executable, script, "--worker", *worker_args]
        result = subprocess.run(command, env={**os.environ, "KERAS_BACKEND": backend}, capture_output=True, text=True)
        if result.returncode:
            sys.exit(f"{backend} failed:\n{result.stderr[-3000:]}")
        rows += json.loads(result.stdout.strip().splitlines()[-1])
    return rows

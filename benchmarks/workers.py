"""What each benchmark's main process does: run one worker process per backend
(KERAS_BACKEND is read once, when keras is imported) and write the results."""

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


def write_table(out, name, title, table):
    """Writes `title` and the markdown `table` to `out/name`, and prints the table."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, name), "w") as f:
        f.write(f"{title}\n\n{table}\n")
    print(table)


def charts_available() -> bool:
    """Whether matplotlib can draw the charts here (a GPU machine may lack it)."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no charts", file=sys.stderr)
        return False
    matplotlib.use("Agg")
    return True

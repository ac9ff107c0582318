"""Which Keras backend to use when keras' own choice is not installed.

keras imports the backend of `KERAS_BACKEND` or `~/.keras/keras.json` (TensorFlow by
default) and fails when it is not installed. Imported before keras, this package
picks an installed backend in that case, and only then.
"""

import importlib.util
import json
import os

BACKENDS = ("tensorflow", "jax", "torch")


def installed_backends():
    return [name for name in BACKENDS if importlib.util.find_spec(name) is not None]


def choose_backend():
    """Sets KERAS_BACKEND to an installed backend when keras' own choice is not installed."""
    if "KERAS_BACKEND" in os.environ or not installed_backends():
        return
    config = os.path.join(os.path.expanduser(os.environ.get("KERAS_HOME", "~/.keras")), "keras.json")
    try:
        with open(config) as f:
            configured = json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError):
        configured = "tensorflow"
    if configured not in installed_backends():
        os.environ["KERAS_BACKEND"] = installed_backends()[0]

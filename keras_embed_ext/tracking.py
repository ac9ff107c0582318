"""Adding and removing a built layer's variables."""

import contextlib


@contextlib.contextmanager
def unlocked(layer):
    """Keras locks a layer's variable tracker once it is built; this opens it for a
    change (an adapter, a new storage format) and leaves it as it was, so a change
    made within `build` does not lock the rest of the build out."""
    locked = layer._tracker.locked
    layer._tracker.unlock()
    try:
        yield
    finally:
        if locked:
            layer._tracker.lock()

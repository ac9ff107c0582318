"""What a `DistributedEmbedding` takes: ids and weights in the structure of its feature
configs, or keras-rs' preprocessed bundle of them, in the shapes keras-rs accepts."""

import keras

PREPROCESSED = "preprocessed_inputs_per_placement"  # keras-rs' mark of preprocessed inputs


class Features:
    """The nested feature configs, kept out of keras' attribute tracking, which would
    turn their dicts and lists into its own types."""

    def __init__(self, nested):
        self.nested = nested
        self.flat = keras.tree.flatten(nested)
        self.tables = list({id(f.table): f.table for f in self.flat}.values())

    def flatten(self, nested, subject):
        """`nested` (ids or weights) flat in the features' order; a structure that is not
        theirs is a `ValueError` naming what is missing and what is not a feature."""
        try:
            keras.tree.assert_same_structure(self.nested, nested)
        except (ValueError, TypeError):
            expected, given = _leaf_paths(self.nested), _leaf_paths(nested)
            raise ValueError(
                f"{subject} in the structure of its feature configs. Missing: {sorted(expected - given)}; "
                f"not a feature: {sorted(given - expected)}."
            ) from None
        return keras.tree.flatten(nested)


def bundled(nested, ids, weights):
    """keras-rs' form of preprocessed inputs: the flat `ids` (and `weights`) packed as
    `nested`, marked for `call`."""
    bundle = {"inputs": keras.tree.pack_sequence_as(nested, ids)}
    if weights is not None:
        bundle["weights"] = keras.tree.pack_sequence_as(nested, weights)
    return {PREPROCESSED: {"default_device": bundle}}


def unbundled(inputs, weights):
    """`(inputs, weights)` of a preprocessed bundle (or of its shapes), or as given."""
    if isinstance(inputs, dict) and PREPROCESSED in inputs:
        bundle = inputs[PREPROCESSED]["default_device"]
        return bundle["inputs"], bundle.get("weights", weights)
    return inputs, weights


def _leaf_paths(nested):
    return {"/".join(map(str, path)) for path, _ in keras.tree.flatten_with_path(nested)}


def check_ids_shape(feature, shape, subject):
    """The shapes keras-rs takes for a feature of `input_shape (batch, ..., bag)`: the
    batch of any size, a bag of at most `bag` ids (the input shape's last dimension is
    a maximum), and `(batch,)` for a bag of one."""
    expected = tuple(feature.input_shape)
    if len(expected) == 2 and expected[-1] == 1 and len(shape) == 1:
        return
    middle_ok = all(a is None or b is None or a == b for a, b in zip(shape[1:-1], expected[1:-1]))
    last_ok = len(expected) < 2 or shape[-1] is None or expected[-1] is None or shape[-1] <= expected[-1]
    if len(shape) != len(expected) or not middle_ok or not last_ok:
        bag = " (a bag of at most that many ids)" if len(expected) >= 2 else ""
        raise ValueError(f"{subject} expects ids of shape {expected}{bag}. Received shape {shape}.")

"""Arguments of earlier Keras generations, mapped onto Keras 3 names."""

import warnings

KERAS1_NAMES = {
    "init": "embeddings_initializer",
    "W_regularizer": "embeddings_regularizer",
    "W_constraint": "embeddings_constraint",
}


def pop_keras1_arguments(kwargs):
    """Removes Keras 1 names from `kwargs`; returns them under their Keras 3 names."""
    renamed = {}
    for old, new in KERAS1_NAMES.items():
        if old in kwargs:
            warnings.warn(
                f"Embedding argument `{old}` is the Keras 1 name of `{new}`; "
                f"use `{new}` instead.",
                DeprecationWarning,
                stacklevel=3,
            )
            renamed[new] = kwargs.pop(old)
    return renamed


def input_shape_from_length(input_length, kwargs):
    """tf.keras 2's `input_length`: declares the input shape `(input_length,)`.

    As the first layer of a `keras.Sequential`, a declared input shape makes the
    model build at once.
    """
    if input_length is None or "input_shape" in kwargs or "batch_input_shape" in kwargs:
        return kwargs
    if isinstance(input_length, bool) or not isinstance(input_length, int) or input_length <= 0:
        raise ValueError(
            "`input_length` must be a positive integer or None. "
            f"Received: input_length={input_length!r}"
        )
    return {**kwargs, "input_shape": (input_length,)}

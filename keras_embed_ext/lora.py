"""The low-rank adapter: `(alpha / rank) * A @ B`, used gather-first."""

from keras import initializers
from keras import ops

from keras_embed_ext.backends import on_device_of


def add_adapter(layer, rank, a_initializer, b_initializer):
    """Adds float32 `lora_embeddings_a (V, r)` and `lora_embeddings_b (r, D)`."""
    layer.lora_embeddings_a = layer.add_weight(
        name="lora_embeddings_a",
        shape=(layer.input_dim, rank),
        initializer=initializers.get(a_initializer),
        dtype="float32",
        regularizer=layer.embeddings_regularizer,
        autocast=False,
    )
    layer.lora_embeddings_b = layer.add_weight(
        name="lora_embeddings_b",
        shape=(rank, layer.output_dim),
        initializer=initializers.get(b_initializer),
        dtype="float32",
        regularizer=layer.embeddings_regularizer,
        autocast=False,
    )


def adapter_variables(layer):
    return [layer.lora_embeddings_a, layer.lora_embeddings_b]


def remove_adapter(layer):
    del layer.lora_embeddings_a
    del layer.lora_embeddings_b


def _scaled_b(layer):
    """`(alpha / r) * B`: scaling the small factor, not every output row."""
    return (layer.lora_alpha / layer.lora_rank) * ops.convert_to_tensor(layer.lora_embeddings_b)


def adapter_rows(layer, ids):
    """`A[ids] @ ((alpha / r) * B)`: the delta of the looked-up rows only."""
    def gather(ids):
        rows_a = ops.take(layer.lora_embeddings_a, ids, axis=0)
        return ops.matmul(rows_a, _scaled_b(layer))

    return on_device_of(layer.lora_embeddings_a, ids, gather)


def adapter_table(layer):
    """`(alpha / r) * A @ B`, the delta of the whole table (merge and export)."""
    return ops.matmul(layer.lora_embeddings_a, _scaled_b(layer))


def adapter_logits(layer, x):
    """`x @ ((alpha / r) * A @ B).T` as `(x @ B.T) @ A.T`, never forming `A @ B`."""
    x = ops.cast(x, "float32")
    projected = ops.matmul(x, ops.transpose(_scaled_b(layer)))
    return ops.matmul(projected, ops.transpose(layer.lora_embeddings_a))

"""The low-rank adapter: `(alpha / rank) * A @ B`, used gather-first."""

from keras import initializers
from keras import ops

from keras_embed_ext.arguments import check_lora_alpha
from keras_embed_ext.arguments import is_positive_int
from keras_embed_ext.backends import add_matmul
from keras_embed_ext.backends import on_device_of
from keras_embed_ext.backends import to_device_of
from keras_embed_ext.backends import take_rows
from keras_embed_ext.ids import zero_invalid
from keras_embed_ext.tracking import unlocked


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


def _scaled_b(layer):
    """`(alpha / r) * B`: scaling the small factor, not every output row."""
    return (layer.lora_alpha / layer.lora_rank) * ops.convert_to_tensor(layer.lora_embeddings_b)


def add_adapter_rows(layer, rows, ids, valid=None, row_lookup=None):
    """`rows + A[ids] @ ((alpha / r) * B)`: the delta of the looked-up rows only,
    zero for the ids that `valid` marks invalid.

    `rows` are float32 rows just gathered for `ids`; only `A[ids]` and `B` move to
    them when the adapter lives on another device. `row_lookup` reads `A` in a
    training step of the layer's `sparse_optimizer`.
    """
    a = layer.lora_embeddings_a
    if row_lookup is not None:
        rows_a = zero_invalid(row_lookup(ids), valid)
    else:
        rows_a = zero_invalid(on_device_of(a, ids, lambda ids: take_rows(a, ids)), valid)
    return add_matmul(rows, rows_a, to_device_of(_scaled_b(layer), rows))


def adapter_table(layer):
    """`(alpha / r) * A @ B`, the delta of the whole table (merge and export)."""
    return ops.matmul(layer.lora_embeddings_a, _scaled_b(layer))


def logit_factors(layer, x):
    """`(x @ B.T, A)` scaled: the adapter's logits `x @ ((alpha / r) * A @ B).T` are
    their product `(x @ B.T) @ A.T`, which never forms `A @ B`."""
    projected = ops.matmul(ops.cast(x, "float32"), ops.transpose(_scaled_b(layer)))
    return projected, layer.lora_embeddings_a


def enable(layer, rank, lora_alpha, a_initializer, b_initializer):
    """`Embedding.enable_lora`: checks, then the adapter, then a frozen table."""
    if layer.embeddings_constraint:
        raise ValueError(
            "LoRA is incompatible with embedding constraints. Remove "
            "the `embeddings_constraint` argument to enable LoRA."
        )
    if not layer.built:
        raise ValueError("Cannot enable LoRA on a layer that isn't yet built.")
    if layer.lora_enabled:
        raise ValueError(
            f"lora is already enabled (rank {layer.lora_rank}). This can only be done once per "
            "layer; call `merge_lora()` first to start a new adapter."
        )
    if not is_positive_int(rank):
        raise ValueError(f"`rank` must be a positive integer. Received: rank={rank!r}")
    check_lora_alpha(lora_alpha)
    with unlocked(layer):
        add_adapter(layer, rank, a_initializer, b_initializer)
        if layer._format.mode is None:
            layer._embeddings.trainable = False
    layer.lora_enabled = True
    layer.lora_rank = rank
    layer.lora_alpha = lora_alpha if lora_alpha is not None else rank


def merge(layer):
    """`Embedding.merge_lora`: the delta folded into the table (re-encoded), adapter gone."""
    if not layer.lora_enabled:
        raise ValueError("merge_lora() needs LoRA enabled; this layer has no adapter.")
    merged = ops.cast(layer._format.dequantize(layer), "float32") + adapter_table(layer)
    with unlocked(layer):
        del layer.lora_embeddings_a
        del layer.lora_embeddings_b
    layer._format.encode(layer, merged)
    if layer._format.mode is None:
        layer._embeddings.trainable = True
    layer.lora_enabled = False
    layer.lora_rank = None
    layer.lora_alpha = None

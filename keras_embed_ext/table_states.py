"""The layer's side of keras' LoRA and quantization API, and what reads its table whole
(`embeddings`, `attend`): each a call on the layer's `Table`, under keras' names."""

import numpy as np

from keras_embed_ext.formats import int4_block_size
from keras_embed_ext.ids import dtype_name
from keras_embed_ext.ids import is_numeric


class TableVariable:
    """A variable of a layer's table under keras' attribute name for it
    (`layer.embeddings_scale`); an `AttributeError` that names it where the table's
    state has none."""

    def __init__(self, part: str, name: str, table: str = "_table"):
        self.part, self.name, self.table = part, name, table

    def __set_name__(self, owner, attribute):
        self.attribute = attribute

    def __get__(self, layer, owner=None):
        if layer is None:
            return self
        holder = getattr(vars(layer).get(self.table), self.part, None)
        if not hasattr(holder, self.name):
            raise AttributeError(f"{type(layer).__name__} layer '{layer.name}' has no `{self.attribute}` in its state.")
        return getattr(holder, self.name)


class TableStates:
    """Mixed into `Embedding`, whose `_table` is the layer's `Table`."""

    def enable_lora(
        self,
        rank: int,
        lora_alpha: float | None = None,
        a_initializer="he_uniform",
        b_initializer="zeros",
    ) -> None:
        """Adds a trainable low-rank adapter and freezes the table.

        Rows become `table[ids] + (lora_alpha / rank) * A[ids] @ B`, with
        float32 `lora_embeddings_a (input_dim, rank)` and
        `lora_embeddings_b (rank, output_dim)`. Works on float and quantized
        tables, before or after `quantize`.
        """
        if not self.built and not self.embeddings_constraint:  # keras names the constraint first
            raise ValueError("Cannot enable LoRA on a layer that isn't yet built.")
        self._table.enable_lora(rank, lora_alpha, a_initializer, b_initializer)
        self.lora_rank = rank
        self.lora_alpha = self._table.adapter.alpha

    def merge_lora(self) -> None:
        """Folds the LoRA delta into the table and removes the adapter.

        A float table gets `table + (alpha / r) * A @ B` and becomes
        trainable again; a quantized table is decoded, merged and quantized
        again in its own format.
        """
        self._table.merge_lora()
        self.lora_rank = None
        self.lora_alpha = None

    @property
    def lora_enabled(self) -> bool:
        return self._table.format is not None and self._table.adapter is not None

    @property
    def _is_quantized(self) -> bool:
        """Whether the stored table is int8 or int4; keras reads it before quantizing a
        layer whose dtype policy is set to a quantized one."""
        return self._table.format is not None and self._table.mode is not None

    def quantized_build(self, embeddings_shape, mode, config=None):
        """Builds the variables of a `mode` table ("int8" or "int4"), as keras' layer does."""
        if mode not in ("int8", "int4"):
            raise self._quantization_mode_error(mode)
        self._table.shape = tuple(embeddings_shape)
        self._table.build(mode, int4_block_size(self.dtype_policy, config, self.path))

    def quantized_call(self, *args, **kwargs):
        if self.quantization_mode not in ("int8", "int4"):
            raise self._quantization_mode_error(self.quantization_mode)
        return self.call(*args, **kwargs)

    def _quantization_mode_error(self, mode):
        return NotImplementedError(
            f"Invalid quantization mode. Expected one of ('int8', 'int4'). Received: quantization_mode={mode}"
        )

    # keras' attribute names for the table's variables.
    _embeddings = TableVariable("format", "embeddings")
    embeddings_scale = TableVariable("format", "embeddings_scale")
    embeddings_zero = TableVariable("format", "embeddings_zero")
    g_idx = TableVariable("format", "g_idx")
    lora_embeddings_a = TableVariable("adapter", "a")
    lora_embeddings_b = TableVariable("adapter", "b")

    @property
    def lora_kernel_a(self):
        """`lora_embeddings_a`, by the name keras-hub's `save_lora_weights` reads."""
        return self.lora_embeddings_a

    @property
    def lora_kernel_b(self):
        """`lora_embeddings_b`, by the name keras-hub's `save_lora_weights` reads."""
        return self.lora_embeddings_b

    @property
    def _int4_block_size(self):
        """The int4 block size as given (`-1` or `None` for per-row scales), as keras keeps it."""
        return getattr(self._table.format, "given_block_size", None)

    @property
    def embeddings(self):
        """The effective float table: the base (dequantized) plus LoRA."""
        if not self.built:
            raise AttributeError("You must build the layer before accessing `embeddings`.")
        return self._table.dequantize()

    def attend(self, x):
        """Logits over the vocabulary: `x @ embeddings.T`.

        Ties an output projection to this table (float, quantized or with
        LoRA). A quantized table is read a block of rows at a time; the LoRA
        part is `(x @ B.T) @ A.T`, so `A @ B` is never formed.

        Args:
            x: Tensor of shape `(..., output_dim)`.

        Returns:
            Tensor of shape `(..., input_dim)` in the compute dtype.
        """
        self._check_projection_inputs(x)
        return self._table.logits(x, self.compute_dtype)

    def _check_projection_inputs(self, x, caller="attend()", reads_table=True):
        """Checks the inputs of an output projection, named in errors by `caller`."""
        shape = tuple(np.shape(x))
        if not shape or shape[-1] != self.output_dim:
            raise ValueError(
                f"{caller} expects inputs whose last axis is output_dim="
                f"{self.output_dim}. Received shape {shape}."
            )
        dtype = dtype_name(x)
        if not is_numeric(dtype):
            raise TypeError(f"{caller} expects float inputs. Received: dtype {dtype}.")
        if reads_table and self.sparse_optimizer is not None:
            raise ValueError(
                f"Embedding layer '{self.name}' trains its table with sparse_optimizer, which "
                f"updates only looked-up rows; {caller} reads every row. Use "
                "sparse_optimizer=None to tie an output projection to the table."
            )

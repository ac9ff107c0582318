"""What changes a table's state (LoRA, quantization, merge) and what reads the whole
table: the `Embedding` methods of keras' LoRA and quantization API, and `attend`."""

import numpy as np
from keras import ops

from keras_embed_ext import lora
from keras_embed_ext import row_training
from keras_embed_ext.formats import format_for
from keras_embed_ext.formats import int4_block_size
from keras_embed_ext.ids import dtype_name
from keras_embed_ext.ids import is_numeric


class TableStates:
    """Mixed into `Embedding`: LoRA, quantization and the effective table."""

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
        lora.enable(self, rank, lora_alpha, a_initializer, b_initializer)
        row_training.attach(self)

    def merge_lora(self) -> None:
        """Folds the LoRA delta into the table and removes the adapter.

        A float table gets `table + (alpha / r) * A @ B` and becomes
        trainable again; a quantized table is decoded, merged and quantized
        again in its own format.
        """
        lora.merge(self)
        row_training.attach(self)

    def quantized_build(self, embeddings_shape, mode, config=None):
        """Builds the variables of a `mode` table ("int8" or "int4"), as keras' layer does."""
        if mode not in ("int8", "int4"):
            raise self._quantization_mode_error(mode)
        self._format = format_for(mode, int4_block_size(self.dtype_policy, config, self.path))
        self._format.build(self, tuple(embeddings_shape))
        self._is_quantized = True

    def quantized_call(self, *args, **kwargs):
        if self.quantization_mode not in ("int8", "int4"):
            raise self._quantization_mode_error(self.quantization_mode)
        return self.call(*args, **kwargs)

    def _quantization_mode_error(self, mode):
        return NotImplementedError(
            f"Invalid quantization mode. Expected one of ('int8', 'int4'). Received: quantization_mode={mode}"
        )

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
        return getattr(self._format, "given_block_size", None)

    @property
    def embeddings(self):
        """The effective float table: the base (dequantized) plus LoRA."""
        if not self.built:
            raise AttributeError(
                "You must build the layer before accessing `embeddings`."
            )
        if self._format.mode is None and not self.lora_enabled:
            return self._embeddings
        table = self._format.dequantize(self)
        if self.lora_enabled:
            table = ops.cast(table, "float32") + lora.adapter_table(self)
        return table

    def attend(self, x):
        """Logits over the vocabulary: `x @ embeddings.T`.

        Ties an output projection to this table (float, quantized or with
        LoRA). A quantized table is decoded for the call only; the LoRA part
        is `(x @ B.T) @ A.T`, so `A @ B` is never formed.

        Args:
            x: Tensor of shape `(..., output_dim)`.

        Returns:
            Tensor of shape `(..., input_dim)` in the compute dtype.
        """
        self._check_projection_inputs(x)
        return self._tied_logits(x, self.compute_dtype)

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

    def _tied_logits(self, x, dtype, inputs_quantizer=None):
        """`x @ embeddings.T` in `dtype`, the adapter's part never forming `A @ B`; a
        quantized table's part from inputs quantized by `inputs_quantizer`, if given."""
        adapter = lora.logit_factors(self, x) if self.lora_enabled else None
        return self._format.logits(self, x, dtype, inputs_quantizer, adapter)

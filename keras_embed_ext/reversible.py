"""`ReversibleEmbedding`: the embedding layer of language models, projecting back onto
the vocabulary with `reverse=True`, a drop-in for `keras.layers.ReversibleEmbedding`."""

import keras
from keras import ops
from keras.src.backend import set_keras_mask

from keras_embed_ext.embedding import Embedding
from keras_embed_ext.formats import int4_block_size
from keras_embed_ext.output_table import OutputTable
from keras_embed_ext.table_states import TableVariable


@keras.saving.register_keras_serializable(package="keras_embed_ext")
class ReversibleEmbedding(Embedding):
    """An embedding layer which can project backwards onto the vocabulary.

    `keras.layers.ReversibleEmbedding` on this package's `Embedding`: lookups
    gather first in every state (LoRA, int8, int4), and `reverse=True` gives
    logits over the vocabulary, `x @ embeddings.T` when the weights are tied
    (the LoRA delta included, quantized or not), or `x @ reverse_embeddings`,
    a separate trainable `(output_dim, input_dim)` kernel, when they are not
    (with LoRA, an adapter of its own: `enable_lora`). A quantized table is
    read a block of rows at a time, its inputs rounded to int8 first where
    keras' layer rounds them (`inputs_quantizer`); their gradient is the
    float product's. Variables, config and files are keras 3.15's.

    Example:

    >>> embedding = keras_embed_ext.ReversibleEmbedding(100, 32)
    >>> hidden = embedding(np.random.randint(100, size=(16, 50)))
    >>> embedding(hidden, reverse=True).shape
    (16, 50, 100)

    Args:
        input_dim: Integer. Size of the vocabulary, i.e. maximum id + 1.
        output_dim: Integer. Dimension of the dense embedding.
        tie_weights: Boolean, whether the reverse projection uses the
            transposed embedding table (`True`) or its own kernel.
        embeddings_initializer: Initializer for `embeddings` (and
            `reverse_embeddings`).
        embeddings_regularizer: Regularizer applied to `embeddings`.
        embeddings_constraint: Constraint applied to `embeddings`.
        mask_zero: Boolean, whether id 0 is padding (forward calls only).
        reverse_dtype: The dtype of the reverse projection; defaults to the
            layer's compute dtype.
        logit_soft_cap: Optional number: reverse logits become
            `tanh(logits / logit_soft_cap) * logit_soft_cap`.
        **kwargs: Any other argument of `keras_embed_ext.Embedding`
            (`lora_rank`, `combiner`, `invalid_ids`, ...) or of a layer.

    Call arguments:
        inputs: Ids, or with `reverse=True` a float tensor `(..., output_dim)`.
        reverse: Boolean, whether to project onto the vocabulary.

    Input shape:
        Ids of any shape; with `reverse=True`, `(..., output_dim)`.

    Output shape:
        `ids.shape + (output_dim,)`; with `reverse=True`, `(..., input_dim)`.
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        tie_weights: bool = True,
        embeddings_initializer="uniform",
        embeddings_regularizer=None,
        embeddings_constraint=None,
        mask_zero: bool = False,
        reverse_dtype=None,
        logit_soft_cap: float | None = None,
        **kwargs,
    ):
        self.tie_weights = bool(tie_weights)
        self.reverse_dtype = reverse_dtype
        self.logit_soft_cap = logit_soft_cap
        super().__init__(
            input_dim,
            output_dim,
            embeddings_initializer=embeddings_initializer,
            embeddings_regularizer=embeddings_regularizer,
            embeddings_constraint=embeddings_constraint,
            mask_zero=mask_zero,
            **kwargs,
        )

    def build(self, input_shape=None):
        if self.built:
            return
        super().build(input_shape)
        if not self.tie_weights:
            self._output_table = OutputTable(self, (self.output_dim, self.input_dim), self.embeddings_initializer)
            self._output_table.build(
                self.quantization_mode, int4_block_size(self.dtype_policy, self.quantization_config, self.path)
            )
            if self.lora_enabled:  # `lora_rank=`: the table's adapter came first, in `super().build`
                self._output_table.enable_lora(self.lora_rank, self.lora_alpha)

    def enable_lora(
        self,
        rank: int,
        lora_alpha: float | None = None,
        a_initializer="he_uniform",
        b_initializer="zeros",
    ) -> None:
        """Adds trainable low-rank adapters and freezes what they adapt.

        The table gets `lora_embeddings_a (input_dim, rank)` and `_b (rank,
        output_dim)`, as in `keras_embed_ext.Embedding`; an untied
        `reverse_embeddings` gets `lora_reverse_embeddings_a (output_dim, rank)`
        and `_b (rank, input_dim)`, both deltas scaled by `lora_alpha / rank`.
        """
        super().enable_lora(rank, lora_alpha, a_initializer, b_initializer)
        if not self.tie_weights and hasattr(self, "_output_table"):
            self._output_table.enable_lora(rank, self.lora_alpha, a_initializer, b_initializer)

    def merge_lora(self) -> None:
        """Folds the adapters into the table and the untied kernel, and removes them."""
        if self.lora_enabled and not self.tie_weights:
            self._output_table.merge_lora()
        super().merge_lora()

    def call(self, inputs, reverse=False, weights=None, training=None):
        if not reverse:
            outputs = super().call(inputs, weights=weights, training=training)
            mask = super().compute_mask(inputs)
            if mask is not None:
                set_keras_mask(outputs, mask)
            return outputs
        dtype = self.reverse_dtype or self.compute_dtype
        quantizer = getattr(self, "inputs_quantizer", None) if self.quantization_mode else None
        self._check_projection_inputs(inputs, "call(reverse=True)", reads_table=self.tie_weights)
        projection = self._table if self.tie_weights else self._output_table
        logits = projection.logits(inputs, dtype, quantizer)
        if self.logit_soft_cap is not None:
            cap = self.logit_soft_cap
            logits = ops.multiply(ops.tanh(ops.divide(logits, cap)), cap)
        return logits

    def compute_mask(self, inputs, mask=None):
        # Set by a forward call itself: a reverse call gives none.
        return None

    def compute_output_shape(self, input_shape, reverse=False):
        if reverse:
            return (*input_shape[:-1], self.input_dim)
        return super().compute_output_shape(input_shape)

    def compute_output_spec(self, inputs, reverse=False, weights=None, training=None):
        if reverse:
            shape = self.compute_output_shape(inputs.shape, reverse=True)
            return keras.KerasTensor(shape, dtype=self.reverse_dtype or self.compute_dtype)
        return super().compute_output_spec(inputs, weights=weights, training=training)

    def quantize(self, mode=None, type_check=True, config=None):
        """Stores the table, and an untied `reverse_embeddings`, as `"int8"` or `"int4"`."""
        if type_check and type(self) is not ReversibleEmbedding:
            raise self._not_implemented_error(self.quantize)
        super().quantize(mode, type_check=False, config=config)
        self._set_inputs_quantizer(config)
        if not self.tie_weights:
            self._output_table.quantize(mode, int4_block_size(None, config) if mode == "int4" else None)

    def quantized_build(self, embeddings_shape, mode, config=None):
        super().quantized_build(embeddings_shape, mode, config)
        self._set_inputs_quantizer(config)
        if not self.tie_weights:
            if "_output_table" not in vars(self):
                self._output_table = OutputTable(self, (self.output_dim, self.input_dim), self.embeddings_initializer)
            self._output_table.rebuild(mode, int4_block_size(self.dtype_policy, config, self.path))

    def _set_inputs_quantizer(self, config):
        # Quantizes the inputs of a quantized reverse projection, as keras' layer does
        # (by default for `quantize(mode)`; not with an `Int4QuantizationConfig`).
        self.inputs_quantizer = keras.quantizers.QuantizationConfig.activation_quantizer_or_default(
            config, keras.quantizers.AbsMaxQuantizer(axis=-1)
        )

    def _table_variables(self):
        variables = super()._table_variables()
        return variables if self.tie_weights else variables + self._output_table.variables()

    def _adapter_variables(self):
        variables = super()._adapter_variables()
        return variables if self.tie_weights else variables + self._output_table.adapter.variables()

    # keras' attribute names for the untied table's variables.
    reverse_embeddings = TableVariable("format", "reverse_embeddings", table="_output_table")
    reverse_embeddings_scale = TableVariable("format", "reverse_embeddings_scale", table="_output_table")
    reverse_embeddings_zero = TableVariable("format", "reverse_embeddings_zero", table="_output_table")
    lora_reverse_embeddings_a = TableVariable("adapter", "a", table="_output_table")
    lora_reverse_embeddings_b = TableVariable("adapter", "b", table="_output_table")

    def get_config(self):
        return {
            **super().get_config(),
            "tie_weights": self.tie_weights,
            "reverse_dtype": self.reverse_dtype,
            "logit_soft_cap": self.logit_soft_cap,
        }

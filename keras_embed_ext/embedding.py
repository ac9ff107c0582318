"""`keras_embed_ext.Embedding`: a gather-first embedding layer for Keras 3."""

import warnings

import keras
from keras import constraints
from keras import initializers
from keras import ops
from keras import regularizers

from keras_embed_ext import combiners
from keras_embed_ext import dynamic_ids
from keras_embed_ext import optimizers
from keras_embed_ext import sparse
from keras_embed_ext.arguments import check_arguments
from keras_embed_ext.arguments import check_float_dtype
from keras_embed_ext.arguments import check_sparse_optimizer
from keras_embed_ext.arguments import initial_table
from keras_embed_ext.arguments import reject_unknown_arguments
from keras_embed_ext.backends.context import gradients_summed_per_id
from keras_embed_ext.backends.fused import Fused
from keras_embed_ext.dropout import row_keep_scale
from keras_embed_ext.formats import int4_block_size
from keras_embed_ext.fresh_rows import check_row_initializer
from keras_embed_ext.ids import validate
from keras_embed_ext.ids import warn_if_keras_wraps
from keras_embed_ext.legacy import input_shape_from_length
from keras_embed_ext.legacy import pop_keras1_arguments
from keras_embed_ext.saving import SavedTable
from keras_embed_ext.table import Table
from keras_embed_ext.table_states import TableStates


@keras.saving.register_keras_serializable(package="keras_embed_ext")
class Embedding(TableStates, SavedTable, keras.layers.Layer):
    """Turns nonnegative integers (indexes) into dense vectors of fixed size.

    e.g. `[[4], [20]] -> [[0.25, 0.1], [0.6, -0.2]]`

    A drop-in for `keras.layers.Embedding` (same variables, config and weights)
    that gathers first: LoRA, int8 and int4 tables cost what the looked-up
    rows cost, never what the vocabulary costs. It also accepts the arguments
    of Keras 1 and tf.keras 2, reduces bags of ids, projects onto the table
    (`attend`) and gives the same clear error for bad ids on every backend.

    Example:

    >>> model = keras.Sequential()
    >>> model.add(keras_embed_ext.Embedding(1000, 64, input_length=10))
    >>> model.output_shape
    (None, 10, 64)
    >>> input_array = np.random.randint(1000, size=(32, 10))
    >>> model.compile("rmsprop", "mse")
    >>> model.predict(input_array, verbose=0).shape
    (32, 10, 64)

    Args:
        input_dim: Integer. Size of the vocabulary, i.e. maximum id + 1.
        output_dim: Integer. Dimension of the dense embedding.
        embeddings_initializer: Initializer for the `embeddings` matrix
            (Keras 1: `init`).
        embeddings_regularizer: Regularizer applied to the `embeddings`
            matrix (Keras 1: `W_regularizer`).
        embeddings_constraint: Constraint applied to the `embeddings` matrix
            (Keras 1: `W_constraint`).
        mask_zero: Boolean, whether id 0 is padding. Without a combiner the
            layer emits the mask `ids != 0`; with one, id 0 is left out of the
            bag and no mask is emitted.
        weights: Optional float array `(input_dim, output_dim)`, or a list
            holding it: the initial table.
        lora_rank: Optional integer. Enables LoRA with this rank at build.
        lora_alpha: Optional number. The LoRA delta is scaled by
            `lora_alpha / lora_rank`; defaults to `lora_rank`.
        dropout: Float in `[0, 1)`. While training, each vocabulary row is
            dropped (zeros) with this probability for the whole call and kept
            rows are scaled by `1 / (1 - dropout)` (Keras 1 word dropout).
        combiner: `None`, `"sum"`, `"mean"` or `"sqrtn"`. If set, the last
            input axis is a bag of ids reduced to one vector.
        invalid_ids: `"raise"` or `"zero"`: what ids `< 0` or
            `>= input_dim` get. `"raise"` raises a `ValueError` in an eager
            call and gives zero rows in a traced one; `"zero"` always gives
            zero rows.
        input_length: Optional integer (tf.keras 2). Declares the input shape
            `(input_length,)`, so a `Sequential` starting with this layer
            builds at once.
        seed: Optional integer or `keras.random.SeedGenerator` for `dropout`.
        sparse_optimizer: Optional row-wise optimizer that trains the table
            (or, with LoRA, `lora_embeddings_a`) inside `fit`, updating only
            the rows looked up in a step: `"sgd"`, `"adagrad"`,
            `"rowwise_adagrad"`, `"adam"` (lazy Adam), a
            `keras.optimizers.SGD`, `Adagrad` or `Adam`, or a
            `keras_embed_ext.optimizers` object. The model's optimizer
            trains every other weight. Defaults to `"adagrad"` for a dynamic
            table.
        dynamic: `True` or a `keras_embed_ext.DynamicIds`: the ids are raw
            integer keys of any value, and the table's `input_dim` rows are
            given to keys as training steps see them (admission and eviction
            by the `DynamicIds` policy); a key without a row reads zeros.
            `id_map()` returns the resident keys and their rows.
        **kwargs: Base layer keyword arguments, such as `name`, `dtype`,
            `trainable`, `activity_regularizer` and `input_shape`.

    Input shape:
        N-D tensor of ids with shape `(batch_size, ..., input_length)`.

    Output shape:
        `(batch_size, ..., input_length, output_dim)`; with a combiner,
        `(batch_size, ..., output_dim)`.
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        embeddings_initializer="uniform",
        embeddings_regularizer=None,
        embeddings_constraint=None,
        mask_zero: bool = False,
        weights=None,
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
        dropout: float = 0.0,
        combiner: str | None = None,
        invalid_ids: str = "raise",
        input_length: int | None = None,
        seed: int | keras.random.SeedGenerator | None = None,
        sparse_optimizer=None,
        dynamic: "bool | dynamic_ids.DynamicIds" = False,
        **kwargs,
    ):
        check_arguments(input_dim, output_dim, dropout, combiner, invalid_ids, lora_rank, lora_alpha)
        legacy = pop_keras1_arguments(kwargs)
        self.quantization_config = kwargs.pop("quantization_config", None)
        reject_unknown_arguments(kwargs)
        with warnings.catch_warnings():
            # `input_length` is how earlier generations declared the input
            # shape; Keras 3's advice against `input_shape` does not apply.
            warnings.filterwarnings("ignore", message="Do not pass an `input_shape`")
            super().__init__(**input_shape_from_length(input_length, kwargs))
        # Ids reach `call` as given (numpy, lists, tensors): converting them first
        # would wrap int64 ids into int32 on JAX before they could be checked.
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        check_float_dtype(self.dtype_policy, self.name)
        self.input_dim = int(input_dim)
        self.output_dim = int(output_dim)
        self.embeddings_initializer = initializers.get(
            legacy.get("embeddings_initializer", embeddings_initializer)
        )
        self.embeddings_regularizer = regularizers.get(
            legacy.get("embeddings_regularizer", embeddings_regularizer)
        )
        self.embeddings_constraint = constraints.get(
            legacy.get("embeddings_constraint", embeddings_constraint)
        )
        self.mask_zero = mask_zero
        self.supports_masking = mask_zero
        self.autocast = False
        self.dropout = float(dropout)
        self.combiner = combiner
        self.invalid_ids = invalid_ids
        self.input_length = input_length
        self.seed = seed
        if self.dropout:
            self.seed_generator = (
                seed
                if isinstance(seed, keras.random.SeedGenerator)
                else keras.random.SeedGenerator(seed)
            )
        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha if lora_alpha is not None else lora_rank
        self.dynamic = dynamic_ids.get(dynamic)
        if self.dynamic is not None:
            check_row_initializer(self.embeddings_initializer, self.name)
            sparse_optimizer = "adagrad" if sparse_optimizer is None else sparse_optimizer
            self.renewal_seed_generator = (
                seed if isinstance(seed, keras.random.SeedGenerator) else keras.random.SeedGenerator(seed)
            )
        self.sparse_optimizer = optimizers.get(sparse_optimizer)
        check_sparse_optimizer(self.sparse_optimizer, self.embeddings_regularizer, self.embeddings_constraint)
        self._table = Table(self, (self.input_dim, self.output_dim), self.embeddings_initializer,
                            self.embeddings_regularizer, self.embeddings_constraint, self.sparse_optimizer,
                            self.dynamic, getattr(self, "renewal_seed_generator", None))
        self._fused_float_bags = Fused(self._float_bags)
        if weights is not None:
            # The given table is the base; an adapter asked for starts on it.
            self.lora_rank = None
            self.build()
            self._embeddings.assign(initial_table(weights, (self.input_dim, self.output_dim), self.name))
            if lora_rank:
                self.enable_lora(lora_rank, lora_alpha)

    def build(self, input_shape=None):
        if self.built:
            return
        block_size = int4_block_size(self.dtype_policy, self.quantization_config, self.path)
        self._table.build(self.quantization_mode, block_size)
        self.built = True
        if self.lora_rank:
            self.enable_lora(self.lora_rank, self.lora_alpha)

    # The pipeline: validate ids -> gather stored rows -> add adapter rows ->
    # dropout -> combine -> cast. A float table's dense bags skip the rows.
    def call(self, inputs, weights=None, training=None):
        """Looks up `inputs`; `weights` are optional per-id weights for a combiner
        (dense, ragged or sparse like the ids, as TF's `sp_weights` and torch's
        `per_sample_weights`)."""
        if weights is not None and not self.combiner:
            raise ValueError(
                f"Embedding layer '{self.name}' got per-id `weights`, which weigh the ids "
                "of a bag; it has no combiner. Pass combiner='sum', 'mean' or 'sqrtn', "
                "or leave out `weights`."
            )
        with gradients_summed_per_id(training):
            if sparse.is_ragged(inputs) or sparse.is_sparse(inputs):
                outputs = self._flat_lookup(inputs, weights, training)
            else:
                sparse.check_supported(inputs)
                outputs = self._dense_bags(inputs, weights, training) if self.combiner else self._rows(inputs, training)[0]
        return ops.cast(outputs, self.compute_dtype)

    def _rows(self, ids, training):
        """Rows of `ids` before combining, and a per-id 0/1 float with a combiner:
        whether the id counts in the bag (in range and, with `mask_zero`, not
        padding)."""
        train_rows = bool(training) and self.trainable
        admitted_at = mask_zero = None
        if self.dynamic is not None:
            keys = dynamic_ids.check_keys(ids, f"Embedding layer '{self.name}'")
            ids, valid, admitted_at = self._table.map_keys(keys, train_rows, self.mask_zero)
            if self.mask_zero:
                valid = valid & (keys != 0)
        else:
            ids, valid = validate(ids, self.input_dim, self.invalid_ids, self.name)
            mask_zero = self.mask_zero
        rows = self._table.lookup(ids, valid, train_rows, admitted_at)
        if self.dropout and training:
            keep_scale = row_keep_scale(ids, self.dropout, self.seed_generator)
            rows = rows * ops.cast(ops.expand_dims(keep_scale, -1), rows.dtype)
        if not self.combiner:
            return rows, None
        return rows, combiners.counted(ids, valid, mask_zero)

    def _dense_bags(self, ids, weights, training):
        """The bags of dense `ids (..., L)`: `(..., D)`. A float table's are weighted sums
        of its rows, taken without writing the rows (`combiners.float_bags`)."""
        combiners.check_bag_inputs(ids, weights, self.combiner, f"Embedding layer '{self.name}'")
        table = self._table
        if (table.mode is not None or table.adapter is not None or table.key_map is not None
                or (training and table.row_training is not None)):
            rows, keep = self._rows(ids, training)
            return combiners.combine(rows, combiners.with_bag_weights(keep, weights), self.combiner)
        ids, valid = validate(ids, self.input_dim, self.invalid_ids, self.name)
        keep_scale = row_keep_scale(ids, self.dropout, self.seed_generator) if self.dropout and training else None
        if weights is not None:
            weights = ops.convert_to_tensor(weights)
        key = (self.combiner, self.mask_zero)
        return self._fused_float_bags(key, (self._embeddings,), ids, valid, weights, keep_scale)

    def _float_bags(self, ids, valid, weights, keep_scale):
        """`combiners.float_bags` of this layer's float table; on TensorFlow the layer runs
        it compiled by XLA (`backends.fused.Fused`), which fuses the gather into the sum."""
        return combiners.float_bags(self._embeddings, ids, valid, weights, keep_scale, self.combiner, self.mask_zero)

    def _flat_lookup(self, inputs, weights, training):
        """Ragged or sparse `inputs`: their bags with a combiner; without one, ragged
        rows, or the dense rows with zeros for missing entries."""
        if sparse.is_ragged(inputs) and not self.combiner:
            return sparse.map_ragged(lambda ids: self._rows(ids, training)[0], inputs)
        flat = sparse.flat_ids(inputs, weights, self.combiner)
        rows, keep = self._rows(flat.ids, training)
        if not self.combiner:
            return ops.scatter(flat.indices, rows, (*flat.dense_shape, self.output_dim))
        bags = combiners.combine_segments(rows, combiners.with_bag_weights(keep, flat.weights), flat.segments,
                                          flat.num_segments, self.combiner)
        return ops.reshape(bags, (*flat.bag_shape, self.output_dim))

    @property
    def input_dtype(self):
        """Ids are integers: the dtype of an exported signature's input. No input is
        cast by it; `call` takes ids as given."""
        return "int32"

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero or self.combiner or sparse.is_ragged(inputs):
            return None
        return ops.not_equal(inputs, 0)

    def compute_output_shape(self, input_shape):
        if self.combiner:
            return (*input_shape[:-1], self.output_dim)
        return (*input_shape, self.output_dim)

    def compute_output_spec(self, inputs, weights=None, training=None):
        warn_if_keras_wraps(inputs.dtype, f"Embedding layer '{self.name}'")
        ragged = bool(getattr(inputs, "ragged", False)) and not self.combiner
        return keras.KerasTensor(
            self.compute_output_shape(inputs.shape),
            dtype=self.compute_dtype,
            ragged=ragged,
        )

    def quantize(self, mode=None, type_check=True, config=None):
        """Stores the table as `"int8"` or `"int4"` rows; LoRA is kept.

        As keras' layer, a subclass must implement `quantize` itself unless it
        passes `type_check=False`.
        """
        if type_check and type(self) is not Embedding:
            raise self._not_implemented_error(self.quantize)
        block_size = int4_block_size(None, config) if mode == "int4" else None
        self._table.quantize(mode, block_size)
        self.quantization_config = config
        if self.dtype_policy.quantization_mode is None:
            name = f"int4/{self._table.format.block_size or -1}" if mode == "int4" else mode
            self.dtype_policy = keras.dtype_policies.get(f"{name}_from_{self.dtype_policy.name}")

    @property
    def weights(self):
        """The layer's weights, without the `sparse_optimizer`'s state: like keras'
        optimizer state, it is among the layer's `variables` (trained and saved with
        it) but not counted as the model's parameters."""
        state = {id(v) for v in self.row_optimizer_variables + self._table.unsaved_variables()
                 + self._table.key_map_variables()}
        return [w for w in super().weights if id(w) not in state]

    def id_map(self):
        """`(keys, rows)` of a dynamic table: its resident keys and their rows, two
        int64 numpy arrays."""
        if self.dynamic is None:
            raise ValueError(f"Embedding layer '{self.name}' is not dynamic: its ids are its rows.")
        self.build()
        return self._table.key_map.resident()

    @property
    def row_optimizer_variables(self) -> list:
        """The `sparse_optimizer`'s state (slots and step count), empty without one."""
        return self._table.optimizer_variables()

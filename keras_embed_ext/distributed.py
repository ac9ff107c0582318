"""`DistributedEmbedding`: many features over shared, stacked tables, each table
trained by its own optimizer, with the API of keras-rs 0.4.0's layer."""

from typing import Any

import keras
import numpy as np
from keras import ops

from keras_embed_ext import combiners
from keras_embed_ext import dynamic_ids
from keras_embed_ext import optimizers
from keras_embed_ext import sparse
from keras_embed_ext.backends.arithmetic import cast
from keras_embed_ext.backends.arithmetic import reshape
from keras_embed_ext.backends.context import gradients_summed_per_id
from keras_embed_ext.backends.rows import split_rows
from keras_embed_ext.configs import FeatureConfig
from keras_embed_ext.configs import own_configs
from keras_embed_ext.configs import stack_name
from keras_embed_ext.configs import StackedInitializer
from keras_embed_ext.configs import stacks
from keras_embed_ext.configs import TableConfig
from keras_embed_ext.embedding import Embedding
from keras_embed_ext.feature_inputs import bundled
from keras_embed_ext.feature_inputs import check_ids_shape
from keras_embed_ext.feature_inputs import Features
from keras_embed_ext.feature_inputs import unbundled
from keras_embed_ext.ids import INVALID_ID_POLICIES
from keras_embed_ext.ids import validate
from keras_embed_ext.ids import warn_if_keras_wraps
from keras_embed_ext.key_slots import KeyLayout


@keras.saving.register_keras_serializable(package="keras_embed_ext")
class DistributedEmbedding(keras.layers.Layer):
    """Looks up many features in shared tables and reduces each feature's bag of ids.

    keras-rs 0.4.0's `DistributedEmbedding` (its constructor, configs, call and
    `get_embedding_tables`) for every backend and device: tables of one
    `embedding_dim` and one optimizer are stacked into one variable, so a step
    makes one gather and one row-wise update per stack, and each table is
    trained by its `TableConfig.optimizer` inside `fit`, updating only the rows
    looked up (`Embedding(sparse_optimizer=...)`). Stacking changes neither
    outputs, training, saving nor `get_embedding_tables()`.

    Example:

    >>> table = keras_embed_ext.TableConfig("items", vocabulary_size=1000, embedding_dim=16, optimizer="adagrad")
    >>> features = {
    ...     "item": keras_embed_ext.FeatureConfig("item", table, input_shape=(32,), output_shape=(32, 16)),
    ...     "history": keras_embed_ext.FeatureConfig("history", table, (32, 10), (32, 16)),
    ... }
    >>> embedding = keras_embed_ext.DistributedEmbedding(features)
    >>> ids = {"item": np.arange(32), "history": np.random.randint(0, 1000, (32, 10))}
    >>> {name: tuple(x.shape) for name, x in embedding(ids).items()}
    {'history': (32, 16), 'item': (32, 16)}

    Args:
        feature_configs: A nested structure (dict, list, ...) of `FeatureConfig`, or
            of keras-rs' `FeatureConfig`.
        table_stacking: `"auto"` (tables of one `embedding_dim` and optimizer share a
            variable), `None` (a variable per table), or a list of table names, or of
            lists of them, each list one stack.
        update_stats: keras-rs' SparseCore statistics; only `False`.
        invalid_ids: `"raise"` or `"zero"`: what ids `< 0` or `>= vocabulary_size` of
            their table get, as in `Embedding`.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: Ids in the structure of `feature_configs`: `(batch,)` for one id per
            example, `(batch, bag_size)` for bags; ragged (TensorFlow) or sparse
            (TensorFlow, JAX) bags of present ids.
        weights: Optional per-id weights in the same structure and shapes.
        training: Whether this call is a training step of the tables' optimizers.

    Output shape:
        The structure of `feature_configs`: `(batch, embedding_dim)` per feature.
    """

    def __init__(self, feature_configs, *, table_stacking="auto", update_stats: bool = False,
                 invalid_ids: str = "raise", **kwargs: Any):
        super().__init__(**kwargs)
        if update_stats and keras.backend.backend() == "tensorflow":
            # As keras-rs: its TensorFlow layer refuses it; elsewhere it is kept, and only a
            # SparseCore (keras-rs on a TPU) records the statistics.
            raise ValueError("`update_stats` cannot be True for the TensorFlow backend.")
        self.update_stats = update_stats
        if invalid_ids not in INVALID_ID_POLICIES:
            raise ValueError(
                f"`invalid_ids` must be one of {INVALID_ID_POLICIES}. Received: invalid_ids={invalid_ids!r}"
            )
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        self._features = Features(own_configs(feature_configs))
        self.table_stacking = table_stacking
        self.invalid_ids = invalid_ids
        self._stack_of = {}  # table name -> (stack index, row offset)
        self._key_table_of = {}  # a dynamic table's name -> its index in its stack's key map
        self._stacks = []
        for index, group in enumerate(stacks(self._features.tables, table_stacking)):
            capacities = [table.vocabulary_size for table in group]
            dynamic = group[0].dynamic
            if dynamic_ids.get(dynamic) is not None:
                # One key map, each table in buckets of its own (its rows padded to whole ones);
                # the tables' initializers draw rows alike (`stacks`), so the first draws them all.
                layout = KeyLayout(capacities)
                offsets, rows, initializer = layout.row_offsets, layout.capacity, group[0].initializer
                self._key_table_of.update({table.name: i for i, table in enumerate(group)})
            else:
                offsets = np.cumsum([0] + capacities)
                rows, initializer = int(offsets[-1]), group[0].initializer
                if len(group) > 1:
                    initializer = StackedInitializer([t.initializer for t in group], capacities)
            for table, offset in zip(group, offsets):
                self._stack_of[table.name] = (index, int(offset))
            stack = Embedding(
                rows, group[0].embedding_dim, embeddings_initializer=initializer,
                sparse_optimizer=optimizers.get(group[0].optimizer), invalid_ids="zero", dtype=self.dtype_policy,
                name=stack_name(group), dynamic=dynamic,
            )
            if dynamic_ids.get(dynamic) is not None:
                stack._table.key_capacities = tuple(capacities)
            self._stacks.append(stack)

    @property
    def feature_configs(self):
        return self._features.nested

    def build(self, input_shapes=None):
        input_shapes, _ = unbundled(input_shapes, None)
        if input_shapes is not None:
            self._check_input_shapes(input_shapes)
        for stack in self._stacks:
            stack.build()
        self.built = True

    def preprocess(self, inputs, weights=None, training: bool = False) -> dict:
        """keras-rs' `preprocess`: the inputs and weights bundled in the form `call`
        takes as its `inputs`. Optional: `call` takes the ids as they are. On JAX,
        TensorFlow ragged ids (a `tf.data` pipeline's) are made dense, padded to the
        feature's bag size with ids of weight 0, as keras-rs' JAX layer does."""
        del training  # keras-rs sizes SparseCore buffers with it
        ids = self._flat("inputs", inputs)
        bag_weights = None if weights is None else self._flat("weights", weights)
        if not self.built:
            self.build(keras.tree.map_structure(lambda x: tuple(x.shape), inputs))
        if keras.backend.backend() == "jax" and any(sparse.is_tf_ragged(x) for x in ids):
            ids, bag_weights = sparse.ragged_to_dense_bags(
                ids, bag_weights, [feature.input_shape[-1] for feature in self._features.flat])
        return bundled(self._features.nested, ids, bag_weights)

    def call(self, inputs, weights=None, training=None):
        """Looks up every feature's ids in its table and reduces each feature's bag."""
        inputs, weights = unbundled(inputs, weights)
        features = self._features.flat
        ids = self._flat("inputs", inputs)
        bag_weights = [None] * len(features) if weights is None else self._flat("weights", weights)
        outputs = [None] * len(features)
        with gradients_summed_per_id(training):
            for index, stack in enumerate(self._stacks):
                members = [i for i, f in enumerate(features) if self._stack_of[f.table.name][0] == index]
                if members:
                    looked_up = [self._feature_ids(features[i], ids[i], bag_weights[i]) for i in members]
                    key_tables = [self._key_table_of.get(features[i].table.name) for i in members]
                    rows = self._stack_rows(stack, looked_up, training, key_tables)
                    for i, feature_ids, feature_rows in zip(members, looked_up, rows):
                        outputs[i] = cast(feature_ids.reduce(feature_rows), self.compute_dtype)
        return keras.tree.pack_sequence_as(self._features.nested, outputs)

    def _flat(self, what, nested):
        return self._features.flatten(nested, f"DistributedEmbedding layer '{self.name}' takes {what}")

    def _feature_ids(self, feature, ids, weights):
        """The ids of one feature, validated against its table and offset into its stack."""
        table = feature.table
        subject = f"Feature '{feature.name}' of DistributedEmbedding layer '{self.name}'"
        if sparse.is_ragged(ids) or sparse.is_sparse(ids):
            flat = sparse.flat_ids(ids, weights, table.combiner)
            return combiners.FlatBags(self._offset_ids(flat.ids, table, subject), flat, table.combiner)
        sparse.check_supported(ids)
        check_ids_shape(feature, tuple(ops.shape(ids)), subject)
        if weights is not None:
            combiners.check_bag_inputs(ids, weights, table.combiner, subject)
        valid_ids, valid = self._offset_ids(ids, table, subject)
        return combiners.DenseBags((valid_ids, valid), weights, table.combiner)

    def _offset_ids(self, ids, table, subject):
        if dynamic_ids.get(table.dynamic) is not None:  # keys, mapped to rows by the stack
            return dynamic_ids.check_keys(ids, subject), None
        valid_ids, valid = validate(ids, table.vocabulary_size, self.invalid_ids, subject=subject)
        offset = self._stack_of[table.name][1]
        return (valid_ids + offset if offset else valid_ids), valid

    def _stack_rows(self, stack, looked_up, training, key_tables):
        """The rows of several features' ids in one gather from their stack (`key_tables`:
        each feature's table in a stack of several dynamic tables)."""
        ids_and_valid = [feature.ids for feature in looked_up]
        flat_ids = [reshape(ids, (-1,)) for ids, _ in ids_and_valid]
        valid = None
        if any(v is not None for _, v in ids_and_valid):
            valid = ops.concatenate([ops.ones_like(flat, dtype="bool") if v is None else reshape(v, (-1,))
                                     for flat, (_, v) in zip(flat_ids, ids_and_valid)])
        all_ids = flat_ids[0] if len(flat_ids) == 1 else ops.concatenate(flat_ids)
        train_rows = bool(training) and self.trainable and stack.trainable
        admitted_at = None
        if stack.dynamic is not None:
            tables = None
            if len(stack._table.key_capacities) > 1:
                tables = ops.concatenate([ops.full_like(flat, table, dtype="int32")
                                          for flat, table in zip(flat_ids, key_tables)])
            all_ids, valid, admitted_at = stack._table.map_keys(all_ids, train_rows, tables=tables)
        rows = stack._table.lookup(all_ids, valid, train_rows, admitted_at)
        parts = [rows] if len(flat_ids) == 1 else split_rows(rows, [ops.shape(ids)[0] for ids in flat_ids])
        return [reshape(part, (*ops.shape(ids), rows.shape[-1])) for part, (ids, _) in zip(parts, ids_and_valid)]

    def get_embedding_tables(self) -> dict:
        """The effective float table of each `TableConfig`, by table name."""
        tables = {}
        for table in self._features.tables:
            index, offset = self._stack_of[table.name]
            stacked = self._stacks[index].embeddings
            tables[table.name] = stacked[offset : offset + table.vocabulary_size]
        return tables

    def get_weights(self):
        """The float tables in the order of keras-rs' layer on a CPU or GPU (one table
        per `TableConfig`, by first feature), so weights move between the two."""
        return [keras.ops.convert_to_numpy(t) for t in self.get_embedding_tables().values()]

    def set_weights(self, weights):
        """Sets the tables from `get_weights()` of this layer or of keras-rs' layer."""
        tables = self._features.tables
        if len(weights) != len(tables):
            raise ValueError(
                f"DistributedEmbedding layer '{self.name}' has {len(tables)} tables "
                f"({[t.name for t in tables]}). Received {len(weights)} arrays."
            )
        for stack in self._stacks:
            if stack.quantization_mode is not None or stack.lora_enabled:
                raise ValueError("set_weights() sets float tables: call it before quantize() or enable_lora().")
        stacked = [keras.ops.convert_to_numpy(stack._embeddings).copy() for stack in self._stacks]
        for table, values in zip(tables, weights):
            index, offset = self._stack_of[table.name]
            expected = (table.vocabulary_size, table.embedding_dim)
            if tuple(np.shape(values)) != expected:
                raise ValueError(f"Table '{table.name}' has shape {expected}. Received shape {np.shape(values)}.")
            stacked[index][offset : offset + table.vocabulary_size] = values
        for stack, values in zip(self._stacks, stacked):
            stack._embeddings.assign(values)

    def id_map(self, table_name: str):
        """`(keys, rows)` of a dynamic table: its resident keys and their rows, two int64
        numpy arrays."""
        if table_name not in self._stack_of:
            raise ValueError(f"DistributedEmbedding layer '{self.name}' has no table {table_name!r}. "
                             f"Tables: {sorted(self._stack_of)}")
        stack = self._stacks[self._stack_of[table_name][0]]
        if stack.dynamic is None:
            raise ValueError(f"Table '{table_name}' is not dynamic: its ids are its rows.")
        self.build()
        return stack._table.key_map.resident(self._key_table_of[table_name])

    @property
    def row_optimizer_variables(self) -> list:
        """Every stack's row-wise optimizer state."""
        return [v for stack in self._stacks for v in stack.row_optimizer_variables]

    def quantize(self, mode=None, type_check=True, config=None):
        """Stores every table as `"int8"` or `"int4"` rows, for serving."""
        for stack in self._stacks:
            stack.quantize(mode, config=config)

    def enable_lora(self, rank, lora_alpha=None, a_initializer="he_uniform", b_initializer="zeros"):
        """Adds a low-rank adapter to every table and freezes the tables."""
        for stack in self._stacks:
            stack.enable_lora(rank, lora_alpha, a_initializer, b_initializer)

    def merge_lora(self):
        """Folds every table's adapter into it."""
        for stack in self._stacks:
            stack.merge_lora()

    def compute_output_spec(self, inputs, weights=None, training=None):
        inputs, weights = unbundled(inputs, weights)

        def spec(feature, ids):
            warn_if_keras_wraps(ids.dtype, f"Feature '{feature.name}' of DistributedEmbedding layer '{self.name}'")
            shape = tuple(ids.shape)
            shape = shape if len(shape) <= 1 else shape[:-1]
            return keras.KerasTensor((*shape, feature.table.embedding_dim), dtype=self.compute_dtype)

        return keras.tree.pack_sequence_as(
            self._features.nested, [spec(f, x) for f, x in zip(self._features.flat, self._flat("inputs", inputs))]
        )

    def _check_input_shapes(self, input_shapes):
        shapes = []
        keras.tree.map_shape_structure(lambda shape: shapes.append(tuple(shape)), input_shapes)
        for feature, shape in zip(self._features.flat, shapes):
            check_ids_shape(feature, shape, f"Feature '{feature.name}' of DistributedEmbedding layer '{self.name}'")

    def get_config(self):
        """keras-rs' config: the tables listed once, each feature naming its table's index."""
        index = {id(table): i for i, table in enumerate(self._features.tables)}

        def feature_config(feature):
            return {**feature.get_config(), "table": index[id(feature.table)]}

        return {
            **super().get_config(),
            "feature_configs": keras.tree.map_structure(feature_config, self._features.nested),
            "tables": [table.get_config() for table in self._features.tables],
            "table_stacking": self.table_stacking,
            "invalid_ids": self.invalid_ids,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        tables = [TableConfig.from_config(table) for table in config.pop("tables")]

        def feature(entry):
            if isinstance(entry, dict) and isinstance(entry.get("name"), str) and "table" in entry:
                return FeatureConfig(entry["name"], tables[entry["table"]], tuple(entry["input_shape"]),
                                     tuple(entry["output_shape"]))
            return None

        config["feature_configs"] = keras.tree.traverse(feature, config["feature_configs"])
        return cls(**config)

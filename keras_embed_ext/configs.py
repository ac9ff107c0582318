"""The configuration of `DistributedEmbedding`: features, tables, and which tables are
stacked into one variable.

`FeatureConfig` and `TableConfig` have the fields, defaults and serialized form of
keras-rs 0.4.0's, whose own objects are accepted too (read by their fields), so a
keras-rs model switches by its import.
"""

import dataclasses
from numbers import Integral
from typing import Any

import keras

from keras_embed_ext import dynamic_ids
from keras_embed_ext import optimizers
from keras_embed_ext.arguments import is_positive_int
from keras_embed_ext.combiners import COMBINERS

PLACEMENTS = ("auto", "default_device")


@keras.saving.register_keras_serializable(package="keras_embed_ext")
@dataclasses.dataclass(order=True)
class TableConfig:
    """One embedding table, which one or more features look up.

    Attributes:
        name: The table's name.
        vocabulary_size: Its number of rows.
        embedding_dim: Its number of columns.
        initializer: The initializer of the table, called with its own shape.
        optimizer: What trains the table row-wise inside `fit` (`sparse_optimizer`
            of `Embedding`): `"sgd"`, `"adagrad"`, `"rowwise_adagrad"`, `"adam"`,
            `"ftrl"`, a keras `SGD`, `Adagrad`, `Adam` or `Ftrl`, or a
            `keras_embed_ext.optimizers` object; `None`: the model's optimizer.
        combiner: `"mean"`, `"sum"` or `"sqrtn"`: how a feature's bag of ids is reduced.
        placement: `"auto"` or `"default_device"`: the device of the rest of the model
            (keras-rs' `"sparsecore"` needs a TPU's SparseCore).
        max_ids_per_partition, max_unique_ids_per_partition: keras-rs' buffer sizes for
            SparseCore, kept in the config; nothing here is bounded by them.
        dynamic: `None`, `True` or a `keras_embed_ext.DynamicIds`: the table's ids are
            raw keys, given rows as training steps see them (`Embedding(dynamic=...)`).
            Dynamic tables share a stack (and one key map, in which each keeps its own
            rows) when they share `embedding_dim`, optimizer, `dynamic` and an
            initializer whose rows do not depend on the table's size.
    """

    name: str
    vocabulary_size: int
    embedding_dim: int
    initializer: Any = dataclasses.field(default_factory=lambda: keras.initializers.VarianceScaling(mode="fan_out"))
    optimizer: Any = "adam"
    combiner: str = "mean"
    placement: str = "auto"
    max_ids_per_partition: int = 256
    max_unique_ids_per_partition: int = 256
    dynamic: Any = None

    def get_config(self) -> dict:
        config = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        dynamic = dynamic_ids.get(config.pop("dynamic"))
        if dynamic is not None:  # keras-rs' config has no such key
            config["dynamic"] = dynamic.get_config()
        for field in ("vocabulary_size", "embedding_dim", "max_ids_per_partition", "max_unique_ids_per_partition"):
            if isinstance(config[field], Integral):  # numpy integers too, which JSON does not take
                config[field] = int(config[field])
        config["initializer"] = keras.saving.serialize_keras_object(self.initializer)
        config["optimizer"] = keras.saving.serialize_keras_object(self.optimizer)
        return config

    @classmethod
    def from_config(cls, config: dict) -> "TableConfig":
        config = dict(config)
        config["initializer"] = keras.saving.deserialize_keras_object(config["initializer"])
        config["optimizer"] = keras.saving.deserialize_keras_object(config["optimizer"])
        config["dynamic"] = dynamic_ids.get(config.get("dynamic"))
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_embed_ext")
@dataclasses.dataclass(order=True)
class FeatureConfig:
    """One input feature and the table it is looked up in.

    Attributes:
        name: The feature's name.
        table: Its `TableConfig`; features may share one.
        input_shape: The shape of its ids: `(batch,)` for one id per example,
            `(batch, bag_size)` for a bag (`None` for a ragged or any size).
        output_shape: The shape of its output, `(batch, embedding_dim)`.
    """

    name: str
    table: TableConfig
    input_shape: Any
    output_shape: Any

    def get_config(self) -> dict:
        return {"name": self.name, "table": self.table.get_config(), "input_shape": self.input_shape,
                "output_shape": self.output_shape}

    @classmethod
    def from_config(cls, config: dict) -> "FeatureConfig":
        config = dict(config)
        config["table"] = TableConfig.from_config(config["table"])
        return cls(**config)


def own_configs(feature_configs):
    """The nested feature configs as this package's objects: keras-rs' (or any with
    the same fields) are read by their fields, and a table shared by several features
    stays one object. Each table is checked: a value that cannot be honoured is a
    `ValueError` naming it."""
    tables = {}

    def table_of(table):
        if id(table) not in tables:
            fields = {field.name: getattr(table, field.name) for field in dataclasses.fields(TableConfig)
                      if hasattr(table, field.name)}
            tables[id(table)] = check_table(TableConfig(**fields))
        return tables[id(table)]

    def feature_of(feature):
        if not all(hasattr(feature, name) for name in ("name", "table", "input_shape", "output_shape")):
            raise ValueError(
                "`feature_configs` must be a nested structure of FeatureConfig objects. "
                f"Received: {feature!r}"
            )
        table = table_of(feature.table)
        output_shape = tuple(feature.output_shape)
        if output_shape and output_shape[-1] is not None and output_shape[-1] != table.embedding_dim:
            raise ValueError(
                f"Feature '{feature.name}': the last dimension of `output_shape` must be its table "
                f"'{table.name}''s embedding_dim={table.embedding_dim}. Received: output_shape={output_shape}"
            )
        return FeatureConfig(feature.name, table, tuple(feature.input_shape), output_shape)

    return keras.tree.map_structure(feature_of, feature_configs)


def check_table(table: TableConfig) -> TableConfig:
    name = table.name
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"A table's `name` must be a non-empty string without '/'. Received: name={name!r}")
    for field in ("vocabulary_size", "embedding_dim"):
        if not is_positive_int(getattr(table, field)):
            raise ValueError(
                f"Table '{name}': `{field}` must be a positive integer. Received: {field}={getattr(table, field)!r}"
            )
    if table.combiner not in COMBINERS:
        raise ValueError(f"Table '{name}': `combiner` must be one of {COMBINERS}. Received: combiner={table.combiner!r}")
    if table.placement not in PLACEMENTS:
        raise ValueError(
            f"Table '{name}': `placement` must be one of {PLACEMENTS}; 'sparsecore' needs a TPU with "
            f"SparseCore and keras-rs. Received: placement={table.placement!r}"
        )
    try:
        optimizer = optimizers.get(table.optimizer)
        dynamic = dynamic_ids.get(table.dynamic)
    except ValueError as error:
        raise ValueError(f"Table '{name}': {error}") from None
    if dynamic is not None and optimizer is None:
        raise ValueError(
            f"Table '{name}' is dynamic: a freed row's optimizer state must start afresh, which only a row-wise "
            "optimizer can do. Set `optimizer` to 'sgd', 'adagrad', 'rowwise_adagrad', 'adam' or 'ftrl'."
        )
    return table


def optimizer_key(optimizer):
    """What two tables need in common to share a row-wise optimizer's update."""
    if optimizer is None:
        return None
    return type(optimizer).__name__, repr(sorted(optimizer.get_config().items()))


def stacks(tables, table_stacking="auto"):
    """The tables grouped into stacks, each stored as one variable: lists of tables of
    one `embedding_dim` and one optimizer, in the order the tables come.

    `table_stacking` is `"auto"` (every table that can share a stack does), `None`
    (one stack per table), or a list of table names, or of lists of them (each list
    one stack; the tables it leaves out are stacked alone).
    """
    by_name = {table.name: table for table in tables}
    if len(by_name) != len(tables):
        twice = sorted({table.name for table in tables if by_name[table.name] is not table})
        raise ValueError(
            f"Tables must have distinct names: two different tables are named {twice}. Received: "
            f"{[table.name for table in tables]}"
        )
    if table_stacking is None:
        return [[table] for table in tables]

    def key(table):
        shared = table.embedding_dim, optimizer_key(optimizers.get(table.optimizer))
        dynamic = dynamic_ids.get(table.dynamic)
        if dynamic is None:
            return shared
        # A row freed in any of a stack's tables is drawn afresh by the stack's initializer.
        row_initializer = _row_initializer_key(table.initializer)
        if row_initializer is None:
            return ("dynamic", table.name)
        return ("dynamic", *shared, repr(sorted(dynamic.get_config().items())), row_initializer)

    if table_stacking == "auto":
        groups = {}
        for table in tables:
            groups.setdefault(key(table), []).append(table)
        return list(groups.values())
    if isinstance(table_stacking, str) or not isinstance(table_stacking, (list, tuple)):
        raise ValueError(
            "`table_stacking` must be 'auto', None, or a list of table names or of lists of them. "
            f"Received: table_stacking={table_stacking!r}"
        )
    names_only = all(isinstance(name, str) for name in table_stacking)
    lists_only = all(isinstance(group, (list, tuple)) and all(isinstance(name, str) for name in group)
                     for group in table_stacking)
    if not table_stacking or not (names_only or lists_only) or any(not group for group in table_stacking):
        raise ValueError(
            "`table_stacking` must be 'auto', None, a non-empty list of table names, or a list of non-empty "
            f"lists of them (each one stack). Tables: {sorted(by_name)}. Received: table_stacking={table_stacking!r}"
        )
    groups = [table_stacking] if names_only else table_stacking
    stacked, result = set(), []
    for group in groups:
        for name in group:
            if name not in by_name or name in stacked:
                problem = "is not a table of the layer" if name not in by_name else "is in two stacks"
                raise ValueError(f"`table_stacking`: table {name!r} {problem}. Tables: {sorted(by_name)}")
            stacked.add(name)
        members = [by_name[name] for name in group]
        if len({key(table) for table in members}) > 1:
            raise ValueError(
                f"`table_stacking`: tables {list(group)} cannot share a stack: a stack's tables have one "
                "`embedding_dim` and one optimizer, and dynamic tables one `dynamic` and one initializer "
                "whose rows do not depend on the table's size (static and dynamic tables never share one)."
            )
        result.append(members)
    return result + [[table] for table in tables if table.name not in stacked]


def _row_initializer_key(initializer):
    """What two dynamic tables' initializers need in common to draw a freed row alike,
    whatever their sizes; `None` where a row's values depend on the table's size
    (`VarianceScaling` over `fan_in` or `fan_avg`, `GlorotUniform` among them)."""
    initializer = keras.initializers.get(initializer)
    if isinstance(initializer, keras.initializers.VarianceScaling) and initializer.mode != "fan_out":
        return None
    if not isinstance(initializer, keras.initializers.Initializer):
        return repr(initializer)
    return type(initializer).__name__, repr(sorted(initializer.get_config().items()))


def stack_name(group):
    """A stack's name: its tables' names."""
    names = "_".join(table.name for table in group)
    return names if len(names) <= 64 else f"{group[0].name}_and_{len(group) - 1}_more"


@keras.saving.register_keras_serializable(package="keras_embed_ext")
class StackedInitializer(keras.initializers.Initializer):
    """The rows of several tables, each drawn by its own initializer with its own shape,
    one after another."""

    def __init__(self, initializers, rows):
        self.initializers = [keras.initializers.get(initializer) for initializer in initializers]
        self.rows = [int(count) for count in rows]

    def __call__(self, shape, dtype=None):
        parts = [initializer((count, shape[1]), dtype=dtype) for initializer, count in zip(self.initializers, self.rows)]
        return parts[0] if len(parts) == 1 else keras.ops.concatenate(parts, axis=0)

    def get_config(self):
        return {"initializers": [keras.initializers.serialize(i) for i in self.initializers], "rows": self.rows}

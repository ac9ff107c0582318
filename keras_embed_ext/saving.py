"""What a saved layer holds: its config, and its variables in keras' order, then the
adapter, then the row-wise optimizer's state."""

import keras
import numpy as np
from keras import constraints
from keras import initializers
from keras import ops
from keras import regularizers


class SavedTable:
    """Mixed into `Embedding`: its config, and its variables saved in keras' order (the
    stored table(s), then the LoRA adapter(s), then the row-wise optimizer's state)."""

    def _table_variables(self):
        """The variables of the stored table(s), in keras' order."""
        return self._table.format.variables()

    def _adapter_variables(self):
        """The LoRA adapter's variables, saved after the table's."""
        return self._table.adapter.variables()

    def _saved_variables(self, optimizer_state=True):
        variables = self._table_variables()
        if self.lora_enabled:
            variables = variables + self._adapter_variables()
        return variables + (self.row_optimizer_variables if optimizer_state else [])

    def save_own_variables(self, store):
        """The variables under keys `0` to `n - 1`; with an adapter, its `lora_alpha` too,
        so that a layer built without one (a keras-hub model's config does not record
        it) takes it whole."""
        if not self.built:
            return
        for index, variable in enumerate(self._saved_variables()):
            store[str(index)] = variable
        if self.lora_enabled:
            store[_ALPHA_KEY] = np.asarray(self.lora_alpha, "float32")
        if self.sparse_optimizer is not None:
            store[_OPTIMIZER_KEY] = np.frombuffer(_optimizer_kind(self.sparse_optimizer).encode(), "uint8")
        if self._table.key_map is not None:
            self._table.key_map.save(store, self.renewal_seed_generator.state)

    def load_own_variables(self, store):
        """Loads this layer's own files, and keras' (whose adapter was merged at save)."""
        if not self.built:
            return
        alpha = float(np.asarray(store[_ALPHA_KEY])) if _ALPHA_KEY in store.keys() else None
        found = _stored_values(store, self.name)
        saved_kind = bytes(np.asarray(store[_OPTIMIZER_KEY])).decode() if _OPTIMIZER_KEY in store.keys() else None
        base = self._table_variables()
        rest = found[len(base):]
        if not self.lora_enabled and _is_adapter(rest, self.input_dim, self.output_dim) and _matches(base, found[: len(base)]):
            # An adapter the layer was not built with: it takes it.
            rank = tuple(rest[0].shape)[1]
            self.enable_lora(rank, alpha if alpha is not None else rank)
        expected = self._saved_variables()
        if _matches(expected, found):
            targets = expected
            _check_optimizer_kind(saved_kind, self.sparse_optimizer, self.name)
        elif _matches(self._saved_variables(optimizer_state=False), found):
            # A file without the sparse_optimizer's state: the state starts afresh.
            targets = self._saved_variables(optimizer_state=False)
        elif self.lora_enabled and _matches(base, found):
            # The table already holds the merged adapter: start from a zero delta.
            targets = base
            self.lora_embeddings_b.assign(ops.zeros(self.lora_embeddings_b.shape))
        else:
            raise ValueError(
                f"Layer '{self.name}' cannot load these weights. Expected "
                f"{len(expected)} variables: {_describe(expected)}. "
                f"Found {len(found)}: {_describe(found, indexed=True)}."
            )
        table_format = self._table.format
        for variable, value in zip(targets, found):
            if variable.path.endswith("/g_idx"):
                _check_groups(value, self.output_dim, table_format.block_size, self.name)
            if variable is base[0] and table_format.mode == "int4":
                _check_padding(value, self.output_dim, self.name)
            variable.assign(value)
        key_map = self._table.key_map
        if key_map is not None:
            key_map.load(store, self.renewal_seed_generator.state, f"Embedding layer '{self.name}'")
            if self._table.row_training is not None:
                self._table.row_training.renewed_through(key_map.admitted_steps())
        if alpha is not None and self.lora_enabled and len(targets) > len(base):
            self._table.adapter.alpha = self.lora_alpha = alpha  # the scale the saved adapter was trained with

    def get_config(self):
        """keras' keys, then this layer's own ones where they are set."""
        config = {
            **super().get_config(),
            "input_dim": self.input_dim,
            "output_dim": self.output_dim,
            "embeddings_initializer": initializers.serialize(self.embeddings_initializer),
            "embeddings_regularizer": regularizers.serialize(self.embeddings_regularizer),
            "activity_regularizer": regularizers.serialize(self.activity_regularizer),
            "embeddings_constraint": constraints.serialize(self.embeddings_constraint),
            "mask_zero": self.mask_zero,
            "quantization_config": keras.saving.serialize_keras_object(self.quantization_config),
        }
        # Arguments keras.layers.Embedding lacks are written only when set,
        # so a default configuration stays loadable by keras' own layer.
        extras = {
            "dropout": (self.dropout, 0.0),
            "combiner": (self.combiner, None),
            "invalid_ids": (self.invalid_ids, "raise"),
            "input_length": (self.input_length, None),
            "seed": (self.seed if isinstance(self.seed, int) else None, None),
        }
        config.update({k: v for k, (v, default) in extras.items() if v != default})
        if self.lora_rank:
            config["lora_rank"] = self.lora_rank
            config["lora_alpha"] = self.lora_alpha
        if self.sparse_optimizer is not None:
            config["sparse_optimizer"] = keras.saving.serialize_keras_object(self.sparse_optimizer)
        if self.dynamic is not None:
            config["dynamic"] = self.dynamic.get_config()
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["quantization_config"] = keras.saving.deserialize_keras_object(config.get("quantization_config"))
        return super().from_config(config)


_ALPHA_KEY = "lora_alpha"
_OPTIMIZER_KEY = "row_optimizer"


def _optimizer_kind(optimizer):
    """A row-wise optimizer's kind and slots, as a file records them: the state of one
    kind read as another's (Adam's moments as FTRL's accumulator) would be garbage."""
    return f"{type(optimizer).__name__}({', '.join(name for name, _ in optimizer.slots)})"


def _check_optimizer_kind(saved_kind, optimizer, layer_name):
    """A file's row-wise optimizer state must be of the layer's kind (files written
    before the kind was recorded are taken by their shapes)."""
    if saved_kind is None or optimizer is None or saved_kind == _optimizer_kind(optimizer):
        return
    raise ValueError(
        f"Layer '{layer_name}' cannot load these weights: its table is trained by "
        f"{_optimizer_kind(optimizer)}, but the file holds the state of {saved_kind}. Load the file "
        f"into a layer with that sparse_optimizer, or load it without the state "
        f"(the weights alone: `layer.set_weights(...)`) to start {type(optimizer).__name__} afresh."
    )


def _stored_values(store, layer_name):
    """The values of a store's keys `0` to `n - 1`, in order."""
    keys = sorted((key for key in store.keys() if key not in (_ALPHA_KEY, _OPTIMIZER_KEY) and not str(key).startswith("id_map_")),
                  key=lambda key: (len(str(key)), str(key)))
    if keys != [str(index) for index in range(len(keys))]:
        raise ValueError(
            f"Layer '{layer_name}' cannot load these weights: their keys must be 0 to "
            f"{len(keys) - 1}. Received keys {keys}."
        )
    return [store[key] for key in keys]


def _is_adapter(values, input_dim, output_dim):
    """Whether `values` start with `lora_embeddings_a (V, r)` and `_b (r, D)` of a table."""
    if len(values) < 2:
        return False
    a, b = (tuple(value.shape) for value in values[:2])
    return len(a) == 2 and len(b) == 2 and a[0] == input_dim and b == (a[1], output_dim)


def _check_groups(g_idx, output_dim, block_size, layer_name):
    """`g_idx`, the block of each value of a row, follows from the block size; another
    one would decode values with another block's scale."""
    expected = np.arange(output_dim) // block_size
    if not np.array_equal(np.asarray(g_idx), expected):
        raise ValueError(
            f"Layer '{layer_name}' cannot load these weights: `g_idx` must be "
            f"arange({output_dim}) // {block_size}, the block of each value. "
            f"Received: {np.asarray(g_idx).tolist()}"
        )


def _check_padding(packed, output_dim, layer_name):
    """With an odd `output_dim`, the last byte of each packed int4 row holds one value
    and a zero: anything else is a file of another `output_dim` (8 values in the
    shape of 7)."""
    if output_dim % 2 == 0:
        return
    padding = (np.asarray(packed)[:, -1].astype("uint8") >> 4) != 0
    if padding.any():
        raise ValueError(
            f"Layer '{layer_name}' cannot load these weights: with output_dim="
            f"{output_dim} the last int4 value of each packed row must be padding "
            f"(0), but row {int(np.flatnonzero(padding)[0])} holds a value there. The file "
            f"was saved with output_dim={output_dim + 1}."
        )


def _dtype_class(dtype):
    """Integer dtypes match exactly (an int8 table stored as int32 would wrap); floats
    match any float."""
    name = keras.backend.standardize_dtype(dtype)
    return "float" if "float" in name else name


def _matches(variables, values):
    return len(variables) == len(values) and all(
        tuple(value.shape) == tuple(variable.shape)
        and (_dtype_class(value.dtype) == _dtype_class(variable.dtype) or _is_step_count(variable))
        for variable, value in zip(variables, values)
    )


def _is_step_count(variable):
    """The row-wise optimizer's step count, which files before float counts hold as int32."""
    return variable.path.endswith("_step") and variable.shape == ()


def _describe(items, indexed=False):
    parts = []
    for index, item in enumerate(items):
        label = str(index) if indexed else item.path.split("/")[-1]
        parts.append(f"{label} {tuple(item.shape)} {keras.backend.standardize_dtype(item.dtype)}")
    return "[" + ", ".join(parts) + "]"

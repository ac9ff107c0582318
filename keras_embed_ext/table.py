"""One embedding table: its stored format, its LoRA adapter and its row-wise optimizer.

A lookup is one route through it: gather the stored rows of the validated ids,
decode them, add the adapter's rows. A layer holds one table (`Embedding`) or one
per stack of tables (`DistributedEmbedding`); the table's variables are created
through the layer's `add_weight`, so their names, paths and save order are the
layer's, as keras' own layer has them.
"""

import keras
from keras import initializers
from keras import ops
from keras import regularizers

from keras_embed_ext import keras_optimizer
from keras_embed_ext.backends.devices import rows_layout
from keras_embed_ext.backends.fused import Fused
from keras_embed_ext.dynamic_ids import KeyMap
from keras_embed_ext.formats import format_for
from keras_embed_ext.fresh_rows import FreshRows
from keras_embed_ext.ids import zero_invalid
from keras_embed_ext.lora import Adapter
from keras_embed_ext.lora import check_rank_and_alpha
from keras_embed_ext.row_training import RowTraining
from keras_embed_ext.tracking import unlocked

ADAPTER_NAMES = ("lora_embeddings_a", "lora_embeddings_b")


class Table:
    """A `(input_dim, output_dim)` table stored as float, int8 or int4 rows, with an
    optional low-rank adapter and an optional row-wise optimizer.

    Args:
        owner: The layer whose `add_weight` creates the table's variables.
        shape: `(input_dim, output_dim)`.
        initializer, regularizer, constraint: Of the float table.
        optimizer: Optional `keras_embed_ext.optimizers.RowOptimizer` that trains
            the float table (or, with an adapter, its `A`) row-wise.
        dynamic: Optional `DynamicIds`: the rows are keyed by raw keys (`KeyMap`), and
            a row given to a new key starts afresh, drawn with `seed_generator`.
    """

    def __init__(self, owner, shape, initializer="uniform", regularizer=None, constraint=None, optimizer=None,
                 dynamic=None, seed_generator=None):
        self.owner = owner
        self.shape = tuple(int(size) for size in shape)
        self.initializer = initializer
        self.regularizer = regularizer
        self.constraint = constraint
        self.optimizer = optimizer
        self.format = None
        self.adapter = None
        self.row_training = None
        self.dynamic = dynamic
        self.key_capacities = (self.shape[0],)  # in a stack of dynamic tables, each one's rows
        self.key_map = None
        self._new_rows = FreshRows(initializer, self.shape, seed_generator) if dynamic else None
        self._fused_lookup = Fused(self._lookup)

    @property
    def mode(self):
        """The quantization mode of the stored rows: `None`, "int8" or "int4"."""
        return self.format.mode

    def build(self, mode=None, block_size=None):
        """Creates the stored variables of `mode`'s format (and the optimizer's state)."""
        self.format = format_for(mode, block_size)
        self.format.build(self.owner.add_weight, self.shape, self.initializer, self.regularizer, self.constraint)
        if self.dynamic is not None:
            with unlocked(self.owner):
                self.key_map = KeyMap(self._add_variable, self.key_capacities, self.dynamic)
        self._attach_optimizer()

    def map_keys(self, keys, admit=False, padding_zero=False, tables=None):
        """`(ids, found, admitted_at)` of a dynamic table's `keys` (from `check_keys`;
        `tables`: in a stack, each key's table): their rows and whether they have one.
        With `admit` (a training step) new keys are admitted first, and the rows given
        to them start afresh: here, or in the training lookup
        (`RowTraining.renews_in_lookup`), which `admitted_at` then tells which rows."""
        mapped = self.key_map.map(keys, admit, padding_zero, tables)
        training = self.row_training
        admitted_at = None
        if admit and training is not None:
            if training.renews_in_lookup():
                admitted_at = self.key_map.admitted_at(mapped.rows)
            else:
                training.renew(mapped.given_rows, self.key_map.clock.value)
        return mapped.rows, mapped.found, admitted_at

    # The pipeline's gather: stored rows -> decoded rows -> plus the adapter's rows.
    def lookup(self, ids, valid=None, train_rows=False, admitted_at=None):
        """Float rows of in-range `ids`, zeros where `valid` (from `ids.validate`) is
        False; with `train_rows`, read through the row-wise optimizer's lookup, whose
        gradient trains the table (`admitted_at`: from a dynamic table's `map_keys`)."""
        if train_rows and self.row_training is not None:
            return self._training_lookup(ids, valid, admitted_at)
        if train_rows and keras.backend.backend() == "tensorflow":
            keras_optimizer.sum_repeated_slices(keras_optimizer.training_optimizer())
        if self.mode is not None or self.adapter is not None:
            return self._fused_rows(ids, valid)
        return self._lookup(ids, valid)

    def _lookup(self, ids, valid):
        # Invalid ids get zero rows: their stored and adapter rows are zeroed as they
        # are gathered, where a compiler fuses it, not in a later pass.
        rows = zero_invalid(self.format.gather(ids), valid)
        if self.adapter is not None:
            rows = self.adapter.add_rows(ops.cast(rows, "float32"), ids, valid)
        return rows

    def _fused_rows(self, ids, valid):
        """`_lookup` of a quantized or adapted table, compiled by XLA on TensorFlow: a
        decode and the adapter are passes of their own, which TensorFlow fuses only
        when compiled (`backends.fused.Fused`)."""
        adapter = [] if self.adapter is None else self.adapter.variables()
        scale = self.adapter is not None and self.adapter.alpha / self.adapter.rank
        key = (type(self.format), getattr(self.format, "block_size", None), self.shape[1], scale)
        return self._fused_lookup(key, (*self.format.variables(), *adapter), ids, valid)

    def _training_lookup(self, ids, valid, admitted_at=None):
        row_lookup = self.row_training.lookup
        if self.adapter is None:
            return row_lookup(ids, admitted_at, valid)
        rows = zero_invalid(self.format.gather(ids), valid)
        return self.adapter.add_rows(ops.cast(rows, "float32"), ids, valid, row_lookup(ids))

    def logits(self, x, dtype, inputs_quantizer=None):
        """`x @ table.T` in `dtype` for the effective table; a quantized table's part from
        inputs quantized by `inputs_quantizer`, if given, and the adapter's part never
        forming `A @ B`."""
        adapter = None if self.adapter is None else self.adapter.row_logit_factors(x)
        return self.format.logits(x, dtype, inputs_quantizer, adapter)

    def dequantize(self):
        """The effective float table: the stored rows decoded, plus the adapter's delta."""
        if self.mode is None and self.adapter is None:
            return self.format.embeddings
        table = self.format.dequantize()
        if self.adapter is not None:
            table = ops.cast(table, "float32") + self.adapter.delta()
        return table

    def variables(self, optimizer_state=True):
        """The stored variables in keras 3.15's order, then the adapter's, then the
        optimizer's state: the order in which they are saved."""
        adapter = [] if self.adapter is None else self.adapter.variables()
        return self.format.variables() + adapter + (self.optimizer_variables() if optimizer_state else [])

    def optimizer_variables(self):
        """The row-wise optimizer's state: its slots and step count."""
        return [] if self.row_training is None else self.row_training.variables()

    def key_map_variables(self):
        """A dynamic table's key map: resident keys, scores, steps, sightings."""
        return [] if self.key_map is None else self.key_map.variables()

    def unsaved_variables(self):
        """What the row-wise optimizer's steps work in, not saved."""
        return [] if self.row_training is None else self.row_training.scratch_variables()

    # State changes: each keeps the optimizer on the variable it trains now.
    def quantize(self, mode, block_size=None):
        """Moves the stored rows to `mode`'s format, the adapter kept."""
        self._check_static(f"quantize({mode!r})")
        target = format_for(mode, block_size)
        table = self.format.dequantize()
        with unlocked(self.owner):
            for variable in self.format.variables():
                self.owner._untrack_variable(variable)
            target.build(self.owner.add_weight, self.shape)
        target.encode(table)
        self.format = target
        self._attach_optimizer()

    def enable_lora(self, rank, lora_alpha=None, a_initializer="he_uniform", b_initializer="zeros"):
        """Adds a trainable adapter of `rank` and freezes the stored rows."""
        self._check_static("LoRA")
        if self.constraint:
            raise ValueError(
                "LoRA is incompatible with embedding constraints. Remove "
                "the `embeddings_constraint` argument to enable LoRA."
            )
        if self.adapter is not None:
            raise ValueError(
                f"lora is already enabled (rank {self.adapter.rank}). This can only be done once per "
                "layer; call `merge_lora()` first to start a new adapter."
            )
        check_rank_and_alpha(rank, lora_alpha)
        with unlocked(self.owner):
            self.adapter = Adapter(self._add_variable, self.shape, rank, rank if lora_alpha is None else lora_alpha,
                                   ADAPTER_NAMES, a_initializer, b_initializer, self.regularizer)
            if self.mode is None:
                self.format.embeddings.trainable = False
        self._attach_optimizer()

    def merge_lora(self):
        """Folds the adapter's delta into the stored rows (encoded again) and removes it."""
        if self.adapter is None:
            raise ValueError("merge_lora() needs LoRA enabled; this layer has no adapter.")
        merged = ops.cast(self.format.dequantize(), "float32") + self.adapter.delta()
        for variable in self.adapter.variables():
            self.owner._untrack_variable(variable)
        self.adapter = None
        self.format.encode(merged)
        if self.mode is None:
            self.format.embeddings.trainable = True
        self._attach_optimizer()

    def _check_static(self, change):
        if self.dynamic is not None:
            raise ValueError(
                f"Embedding layer '{self.owner.name}' is dynamic: its float rows are trained row-wise and "
                f"renewed as keys come and go, which {change} does not support."
            )

    def _attach_optimizer(self):
        """Puts the row-wise optimizer on the variable it trains now: the float table, or
        the adapter's `A`; none for a quantized table without an adapter. A variable
        that takes over starts with a fresh state."""
        if self.optimizer is None:
            return
        if self.adapter is not None:
            target = self.adapter.a
        else:
            target = self.format.embeddings if self.mode is None else None
        current = self.row_training
        if current is not None and current.variable is target:
            return
        if current is not None:
            current.release(self.owner._untrack_variable)
        with unlocked(self.owner):
            self.row_training = None if target is None else RowTraining(
                self._add_variable, self.owner.add_loss, target, self.optimizer, self._new_rows)

    def _add_variable(self, *, name, shape, initializer, dtype="float32", trainable=True, autocast=False,
                      regularizer=None):
        """A variable of the adapter or the optimizer's state, created as the owner's
        `add_weight` creates one. Under a `keras.distribution` it is laid out after the
        table, whatever key of a `LayoutMap` its path matches: one with a row per table
        row has its rows sharded as the table's are, any other (the adapter's `B`, a step
        count) is replicated."""
        owner = self.owner
        per_row = len(shape) > 0 and shape[0] == self.shape[0]
        layout = rows_layout(self.format.embeddings, len(shape), sharded=per_row)
        with keras.name_scope(owner.name, caller=owner):
            variable = keras.Variable(initializers.get(initializer), shape=shape, dtype=dtype, trainable=trainable,
                                      autocast=autocast, name=name, layout=layout)
        variable.regularizer = regularizers.get(regularizer)
        owner._track_variable(variable)
        return variable

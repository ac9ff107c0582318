"""Dynamic tables: rows keyed by raw ids of any value, given to keys as they arrive.

`DynamicIds` is the policy a user sets; `KeyMap` is a table's key map, its state (the
resident keys, their scores, when each row was given, the sighting sketch) and its one
job: turning a batch of keys into rows, and in a training step admitting new keys.
"""

from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from keras_embed_ext import host_admission
from keras_embed_ext import host_find
from keras_embed_ext import key_hash
from keras_embed_ext import key_slots
from keras_embed_ext import replica_keys
from keras_embed_ext.backends.arithmetic import reshape
from keras_embed_ext.backends.context import eager_on_torch_cpu
from keras_embed_ext.backends.context import is_traced
from keras_embed_ext.backends.context import shapes_are_static
from keras_embed_ext.backends.devices import to_host
from keras_embed_ext.backends.fused import Fused
from keras_embed_ext.backends.keys import admits_on_host
from keras_embed_ext.backends.keys import compress
from keras_embed_ext.backends.rows import add_into
from keras_embed_ext.backends.rows import assign_here
from keras_embed_ext.backends.rows import scatter_into
from keras_embed_ext.backends.rows import take_elements
from keras_embed_ext.backends.rows import take_rows
from keras_embed_ext.ids import dtype_name

EVICTIONS = ("lfu", "lru", "ttl")
SEED_KEY = "id_map_seed"
# Cells in each of the sighting sketch's two rows: a fixed size, whatever the capacity.
SKETCH_WIDTH = 2**15


@keras.saving.register_keras_serializable(package="keras_embed_ext")
class DynamicIds:
    """How a dynamic table admits and evicts keys.

    Args:
        min_count: A new key gets a row in the training step in which it has been seen
            this many times (sightings are counted in a fixed-size count-min sketch,
            which may over-count); until then it reads zeros.
        eviction: `"lfu"` (free the row seen the fewest times), `"lru"` (the row unseen
            the longest) or `"ttl"` (as `"lru"`, and a key unseen for `ttl_steps`
            training steps frees its row even when the table is not full).
        ttl_steps: With `eviction="ttl"`, the number of steps.
    """

    def __init__(self, min_count: int = 1, eviction: str = "lfu", ttl_steps: int | None = None):
        if isinstance(min_count, bool) or not isinstance(min_count, (int, np.integer)) or min_count < 1:
            raise ValueError(f"`min_count` must be a positive integer. Received: min_count={min_count!r}")
        if eviction not in EVICTIONS:
            raise ValueError(f"`eviction` must be one of {EVICTIONS}. Received: eviction={eviction!r}")
        if (eviction == "ttl") != (ttl_steps is not None):
            raise ValueError(
                "`ttl_steps` is the number of training steps after which an unseen key frees its row: "
                f"it is required with eviction='ttl' and only then. Received: eviction={eviction!r}, "
                f"ttl_steps={ttl_steps!r}"
            )
        if ttl_steps is not None and (isinstance(ttl_steps, bool) or not isinstance(ttl_steps, (int, np.integer))
                                      or ttl_steps < 1):
            raise ValueError(f"`ttl_steps` must be a positive integer. Received: ttl_steps={ttl_steps!r}")
        self.min_count = int(min_count)
        self.eviction = eviction
        self.ttl_steps = None if ttl_steps is None else int(ttl_steps)

    def get_config(self):
        return {"min_count": self.min_count, "eviction": self.eviction, "ttl_steps": self.ttl_steps}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return isinstance(other, DynamicIds) and self.get_config() == other.get_config()

    def __repr__(self):
        return f"DynamicIds({', '.join(f'{k}={v!r}' for k, v in self.get_config().items())})"


def get(dynamic) -> DynamicIds | None:
    """`dynamic=` as given to a layer or a `TableConfig`: `True`, a `DynamicIds`, its
    config, or `None`/`False` for a static table."""
    if dynamic is None or dynamic is False:
        return None
    if dynamic is True:
        return DynamicIds()
    if isinstance(dynamic, dict):
        return DynamicIds.from_config(dynamic.get("config", dynamic))
    if isinstance(dynamic, DynamicIds):
        return dynamic
    raise ValueError(f"`dynamic` must be True, False, None or a `DynamicIds`. Received: dynamic={dynamic!r}")


def key_dtype() -> str:
    """int64, or int32 on JAX without x64 (where no int64 tensor exists)."""
    if keras.backend.backend() == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            return "int32"
    return "int64"


def check_keys(keys, subject):
    """Keys as a tensor of the map's key dtype; keys that are not integers, and on JAX
    without x64 host keys beyond int32, are errors that name them."""
    array = keys if ops.is_tensor(keys) else np.asarray(keys)
    dtype = dtype_name(array)
    if not (dtype.startswith("int") or dtype.startswith("uint")):
        raise TypeError(f"{subject} is dynamic: its ids are integer keys. Received: ids of dtype {dtype}.")
    wanted = key_dtype()
    if isinstance(array, np.ndarray) and wanted == "int32" and array.size:
        info = np.iinfo("int32")
        beyond = (array < info.min) | (array > info.max)
        if beyond.any():
            raise ValueError(
                f"{subject} got key {array.reshape(-1)[np.flatnonzero(beyond)[0]].item()}, beyond int32: JAX "
                "without x64 has no int64 tensors. Enable x64 (`jax.config.update('jax_enable_x64', True)`) "
                "or hash the keys into int32 first (`keras.layers.Hashing(2**31 - 1)`)."
            )
    return ops.cast(ops.convert_to_tensor(array), wanted)


class MappedKeys(NamedTuple):
    rows: object  # the key's row (0 where it has none), shaped as the keys
    found: object  # bool, shaped as the keys: the key has a row
    given_rows: object  # a training step's rows given to new keys, distinct; with static
    # shapes (JAX, TensorFlow's XLA) one entry per key, past the table's rows where none


class KeyMap:
    """The key map of a dynamic table, or of the dynamic tables of one stack.

    Args:
        add_variable: Creates the map's state (the table's `_add_variable`).
        capacities: The rows of each table (`key_slots.KeyLayout`).
        config: The tables' `DynamicIds`.
    """

    def __init__(self, add_variable, capacities, config: DynamicIds):
        self.layout = key_slots.KeyLayout(capacities)
        self.capacity = self.layout.capacity
        self.config = config
        size = (self.layout.buckets + 1, self.layout.slots)  # a row per bucket, then a scratch one

        def state(name, shape, dtype):
            return add_variable(name=f"id_map_{name}", shape=shape, initializer="zeros", dtype=dtype,
                                trainable=False)

        self.keys = state("keys", size, key_dtype())
        self.scores = state("scores", size, "int32")
        self.admitted = state("admitted", size, "int32")
        self.clock = state("clock", (), "int32")
        self.sightings = state("sightings", (2 * SKETCH_WIDTH,), "int32") if config.min_count > 1 else None
        self._fused_find = Fused(self._find)
        self._fused_write = Fused(lambda *written: self._write(*written, dynamic_shapes=False))

    def variables(self):
        """The map's state, in the order it is saved."""
        return [v for v in (self.keys, self.scores, self.admitted, self.clock, self.sightings) if v is not None]

    def map(self, keys, admit: bool, padding_zero: bool = False, tables=None) -> MappedKeys:
        """The rows of `keys` (from `check_keys`); with `admit` (a training step), new
        keys are admitted first (key 0 never, with `padding_zero`) and the map moves one
        step on. In a stack, `tables` (int32, shaped as the keys) names each key's table.
        Every replica admits from the keys of all (`replica_keys`)."""
        shape = ops.shape(keys)
        flat = reshape(keys, (-1,))
        if tables is not None:
            tables = reshape(tables, (-1,))
        if not admit:
            found = self.find(flat, tables)
            return MappedKeys(reshape(found.rows, shape), reshape(found.found, shape), None)
        flat, start = replica_keys.gather(flat)
        if tables is not None:
            tables = replica_keys.gather(tables)[0]
        clock = self.clock.value
        found = self.find(flat, tables)
        cells = None if self.sightings is None else key_hash.sketch_cells(flat, SKETCH_WIDTH, tables)
        unknown = ~found.found if not padding_zero else ~found.found & (flat != 0)
        # Most steps of a trained table bring no new key: the admission's sort is skipped.
        change = ops.cond(ops.any(unknown), lambda: self._admit(flat, tables, found, unknown, cells, clock),
                          lambda: key_slots.none_admitted(flat, found, self.capacity))
        given = (change.admitted_rows, change.admitted_keys, change.admitted_scores)
        seen = key_slots.seen_rows(found, self.capacity)
        dynamic_shapes = not shapes_are_static() or (keras.backend.backend() == "jax" and not is_traced(flat))
        given_rows = change.admitted_rows  # `capacity` where no row was given: XLA's scatters drop it
        if dynamic_shapes:
            is_given = given_rows < self.capacity
            given_rows = compress(given_rows, is_given)
        if self._fused_write.compiles():
            # TensorFlow's element scatters into a variable cost several times XLA's
            # in-place ones at millions of rows: every key's entry is written there, the
            # others to the scratch row.
            self._fused_write((self.config.eviction,), (self.keys, self.scores, self.admitted), *given, seen, clock)
        elif dynamic_shapes:  # the rows given alone, not a write to the scratch row for every other key
            self._write(given_rows, *(compress(x, is_given) for x in given[1:]), seen, clock, True)
        else:
            self._write(*given, seen, clock, False)
        if cells is not None:
            for cell in cells:
                add_into(self.sightings, cell, change.sightings)
        assign_here(self.clock, clock + 1)
        count = ops.size(keys)
        rows = replica_keys.own(change.rows, start, count)
        found = replica_keys.own(change.found, start, count)
        return MappedKeys(reshape(rows, shape), reshape(found, shape), given_rows)

    def find(self, keys, tables=None) -> key_slots.Found:
        """`key_slots.find` of flat `keys` in this map: compiled by XLA on TensorFlow,
        which fuses its passes over the keys and their buckets; by numba, or else numpy,
        on eager torch's CPU (`host_find`)."""
        return self._fused_find((self.layout.capacities, self.config.ttl_steps), (self.keys, self.scores, self.clock),
                                keys, tables)

    def _find(self, keys, tables):
        find = host_find.find_tensors if eager_on_torch_cpu(keys) else key_slots.find
        return find(keys, tables, self.keys.value, self.scores.value, self.clock.value, self.layout,
                    self.config.ttl_steps)

    def _admit(self, keys, tables, found, unknown, cells, clock):
        """`key_slots.admit` of the step's `keys` (`found` by `find`; `unknown`, those it
        may admit), with their sightings so far (read at the sketch's `cells`)."""
        config = self.config
        sighted = None
        if cells is not None:
            sketch = self.sightings.value
            sighted = ops.minimum(take_rows(sketch, cells[0]), take_rows(sketch, cells[1]))
        admit = host_admission.admit_tensors if admits_on_host(keys) else key_slots.admit
        return admit(keys, tables, found, unknown, self.scores.value, clock, self.layout, config.eviction == "lfu",
                     config.min_count, sighted, config.ttl_steps)

    def _write(self, given_rows, given_keys, given_scores, seen, clock, dynamic_shapes):
        """Writes the keys given rows, their scores and the step they were given, and the
        resident keys' sightings (at `seen`, from `key_slots.seen_rows`)."""
        scatter_into(self.keys, given_rows, ops.cast(given_keys, self.keys.dtype))
        scatter_into(self.scores, given_rows, given_scores)
        scatter_into(self.admitted, given_rows, ops.full(ops.shape(given_rows), clock + 1, "int32"))
        self._add_sightings(seen, clock, dynamic_shapes)

    def _add_sightings(self, rows, clock, dynamic_shapes):
        """Resident keys' new scores, at `rows` (`key_slots.seen_rows`): their occurrences
        added (LFU, up to `key_slots.MAX_SCORE`) or the step (LRU, TTL). With
        `dynamic_shapes`, only the scores beyond the cap are written back."""
        if self.config.eviction != "lfu":
            return scatter_into(self.scores, rows, ops.full(ops.shape(rows), clock + 1, "int32"))
        add_into(self.scores, rows, ops.ones(ops.shape(rows), "int32"))
        summed = take_elements(self.scores.value, rows)
        if dynamic_shapes:
            beyond = compress(rows, summed > key_slots.MAX_SCORE)
            return scatter_into(self.scores, beyond, ops.full(ops.shape(beyond), key_slots.MAX_SCORE, "int32"))
        scatter_into(self.scores, rows, ops.minimum(summed, key_slots.MAX_SCORE))

    def save(self, store, seed_state):
        """Writes the map and `seed_state` (the renewals' seed) into a layer's `store`,
        keys as int64 whatever the backend, so a file loads on any."""
        for variable in self.variables():
            store[_key_of(variable)] = _host(variable).astype("int64" if variable is self.keys else "int32")
        store[SEED_KEY] = _host(seed_state)

    def load(self, store, seed_state, subject):
        """Reads what `save` wrote; a map of another capacity or policy, or (JAX without
        x64) keys beyond int32, are errors naming them."""
        missing = [_key_of(v) for v in self.variables() if _key_of(v) not in store.keys()]
        if missing:
            raise ValueError(f"{subject} is dynamic, but the file holds no key map ({', '.join(missing)}).")
        for variable in self.variables():
            value = np.asarray(store[_key_of(variable)])
            if value.shape != tuple(variable.shape):
                raise ValueError(
                    f"{subject} cannot load this key map: {_key_of(variable)} has shape {value.shape}, "
                    f"expected {tuple(variable.shape)} (capacity {self.capacity}, min_count "
                    f"{self.config.min_count})."
                )
            if variable is self.keys:
                variable.assign(check_keys(value, subject))  # a tensor, maybe on a GPU
            else:
                variable.assign(value.astype(keras.backend.standardize_dtype(variable.dtype)))
        if SEED_KEY in store.keys():
            seed_state.assign(np.asarray(store[SEED_KEY]))

    def admitted_at(self, rows):
        """The step at which each of `rows` was given to its key (0: never), as float32:
        how a JAX training lookup knows which rows to renew."""
        return ops.cast(take_elements(self.admitted.value, reshape(rows, (-1,))), "float32")

    def admitted_steps(self):
        """The step at which each of the table's rows was given to its key (0: never)."""
        return ops.reshape(self.admitted.value, (-1,))[: self.capacity]

    def resident(self, table: int = 0):
        """`(keys, rows)`: the resident keys of table `table` of the stack and their rows
        in that table, int64 numpy arrays."""
        start = self.layout.row_offsets[table]
        scores = _host(self.scores).reshape(-1)[start : start + self.layout.capacities[table]]
        live = scores > 0
        if self.config.ttl_steps is not None:
            live &= int(_host(self.clock)) - scores < self.config.ttl_steps
        rows = np.flatnonzero(live)
        keys = _host(self.keys).reshape(-1)[start + rows]
        return keys.astype("int64"), rows.astype("int64")


def _key_of(variable):
    return variable.path.split("/")[-1]


def _host(variable):
    return np.array(to_host(ops.convert_to_tensor(variable.value)))

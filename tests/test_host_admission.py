"""The numpy admission of JAX and eager torch on a CPU (`host_admission`) and eager
torch's numpy and numba finds (`host_find`, `numba_find`) against `key_slots.admit` and
`key_slots.find` in the backend's own ops, on random key maps."""

import sys
import types

import numpy as np
import pytest
from hypothesis import assume
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from conftest import BACKEND
from conftest import to_numpy
from conftest import traced
import keras_embed_ext
from keras_embed_ext import host_admission
from keras_embed_ext import host_find
from keras_embed_ext import key_slots
from keras_embed_ext import numba_find
from keras_embed_ext.backends.keys import admits_on_host
from keras_embed_ext.dynamic_ids import key_dtype


@st.composite
def key_maps(draw):
    """`(layout, stored_keys, scores, clock, keys, tables, sighted, min_count, eviction,
    padding_zero)`: a key map whose buckets hold some of a pool's keys (the rest of
    their rows free or held by keys the step does not bring), and a step's keys from
    that pool."""
    stacked = draw(st.booleans())
    capacities = draw(st.lists(st.integers(1, 40), min_size=2, max_size=3)) if stacked else [draw(st.integers(1, 80))]
    layout = key_slots.KeyLayout(capacities)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    clock = int(rng.integers(0, 6))
    pool = rng.choice(np.arange(-2**31, 2**31 - 1, 2**24 + 1, dtype="int64"), 24, replace=False)
    if key_dtype() == "int64" and draw(st.booleans()):  # keys beyond int32, negative ones included
        pool += rng.integers(-2**31, 2**31, pool.size) << 32
    pool[0] = 0  # key 0 also names the rows never given
    pool_tables = rng.integers(0, len(capacities), pool.size).astype("int32")
    pool_buckets = to_numpy(layout.buckets_of(_tensor(pool.astype(key_dtype())),
                                              _tensor(pool_tables) if stacked else None))
    shape = (layout.buckets + 1, layout.slots)
    stored, scores = np.zeros(shape, "int64"), np.zeros(shape, "int32")
    rows = np.arange(stored.size)
    table_of_row = np.searchsorted(layout.row_offsets, rows, side="right") - 1
    exists = (rows < layout.row_ends[table_of_row]).reshape(shape)
    # Rows held by keys outside the pool, then the pool's resident keys in their buckets.
    others = exists & (rng.random(shape) < 0.4)
    stored[others], scores[others] = 2**30 + 7, rng.integers(1, clock + 2, others.sum())
    for key, bucket in zip(pool, pool_buckets):
        free = np.flatnonzero(exists[bucket] & (scores[bucket] == 0))
        if free.size and rng.random() < 0.5:
            stored[bucket, free[0]], scores[bucket, free[0]] = key, rng.integers(1, clock + 2)
    picks = rng.integers(0, draw(st.integers(1, pool.size)), 48)  # one length: eager JAX compiles per shape
    min_count = draw(st.integers(1, 3))
    # A key's sightings so far, read from the sketch: the same at each of its occurrences.
    sighted = rng.integers(0, 3, pool.size).astype("int32")[picks] if min_count > 1 else None
    policy = draw(st.sampled_from(["lfu", "lru", "ttl"]))
    return (layout, stored, scores, clock, pool[picks], pool_tables[picks] if stacked else None, sighted,
            min_count, policy, draw(st.booleans()))


def _tensor(x):
    import keras

    return keras.ops.convert_to_tensor(x)


def _given(admitted, capacity):
    """The rows given and their keys and first scores, in any order."""
    rows, keys, scores = (to_numpy(x) for x in admitted[2:5])
    mine = rows < capacity
    return sorted(zip(rows[mine].tolist(), keys[mine].tolist(), scores[mine].tolist()))


@settings(deadline=None, max_examples=60)
@given(key_maps())
def test_the_numpy_admission_equals_the_backends(case):
    layout, stored, scores, clock, keys, tables, sighted, min_count, policy, padding_zero = case
    dtype = key_dtype()
    keys = keys.astype(dtype)
    stored = stored.astype(dtype)
    ttl_steps = 2 if policy == "ttl" else None
    tables_t = None if tables is None else _tensor(tables)
    found = key_slots.find(_tensor(keys), tables_t, _tensor(stored), _tensor(scores), _tensor(np.int32(clock)),
                           layout, ttl_steps)
    unknown = ~to_numpy(found.found) & ((keys != 0) if padding_zero else True)
    assume(unknown.any())  # a step of resident keys admits none, and skips the admission
    args = (policy == "lfu", min_count)

    def backends(keys, tables, found, unknown, scores, clock, sighted):
        return key_slots.admit(keys, tables, found, unknown, scores, clock, layout, *args, sighted, ttl_steps)

    expected = backends(_tensor(keys), tables_t, found, _tensor(unknown), _tensor(scores), _tensor(np.int32(clock)),
                        None if sighted is None else _tensor(sighted))
    host_found = key_slots.Found(*(to_numpy(x) for x in found))
    admitted = host_admission.admit(keys, tables, host_found, unknown, scores, clock, layout, *args, sighted,
                                    ttl_steps)
    results = [admitted]
    tensors = [None if x is None else _tensor(x) for x in (keys, tables)]
    if admits_on_host(tensors[0]):  # and from a step's tensors: JAX's compiled step, eager torch

        def from_tensors(keys, tables, found, unknown, scores, clock, sighted):
            return host_admission.admit_tensors(keys, tables, found, unknown, scores, clock, layout, *args, sighted,
                                                ttl_steps)

        run = traced(from_tensors) if BACKEND == "jax" else from_tensors
        results.append(run(*tensors, found, _tensor(unknown), _tensor(scores), _tensor(np.int32(clock)),
                           None if sighted is None else _tensor(sighted)))
    for result in results:
        for name in ("rows", "found", "sightings"):
            np.testing.assert_array_equal(to_numpy(getattr(result, name)), to_numpy(getattr(expected, name)), name)
        assert _given(result, layout.capacity) == _given(expected, layout.capacity)
    for result in [expected, *results]:  # what goes to the scratch row: zeros, whatever the route
        rows, keys, scores = (to_numpy(x) for x in result[2:5])
        assert not keys[rows >= layout.capacity].any() and not scores[rows >= layout.capacity].any()


@settings(deadline=None, max_examples=60)
@given(key_maps())
def test_the_numpy_and_numba_finds_equal_the_backends(case):
    layout, stored, scores, clock, keys, tables, _, _, policy, _ = case
    dtype = key_dtype()
    keys, stored = keys.astype(dtype), stored.astype(dtype)
    ttl_steps = 2 if policy == "ttl" else None
    tables_t = None if tables is None else _tensor(tables)
    expected = key_slots.find(_tensor(keys), tables_t, _tensor(stored), _tensor(scores), _tensor(np.int32(clock)),
                              layout, ttl_steps)
    results = [find(keys, tables, stored, scores, clock, layout, ttl_steps) for find in (host_find.find, numba_find.find)]
    if BACKEND == "torch":  # and from a step's tensors, on their memory
        results.append(host_find.find_tensors(_tensor(keys), tables_t, _tensor(stored), _tensor(scores),
                                              _tensor(np.int32(clock)), layout, ttl_steps))
    for result in results:
        for name in ("rows", "found", "buckets"):
            np.testing.assert_array_equal(to_numpy(getattr(result, name)), to_numpy(getattr(expected, name)), name)


@given(st.integers(0, 2**31 - 1), st.integers(1, 2**31 - 1))
def test_the_compiled_remainder_equals_numpys(hashed, count):
    multiple = hashed // count * count  # where the float quotient falls short
    for value in (hashed, multiple, max(multiple - 1, 0), min(multiple + 1, 2**31 - 1)):
        assert numba_find._remainder(value, count, 1.0 / count) == value % count, value


def _numba_that_cannot_cache():
    def njit(**options):
        raise RuntimeError("cannot cache function '_mix': no locator available for file 'numba_find.py'")

    return types.SimpleNamespace(njit=njit)


@pytest.mark.parametrize("numba", [None, _numba_that_cannot_cache()], ids=["absent", "cannot_cache"])
def test_eager_torch_finds_by_numba_where_it_imports(monkeypatch, numba):
    host_find.compiled_or_numpy_find.cache_clear()
    assert host_find.compiled_or_numpy_find() is numba_find.find
    monkeypatch.setitem(sys.modules, "numba", numba)
    monkeypatch.delitem(sys.modules, "keras_embed_ext.numba_find")
    monkeypatch.delattr(keras_embed_ext, "numba_find")
    host_find.compiled_or_numpy_find.cache_clear()
    try:
        assert host_find.compiled_or_numpy_find() is host_find.find
    finally:
        host_find.compiled_or_numpy_find.cache_clear()


def test_the_host_admits_on_a_cpu_outside_a_distribution():
    import keras

    keys = _tensor(np.arange(4, dtype="int32"))
    if BACKEND == "torch":
        assert admits_on_host(keys) == (keys.device.type == "cpu")
        assert not admits_on_host(keys.to("meta"))  # as torch.compile traces a step: no memory to read
    elif BACKEND == "jax":
        import jax

        on_cpu = jax.default_backend() == "cpu"
        assert admits_on_host(keys) == on_cpu
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
        try:
            assert not admits_on_host(keys)
        finally:
            keras.distribution.set_distribution(None)
    else:
        assert not admits_on_host(keys)

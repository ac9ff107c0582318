"""Dynamic tables: raw keys, admission and eviction, against a plain-Python model of the policy."""

import collections

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine
from hypothesis.stateful import initialize
from hypothesis.stateful import invariant
from hypothesis.stateful import rule

import keras_embed_ext as kee
from conftest import BACKEND
from conftest import to_numpy
from conftest import traced


def _wide_keys() -> bool:
    """Whether int64 keys reach the layer (all but JAX without x64)."""
    if BACKEND != "jax":
        return True
    import jax

    return bool(jax.config.jax_enable_x64)


BIG = 2**40 if _wide_keys() else 2**27
KEY_POOL = [0, 1, 2, 3, 5, 8, 13, 21, 34, 55, -1, -7, -2**31, 2**31 - 1, BIG, -BIG, BIG + 16, 7 * BIG + 3]


class ReferenceKeyMap:
    """The policy of a table that behaves globally (at most 16 rows), in plain Python:
    a dict of key -> row, each row's score (sightings or last step seen) and the
    sightings of keys not resident."""

    def __init__(self, capacity, config):
        self.capacity, self.config = capacity, config
        self.row_of = {}
        self.score = [0] * capacity
        self.sightings = collections.Counter()
        self.clock = 0

    def _expire(self):
        if self.config.ttl_steps is not None:
            for key, row in list(self.row_of.items()):
                if self.clock - self.score[row] >= self.config.ttl_steps:
                    del self.row_of[key]

    def resident(self):
        self._expire()
        return dict(self.row_of)

    def step(self, keys, padding_zero=False):
        """Admits and scores one training step's keys; returns the rows given."""
        self._expire()
        step, lfu = self.clock + 1, self.config.eviction == "lfu"
        counts = collections.Counter(keys)
        taken = {self.row_of[k] for k in counts if k in self.row_of}
        for key in counts:
            if key in self.row_of:
                row = self.row_of[key]
                self.score[row] = self.score[row] + counts[key] if lfu else step
        given = set()
        for key in sorted(counts):
            if key in self.row_of or (padding_zero and key == 0):
                continue
            self.sightings[key] += counts[key]
            if self.sightings[key] < self.config.min_count:
                continue
            held = set(self.row_of.values())
            free = [r for r in range(self.capacity) if r not in held and r not in taken]
            if free:
                row = free[0]
            else:
                choices = [r for r in range(self.capacity) if r not in taken]
                if not choices:
                    continue
                row = min(choices, key=lambda r: (self.score[r], r))
                del self.row_of[next(k for k, r in self.row_of.items() if r == row)]
            self.row_of[key] = row
            self.score[row] = counts[key] if lfu else step
            taken.add(row)
            given.add(row)
        self.clock = step
        return given


def _policies():
    return st.one_of(
        st.builds(kee.DynamicIds, min_count=st.integers(1, 3), eviction=st.sampled_from(["lfu", "lru"])),
        st.builds(kee.DynamicIds, min_count=st.integers(1, 3), eviction=st.just("ttl"), ttl_steps=st.integers(1, 3)),
    )


def _keys(keys):
    return np.asarray(keys, "int64" if _wide_keys() else "int32")


class DynamicTableMachine(RuleBasedStateMachine):
    """Random training and inference calls, checked after each against `ReferenceKeyMap`."""

    # On TensorFlow, calls run eagerly or compiled by XLA, whose admission keeps static shapes.
    @initialize(capacity=st.integers(1, 16), config=_policies(), optimizer=st.sampled_from(["adagrad", "sgd"]),
                xla=st.booleans() if BACKEND == "tensorflow" else st.just(False))
    def build(self, capacity, config, optimizer, xla):
        keras.utils.clear_session(free_memory=False)
        self.layer = kee.Embedding(capacity, 3, dynamic=config, sparse_optimizer=optimizer)
        self.layer.build()
        self.call = traced(self.layer, compiled=True) if xla else self.layer
        self.reference = ReferenceKeyMap(capacity, config)
        self.seen = set()
        self.initial_slot = self.layer.sparse_optimizer.slot_initial_value("accumulator") if optimizer == "adagrad" else None

    @rule(keys=st.lists(st.sampled_from(KEY_POOL), min_size=1, max_size=12))
    def train(self, keys):
        before = to_numpy(self.layer.embeddings)
        self.call(_keys(keys), training=True)
        given = self.reference.step(keys)
        self.seen.update(keys)
        table = to_numpy(self.layer.embeddings)
        for row in range(self.reference.capacity):
            if row in given:  # a new draw of the initializer ("uniform": within 0.05)
                assert np.all(np.abs(table[row]) <= 0.05) and not np.array_equal(table[row], before[row])
            else:  # an eager call is not a step: nothing else moves
                np.testing.assert_array_equal(table[row], before[row])
        if self.initial_slot is not None and given:
            slots = to_numpy(self.layer.row_optimizer_variables[0])
            np.testing.assert_array_equal(slots[sorted(given)], np.float32(self.initial_slot))

    @rule(keys=st.lists(st.sampled_from(KEY_POOL), min_size=1, max_size=12))
    def infer(self, keys):
        state = [to_numpy(v) for v in self.layer.variables]
        rows = to_numpy(self.call(_keys(keys), training=False))
        resident, table = self.reference.resident(), to_numpy(self.layer.embeddings)
        for key, row in zip(keys, rows):
            expected = table[resident[key]] if key in resident else np.zeros(3, "float32")
            np.testing.assert_array_equal(row, expected)
        for variable, value in zip(self.layer.variables, state):
            np.testing.assert_array_equal(to_numpy(variable), value)

    @invariant()
    def same_keys_as_reference(self):
        if not hasattr(self, "layer"):
            return
        keys, rows = self.layer.id_map()
        assert keys.dtype == rows.dtype == np.int64
        assert len(set(rows.tolist())) == len(rows), "two keys share a row"
        assert dict(zip(keys.tolist(), rows.tolist())) == self.reference.resident()


TestDynamicTableMachine = DynamicTableMachine.TestCase
TestDynamicTableMachine.settings = settings(max_examples=25, stateful_step_count=8, deadline=None)


def test_buckets_evict_only_when_full():
    """Past 16 rows a key lives in its hash's bucket of 16: with at most 16 keys, every
    key is admitted whatever the buckets, and no two share a row."""
    layer = kee.Embedding(100, 2, dynamic=True)
    keys = _keys(KEY_POOL[:16])
    layer(keys, training=True)
    resident, rows = layer.id_map()
    assert sorted(resident.tolist()) == sorted(keys.tolist())
    assert len(set(rows.tolist())) == 16 and rows.max() < 100


def test_lfu_scores_stop_below_the_protected_rank():
    """A resident key's sightings are added where it lives, then capped: a step of
    repeats (no new key: the admission is skipped) cannot overflow its score."""
    from keras_embed_ext.key_slots import MAX_SCORE

    layer = kee.Embedding(16, 2, dynamic=kee.DynamicIds(eviction="lfu"))
    layer(_keys([5, 8]), training=True)
    (row,) = layer.id_map()[1][layer.id_map()[0] == 5]
    scores = layer._table.key_map.scores
    for start, repeats, expected in [(10, 3, 13), (MAX_SCORE - 1, 3, MAX_SCORE)]:
        value = to_numpy(scores).copy()
        value.reshape(-1)[row] = start
        scores.assign(value)
        layer(_keys([5] * repeats + [8]), training=True)
        assert to_numpy(scores).reshape(-1)[row] == expected


def test_many_keys_fill_a_large_table_without_sharing_rows():
    rng = np.random.default_rng(0)
    layer = kee.Embedding(512, 2, dynamic=kee.DynamicIds(eviction="lru"))
    for _ in range(6):
        layer(_keys(rng.integers(-2**30, 2**30, size=256)), training=True)
    keys, rows = layer.id_map()
    assert len(set(rows.tolist())) == len(rows) and len(set(keys.tolist())) == len(keys)
    assert len(rows) > 0.8 * 512  # buckets fill evenly: few rows stay free
    np.testing.assert_array_equal(to_numpy(layer(_keys(keys))), to_numpy(layer.embeddings)[rows])


def _model(layer, length):
    model = keras.Sequential([keras.Input((length,), dtype="int64" if _wide_keys() else "int32"), layer,
                              keras.layers.Flatten(), keras.layers.Dense(1, kernel_initializer="ones")])
    model.layers[-1].trainable = False
    model.compile(keras.optimizers.SGD(0.1), "mse")
    return model


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "rowwise_adagrad", "adam", "ftrl"])
def test_training_equals_static_table_on_mapped_rows(optimizer):
    """Each `fit` step equals a static table's step from the same table and state, on
    the rows the reference map gives (keys without a row read zeros: invalid ids), the
    rows given in the step renewed (zeros) with the optimizer's initial state."""
    capacity, length = 5, 3
    config = kee.DynamicIds(eviction="lru")
    dynamic = kee.Embedding(capacity, 2, dynamic=config, sparse_optimizer=optimizer, embeddings_initializer="zeros")
    model = _model(dynamic, length)
    reference = ReferenceKeyMap(capacity, config)
    rng = np.random.default_rng(1)
    for _ in range(5):
        keys = rng.choice(KEY_POOL[:9], size=(4, length))
        targets = rng.normal(size=(4, 1)).astype("float32")
        table, state = to_numpy(dynamic.embeddings), [to_numpy(v) for v in dynamic.row_optimizer_variables]
        given = sorted(reference.step(keys.reshape(-1).tolist()))
        static = kee.Embedding(capacity, 2, sparse_optimizer=optimizer, invalid_ids="zero")
        static_model = _model(static, length)
        table[given] = 0.0
        static.embeddings.assign(table)
        for variable, (name, _), value in zip(static.row_optimizer_variables, static.sparse_optimizer.slots, state):
            value[given] = static.sparse_optimizer.slot_initial_value(name)
            variable.assign(value)
        static.row_optimizer_variables[-1].assign(state[-1])
        rows = np.vectorize(lambda k: reference.row_of.get(k, -1))(keys)
        model.train_on_batch(_keys(keys), targets)
        static_model.train_on_batch(rows, targets)
        np.testing.assert_allclose(to_numpy(dynamic.embeddings), to_numpy(static.embeddings), rtol=1e-6, atol=1e-7)
        for ours, theirs in zip(dynamic.row_optimizer_variables, static.row_optimizer_variables):
            np.testing.assert_allclose(to_numpy(ours), to_numpy(theirs), rtol=1e-6, atol=1e-7)
        assert dict(zip(*(a.tolist() for a in dynamic.id_map()))) == reference.resident()


def test_predict_and_serving_never_change_the_map():
    layer = kee.Embedding(8, 2, dynamic=True)
    model = _model(layer, 2)
    model.fit(_keys([[1, 2], [3, 4]]), np.ones((2, 1)), verbose=0)
    state = [to_numpy(v) for v in layer.variables]
    model.predict(_keys([[5, 6], [1, 9]]), verbose=0)
    model.evaluate(_keys([[5, 6], [1, 9]]), np.ones((2, 1)), verbose=0)
    served = traced(lambda keys: layer(keys))(keras.ops.convert_to_tensor(_keys([[7, 1]])))
    np.testing.assert_array_equal(to_numpy(served)[0, 0], 0.0)
    for variable, value in zip(layer.variables, state):
        np.testing.assert_array_equal(to_numpy(variable), value)


def test_bags_and_padding_read_resident_rows():
    layer = kee.Embedding(8, 2, dynamic=True, combiner="sum", mask_zero=True)
    keys = _keys([[4, 9, 0], [9, 0, 0]])
    layer(keys, training=True)
    resident = dict(zip(*(a.tolist() for a in layer.id_map())))
    assert sorted(resident) == [4, 9]  # key 0 is padding, never admitted
    table = to_numpy(layer.embeddings)
    expected = [table[resident[4]] + table[resident[9]], table[resident[9]]]
    np.testing.assert_allclose(to_numpy(layer(keys)), expected, rtol=1e-6)


def test_saved_file_resumes_bit_exact(tmp_path):
    rng = np.random.default_rng(2)
    batches = [(_keys(rng.choice(KEY_POOL, size=(8, 2))), rng.normal(size=(8, 1))) for _ in range(6)]
    model = _model(kee.Embedding(6, 3, dynamic=kee.DynamicIds(min_count=2), seed=3), 2)
    for keys, targets in batches[:3]:
        model.train_on_batch(keys, targets)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    for keys, targets in batches[3:]:
        model.train_on_batch(keys, targets)
        loaded.train_on_batch(keys, targets)
    for ours, theirs in zip(model.layers[0].variables, loaded.layers[0].variables):
        np.testing.assert_array_equal(to_numpy(ours), to_numpy(theirs))
    for ours, theirs in zip(model.layers[0].id_map(), loaded.layers[0].id_map()):
        np.testing.assert_array_equal(ours, theirs)


def test_config_round_trip():
    layer = kee.Embedding(8, 2, dynamic=kee.DynamicIds(min_count=2, eviction="ttl", ttl_steps=4))
    clone = kee.Embedding.from_config(layer.get_config())
    assert clone.dynamic == layer.dynamic and clone.sparse_optimizer.get_config() == layer.sparse_optimizer.get_config()
    assert "dynamic" not in kee.Embedding(8, 2).get_config()


@pytest.mark.parametrize("kwargs, message", [
    ({"min_count": 0}, "min_count"),
    ({"eviction": "fifo"}, "eviction"),
    ({"eviction": "ttl"}, "ttl_steps"),
    ({"eviction": "lru", "ttl_steps": 3}, "ttl_steps"),
])
def test_bad_policies_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kee.DynamicIds(**kwargs)


def test_bad_uses_are_errors_naming_the_layer():
    layer = kee.Embedding(8, 2, dynamic=True, name="items")
    with pytest.raises(TypeError, match="items.*integer keys.*float32"):
        layer(np.ones((2,), "float32"))
    with pytest.raises(ValueError, match="items.*dynamic.*quantize"):
        layer.quantize("int8")
    with pytest.raises(ValueError, match="items.*dynamic.*LoRA"):
        layer.enable_lora(2)
    with pytest.raises(ValueError, match="not dynamic"):
        kee.Embedding(8, 2).id_map()
    with pytest.raises(ValueError, match="orthogonal|Orthogonal"):
        kee.Embedding(8, 2, dynamic=True, embeddings_initializer="orthogonal")


@pytest.mark.parametrize("distributed", [False, True])
def test_jit_compile_trains_a_dynamic_table_as_the_uncompiled_step(distributed):
    """`jit_compile=True` (JAX's `jit`, TensorFlow's XLA, `torch.compile`) admits, evicts
    and trains as the uncompiled step: the same map, table and weights (a constant
    initializer, so that renewed rows are alike however many rows a route draws)."""
    rng = np.random.default_rng(0)
    batches = [_keys(rng.choice(KEY_POOL, (8, 3))) for _ in range(4)]
    targets = rng.normal(size=(8, 1)).astype("float32")

    def trained(jit_compile):
        keras.utils.set_random_seed(0)
        config = kee.DynamicIds(min_count=2, eviction="lfu")
        constant = keras.initializers.Constant(0.1)
        if distributed:
            table = kee.TableConfig("items", 12, 4, dynamic=config, initializer=constant)
            layer = kee.DistributedEmbedding(kee.FeatureConfig("f", table, (8, 3), (8, 3, 4)))
        else:
            layer = kee.Embedding(12, 4, dynamic=config, embeddings_initializer=constant)
        model = keras.Sequential([keras.Input((3,), dtype=_keys([]).dtype.name, batch_size=8), layer,
                                  keras.layers.Flatten(), keras.layers.Dense(1)])
        model.compile("adam", "mse", jit_compile=jit_compile)
        for keys in batches:
            model.train_on_batch(keys, targets)
        assert model.jit_compile == jit_compile
        keys, rows = layer.id_map("items") if distributed else layer.id_map()
        return dict(zip(keys.tolist(), rows.tolist())), [to_numpy(w) for w in model.weights]

    (compiled_map, compiled), (plain_map, plain) = trained(True), trained(False)
    assert compiled_map == plain_map and len(plain_map) > 4
    for ours, theirs in zip(compiled, plain):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_keys_beyond_int32_are_keys_or_a_named_error():
    """int64 keys are keys on TensorFlow, torch and JAX with x64; JAX without x64 has no
    int64 tensor, and says so rather than wrap the key."""
    layer = kee.Embedding(8, 2, dynamic=True, name="users")
    keys = np.array([1, 2**32, -2**40], "int64")
    if not _wide_keys():
        with pytest.raises(ValueError, match="users.*key 4294967296.*jax_enable_x64"):
            layer(keys, training=True)
        return
    layer(keys, training=True)
    assert sorted(layer.id_map()[0].tolist()) == sorted(keys.tolist())


def test_distributed_table_shared_by_features_equals_one_layer():
    """A dynamic `TableConfig` shared by two features admits their keys as one
    `Embedding(dynamic=...)` admits them concatenated, and reads the same rows."""
    config = kee.DynamicIds(eviction="lru")
    users = kee.TableConfig("users", 40, 3, optimizer="adagrad", dynamic=config, combiner="sum")
    items = kee.TableConfig("items", 10, 3, optimizer="adagrad")
    layer = kee.DistributedEmbedding({
        "user": kee.FeatureConfig("user", users, (4,), (4, 3)),
        "friends": kee.FeatureConfig("friends", users, (4, 2), (4, 3)),
        "item": kee.FeatureConfig("item", items, (4,), (4, 3)),
    })
    rng = np.random.default_rng(4)
    inputs = {"user": _keys(rng.choice(KEY_POOL, 4)), "friends": _keys(rng.choice(KEY_POOL, (4, 2))),
              "item": np.arange(4)}
    layer(inputs, training=True)
    alone = kee.Embedding(40, 3, dynamic=config)
    alone(np.concatenate([inputs["user"], inputs["friends"].reshape(-1)]), training=True)
    for ours, theirs in zip(layer.id_map("users"), alone.id_map()):
        np.testing.assert_array_equal(ours, theirs)
    resident = dict(zip(*(a.tolist() for a in layer.id_map("users"))))
    table = to_numpy(layer.get_embedding_tables()["users"])
    outputs = layer(inputs)
    np.testing.assert_allclose(to_numpy(outputs["friends"]),
                               [table[[resident[k] for k in bag]].sum(0) for bag in inputs["friends"].tolist()],
                               rtol=1e-6)
    assert layer._stack_of["users"][0] != layer._stack_of["items"][0]  # a stack of its own
    clone = kee.DistributedEmbedding.from_config(layer.get_config())
    assert clone.feature_configs["user"].table.dynamic == config
    with pytest.raises(ValueError, match="not dynamic"):
        layer.id_map("items")
    with pytest.raises(ValueError, match="'users' is dynamic.*row-wise"):
        kee.DistributedEmbedding({"u": kee.FeatureConfig("u", kee.TableConfig("users", 4, 2, optimizer=None, dynamic=True), (2,), (2, 2))})


@pytest.mark.parametrize("config", [kee.DynamicIds(), kee.DynamicIds(min_count=2, eviction="lru"),
                                    kee.DynamicIds(eviction="ttl", ttl_steps=2)])
def test_dynamic_tables_share_a_stack_each_admitting_as_alone(config, tmp_path):
    """Dynamic tables of one dim, optimizer, policy and row initializer share a stack
    and one key map, in which each table admits and evicts among its own rows exactly
    as it does in a stack of its own; the features read their tables' mapped rows."""
    sizes = {"tiny": 5, "users": 40, "items": 24}

    def layer(table_stacking):
        tables = {name: kee.TableConfig(name, size, 3, initializer="uniform", optimizer="adagrad", dynamic=config)
                  for name, size in sizes.items()}
        features = {name: kee.FeatureConfig(name, table, (6,), (6, 3)) for name, table in tables.items()}
        features["users_bag"] = kee.FeatureConfig("users_bag", tables["users"], (6, 3), (6, 3))
        return kee.DistributedEmbedding(features, table_stacking=table_stacking)

    stacked, alone = layer("auto"), layer(None)
    assert len(stacked._stacks) == 1 and len(alone._stacks) == 3
    rng = np.random.default_rng(7)
    pools = {"tiny": KEY_POOL[:9], "users": KEY_POOL + list(range(100, 160)), "items": KEY_POOL}
    for _ in range(6):
        inputs = {name: _keys(rng.choice(pools[name], 6)) for name in sizes}
        inputs["users_bag"] = _keys(rng.choice(pools["users"], (6, 3)))
        stacked(inputs, training=True)
        alone(inputs, training=True)
        for name in sizes:
            for ours, theirs in zip(stacked.id_map(name), alone.id_map(name)):
                np.testing.assert_array_equal(ours, theirs)
    outputs = stacked(inputs)
    tables = {name: to_numpy(table) for name, table in stacked.get_embedding_tables().items()}
    for feature, table_name in (*((name, name) for name in sizes), ("users_bag", "users")):
        resident = dict(zip(*(a.tolist() for a in stacked.id_map(table_name))))
        keys = np.asarray(inputs[feature]).reshape(len(inputs[feature]), -1).tolist()
        rows = [[tables[table_name][resident[k]] if k in resident else np.zeros(3, "float32") for k in bag]
                for bag in keys]
        np.testing.assert_allclose(to_numpy(outputs[feature]), np.mean(rows, axis=1), rtol=1e-6, atol=1e-7)
    # A file holds the stack's one map: the loaded layer has every table's keys and rows.
    symbolic = {name: keras.Input(batch_shape=x.shape, dtype=str(x.dtype), name=name) for name, x in inputs.items()}
    keras.Model(symbolic, stacked(symbolic)).save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras").layers[-1]
    for name in sizes:
        for ours, theirs in zip(stacked.id_map(name), loaded.id_map(name)):
            np.testing.assert_array_equal(ours, theirs)
    for name, output in loaded(inputs).items():
        np.testing.assert_array_equal(to_numpy(output), to_numpy(outputs[name]))


def test_dynamic_tables_stack_only_when_a_freed_row_is_drawn_alike():
    """Tables differing in `dynamic` or dimension, or drawn by an initializer whose rows
    depend on the table's size, take stacks of their own."""
    def table(name, dim=3, initializer="uniform", dynamic=True):
        return kee.TableConfig(name, 20, dim, initializer=initializer, optimizer="adagrad", dynamic=dynamic)

    tables = [table("a"), table("b"), table("lru", dynamic=kee.DynamicIds(eviction="lru")), table("wide", dim=4),
              table("glorot", initializer="glorot_uniform"), table("static", dynamic=None)]
    layer = kee.DistributedEmbedding({t.name: kee.FeatureConfig(t.name, t, (2,), (2, t.embedding_dim))
                                      for t in tables})
    stack_of = {name: index for name, (index, _) in layer._stack_of.items()}
    assert stack_of["a"] == stack_of["b"]
    assert len({stack_of[name] for name in ("a", "lru", "wide", "glorot", "static")}) == 5


def _murmur_finalizer(x):
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x85EBCA6B)
    x = x ^ (x >> np.uint32(13))
    x = x * np.uint32(0xC2B2AE35)
    return x ^ (x >> np.uint32(16))


def test_a_key_hashes_alike_on_every_backend_and_key_dtype():
    """Buckets follow murmur3's finalizer over a key's two 32-bit words, computed here in
    numpy's uint32 arithmetic: a key map saved on one backend finds its keys on another."""
    from keras_embed_ext import key_hash

    keys = np.array([0, 1, -1, 12345, -2**31, 2**31 - 1] + ([BIG, -BIG, 7 * BIG + 3] if _wide_keys() else []))
    with np.errstate(over="ignore"):
        low, high = (keys & 0xFFFFFFFF).astype(np.uint32), (keys >> 32).astype(np.int64).astype(np.uint32)
        for seed_index, seed in enumerate((0x2545F491, 0x6A09E667)):
            expected = _murmur_finalizer(_murmur_finalizer(low ^ np.uint32(seed)) ^ high) & np.uint32(0x7FFFFFFF)
            np.testing.assert_array_equal(to_numpy(key_hash.hash_keys(_keys(keys), seed_index)), expected)
            if np.all(np.abs(keys) < 2**31):  # int32 keys: the same hash
                np.testing.assert_array_equal(to_numpy(key_hash.hash_keys(keys.astype("int32"), seed_index)), expected)
            for count in (1, 7, 2**15, 250_000, 2**31 - 1):  # a key's bucket among `count`
                hashed = key_hash.hash_keys(_keys(keys), seed_index)
                np.testing.assert_array_equal(to_numpy(key_hash.remainder(hashed, count)), expected % count)


if BACKEND == "jax":

    @pytest.mark.parametrize("eviction", ["lru", "lfu"])
    def test_a_jitted_training_step_copies_no_per_row_array(eviction):
        """keras donates the state to its jitted step, so the table, its optimizer's
        rows and the key map are updated in place: no array with a row per table row
        (or per bucket) is copied whole, which would make a step cost the table's size."""
        import re

        import jax

        capacity = 4099  # no other axis of the step has as many entries
        model = keras.Sequential([keras.Input((4,), dtype="int32"),
                                  kee.Embedding(capacity, 8, dynamic=kee.DynamicIds(eviction=eviction), combiner="sum"),
                                  keras.layers.Dense(1)])
        model.compile("adam", "mse")
        keys = np.random.default_rng(0).integers(-2**30, 2**30, (32, 4)).astype("int32")
        targets = np.ones((32, 1), "float32")
        model.train_on_batch(keys, targets)
        state = model._get_jax_state(trainable_variables=True, non_trainable_variables=True,
                                     optimizer_variables=True, metrics_variables=True, purge_model_variables=False)
        hlo = jax.jit(model.train_step, donate_argnums=0).lower(state, (keys, targets, None)).compile().as_text()
        buckets = -(-capacity // 16) + 1  # the key map's (buckets + 1, 16) arrays
        copies = [line.strip() for line in hlo.splitlines()
                  if " copy(" in line and re.search(rf"\[({capacity}|{buckets}|{buckets * 16})\b", line)]
        assert not copies, copies

    @settings(deadline=None, max_examples=30)
    @given(ids=st.lists(st.integers(0, 40), min_size=1, max_size=200), seed=st.integers(0, 2**16))
    def test_fresh_rows_are_one_draw_per_renewed_row_in_the_fewest_rows_drawn(ids, seed):
        """Each renewed row's occurrences read one drawn row, distinct rows read distinct
        draws, and the draw is the smallest of n / 64, n / 8 and n rows that holds them."""
        import jax.numpy as jnp

        from keras_embed_ext.row_backends import _fresh_rows_jax

        ids = np.array(ids)
        stale_ids = np.random.default_rng(seed).random(41) < 0.5
        first = np.array([ids.tolist().index(i) for i in ids], "int32")
        sizes_drawn = []

        def draw(size):
            sizes_drawn.append(size)
            return jnp.tile(jnp.arange(size, dtype="float32")[:, None] + 1000 * size, (1, 3))

        drawn, at = _fresh_rows_jax(jnp.asarray(stale_ids[ids]), jnp.asarray(first), draw, 3)
        rows = np.asarray(drawn)[np.asarray(at)]  # as the training lookup reads them
        renewed = sorted({int(i) for i in ids if stale_ids[i]})
        n = ids.size
        wanted = next((size for size in sorted({-(-n // 64), -(-n // 8), n}) if size >= len(renewed)), None)
        assert rows.shape == (n, 3)
        draws = {int(i): rows[position] for position, i in enumerate(ids) if stale_ids[i]}
        for position, i in enumerate(ids):
            if stale_ids[i]:
                np.testing.assert_array_equal(rows[position], draws[int(i)])  # repeats read one draw
        values = [row[0] for row in draws.values()]
        assert len(set(values)) == len(renewed)  # distinct rows, distinct draws
        assert all(value // 1000 == wanted for value in values)  # from the draw of the wanted size

"""What `keras.ops` cannot say, or says measurably slower: is this call traced, where the
table lives, and the backends' own gathers and row arithmetic."""

import contextlib
import contextvars
import functools
import operator
import sys

import keras


def is_traced(x) -> bool:
    """Whether `x` belongs to a traced or compiled function (no concrete values)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return not tf.executing_eagerly()
    if backend == "jax":
        import jax

        return isinstance(x, jax.core.Tracer)
    if backend == "torch":
        import torch

        if torch.compiler.is_compiling() or x.device.type == "meta":
            return True
        # A compiled function that Dynamo runs eagerly (past its recompile limit, or
        # after a graph break) still has Dynamo's frame callback installed.
        from torch._C._dynamo.eval_frame import get_eval_frame_callback

        return get_eval_frame_callback() is not None
    return False


def _compiled_by_xla() -> bool:
    """Whether TensorFlow is tracing a function that XLA compiles (eager: no)."""
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util

    return not tf.executing_eagerly() and control_flow_util.GraphOrParentsInXlaContext(
        tf.compat.v1.get_default_graph()
    )


def to_host(x):
    """The values of eager tensor `x` as a numpy array, for reading: on TensorFlow and
    on torch's CPU without the copy that `keras.ops.convert_to_numpy` makes."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return x.numpy()
    if backend == "torch":
        import torch

        if x.device.type == "cpu" and x.dtype != torch.bfloat16:  # numpy has no bfloat16
            return x.detach().numpy()
    return keras.ops.convert_to_numpy(x)


def take_rows(table, ids):
    """`table[ids]` along axis 0, for a variable or tensor `table` and ids known to be in range.

    `keras.ops.take` first wraps negative ids, which the validated ids never are,
    and on TensorFlow reads the whole variable before gathering. A variable that a
    sparse update (an optimizer step on `IndexedSlices`) has touched is copied in
    full by every such read; `sparse_read` reads only the rows. It is what
    `tf.gather` calls on axis 0, without its Python checks in every eager call.
    """
    backend = keras.backend.backend()
    if isinstance(table, keras.Variable):
        table = table.value
    if backend == "torch":
        import torch

        if table.ndim == 2:
            return torch.nn.functional.embedding(ids, table)
        rows = torch.index_select(table, 0, ids.reshape(-1))
        return rows.reshape((*ids.shape, *table.shape[1:]))
    if backend == "tensorflow":
        import tensorflow as tf

        if isinstance(table, tf.Variable):
            if table.trainable and _SUMMING_REPEATS.get():
                return _gather_summing_repeats(replica_local(table), ids)
            return replica_local(table).sparse_read(ids)
        return tf.raw_ops.GatherV2(params=table, indices=ids, axis=0)
    if backend == "jax":
        import jax.numpy as jnp

        return jnp.take(table, ids, axis=0, mode="clip")
    return keras.ops.take(table, ids, axis=0)


def take_elements(table, index):
    """`table.reshape(-1)[index]` of a 2-D variable or tensor, reading only those
    elements (on TensorFlow, a reshaped variable is read, and copied, in full)."""
    if isinstance(table, keras.Variable):
        table = table.value
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if isinstance(table, tf.Variable) and not _compiled_by_xla():  # XLA has no ResourceGatherNd
            width = table.shape[1]
            return tf.raw_ops.ResourceGatherNd(resource=replica_local(table).handle, dtype=table.dtype,
                                               indices=tf.stack([index // width, index % width], axis=-1))
    return keras.ops.take(keras.ops.reshape(table, (-1,)), index)


def replica_local(variable):
    """A TensorFlow variable, or under a `tf.distribute` strategy the copy of a
    mirrored variable on this replica's device, whose reads and sparse updates TensorFlow
    takes there (a `MirroredVariable` has no `sparse_read` in a replica context)."""
    local = getattr(variable, "_get_on_device_or_primary", None)
    return variable if local is None else local()


_SUMMING_REPEATS = contextvars.ContextVar("summing_repeats", default=False)


@contextlib.contextmanager
def gradients_summed_per_id(enabled):
    """Within it, a TensorFlow gather from a trainable variable (`take_rows`) has a
    gradient with one summed slice per distinct id; the layer turns it on in training."""
    token = _SUMMING_REPEATS.set(bool(enabled))
    try:
        yield
    finally:
        _SUMMING_REPEATS.reset(token)


def _gather_summing_repeats(variable, ids):
    """`variable.sparse_read(ids)`, whose gradient sums the slices of a repeated id.

    TensorFlow's own gradient of a gather has a slice per occurrence, and keras'
    Adagrad and Adam square each slice of a repeated id (the sum of squares, where the
    dense gradient gives the square of the sum). Here each distinct id is read once
    and its rows are copied out to its occurrences, so the gradient of the read has
    one slice per id (zeros at row 0 pad it to a static count, which XLA needs).
    """
    import tensorflow as tf

    flat_ids = tf.reshape(ids, [-1])
    count = tf.size(flat_ids)
    order = tf.argsort(flat_ids, stable=True)
    sorted_ids = tf.gather(flat_ids, order)
    first = tf.concat([[True], sorted_ids[1:] != sorted_ids[:-1]], axis=0)
    sorted_segment = tf.cumsum(tf.cast(first, "int32")) - 1
    distinct = tf.maximum(tf.math.unsorted_segment_max(sorted_ids, sorted_segment, count), 0)
    segment = tf.gather(sorted_segment, tf.math.invert_permutation(order))
    rows = tf.gather(variable.sparse_read(distinct), segment)
    return tf.reshape(rows, tf.concat([tf.shape(ids), tf.shape(rows)[1:]], axis=0))


def split_rows(rows, sizes):
    """`rows` split along axis 0 into parts of `sizes` (ints, or on TensorFlow scalar
    tensors of a batch size known only when run)."""
    if all(isinstance(size, int) for size in sizes):
        bounds = [sum(sizes[: i + 1]) for i in range(len(sizes) - 1)]
        return keras.ops.split(rows, bounds, axis=0)
    import tensorflow as tf

    return tf.split(rows, tf.stack(sizes), axis=0)


def weighted_bag_sum(table, ids, weights):
    """`sum over l of weights[..., l] * table[ids[..., l]]`: `(..., D)` for `ids (..., L)`
    known to be in range.

    torch's `embedding_bag` adds the rows up as it reads them, where a gather first
    writes all `(..., L, D)` rows. Under `jax.jit`, XLA fuses a sum of `L` gathers into
    one pass, where it writes the gathered rows before reducing them; the compile time
    grows with `L`, so it is written out up to `L = 64` (figures: docs/performance.md).
    """
    backend = keras.backend.backend()
    bag_size = ids.shape[-1] if ids.ndim > 0 else None
    if backend == "jax" and is_traced(ids) and bag_size and bag_size <= 64:
        weights = keras.ops.cast(weights, table.dtype)
        weighted = (take_rows(table, ids[..., i]) * weights[..., i, None] for i in range(bag_size))
        return functools.reduce(operator.add, weighted)
    if backend == "torch" and bag_size:
        import torch

        table = table.value if isinstance(table, keras.Variable) else table
        bags = ids.reshape(-1, ids.shape[-1])
        sums = torch.nn.functional.embedding_bag(
            bags, table, mode="sum", per_sample_weights=weights.reshape(bags.shape).to(table.dtype)
        )
        return sums.reshape((*ids.shape[:-1], table.shape[-1]))
    rows = take_rows(table, ids)
    return keras.ops.sum(rows * keras.ops.expand_dims(keras.ops.cast(weights, rows.dtype), -1), axis=-2)


def reshape(x, shape):
    """`keras.ops.reshape(x, shape)`; on torch the tensor's own, without keras' flattening
    of `shape` to look for symbolic tensors in every eager call."""
    if keras.backend.backend() == "torch":
        return x.reshape(shape)
    return keras.ops.reshape(x, shape)


_TORCH_IN_PLACE = {"add": "add_", "subtract": "sub_", "multiply": "mul_", "divide": "div_"}


def in_place(op, fresh, other):
    """`keras.ops.<op>(fresh, other)`; on torch written into `fresh`, a float tensor just made.

    On a CPU each new output of a row-sized op costs fresh pages from the allocator,
    often more than the arithmetic itself. `fresh` keeps its shape and dtype.
    """
    if keras.backend.backend() == "torch" and fresh.dtype == other.dtype:
        if _broadcasts_into(other.shape, fresh.shape):
            return getattr(fresh, _TORCH_IN_PLACE[op])(other)
    return getattr(keras.ops, op)(fresh, other)


def _broadcasts_into(shape, target):
    """Whether `shape` broadcasts to `target` unchanged, in plain Python:
    `torch.broadcast_shapes` costs more than the op it guards."""
    return len(shape) <= len(target) and all(
        size in (1, target_size) for size, target_size in zip(reversed(shape), reversed(target))
    )


def add_matmul(fresh, a, b):
    """`fresh + a @ b` for `fresh (..., D)`, `a (..., r)`, `b (r, D)`; in place on torch.

    Under `torch.compile`, a rank up to 16 is written as `r` multiply-adds, which
    inductor fuses with the gather into one pass over the rows; `addmm` writes a new
    tensor. Larger ranks keep the matmul, faster there.
    """
    if keras.backend.backend() == "torch" and fresh.dtype == a.dtype == b.dtype:
        import torch

        if torch.compiler.is_compiling() and b.shape[0] <= 16:
            for k in range(b.shape[0]):
                fresh = fresh + a[..., k : k + 1] * b[k]
            return fresh
        if fresh.is_contiguous():
            fresh.view(-1, fresh.shape[-1]).addmm_(a.reshape(-1, a.shape[-1]), b)
            return fresh
    return fresh + keras.ops.matmul(a, b)


def take_int4_rows(packed, ids=None):
    """Signed 4-bit values as int8 of the rows `ids` (all rows for `None`) of a table
    of bytes packed two per byte along its last axis, low nibble first.

    XLA unpacks int4 natively: on JAX the rows are gathered as int32 words and
    bitcast to int4, faster than shifting the gathered bytes. Bitcasting the gathered
    bytes is slower, and XLA rejects two bitcasts in a row, so a whole table takes the
    generic path. TensorFlow has no int4 type; there an XLA-compiled lookup (`Fused`,
    or the caller's) shifts the whole table, which XLA fuses into the gather, so only
    the gathered values are computed, each from its byte in the table; any other
    TensorFlow graph shifts the gathered bytes.

    The bitcast is for JAX's traced calls, where XLA fuses it into the gather: run op
    by op, or compiled on its own, it is a pass over the whole table in every call.
    Eager calls shift the gathered bytes. So do ids of a shape known
    only symbolically (an exported signature): exporters reject a bitcast of dynamic
    shape, and ONNX has no bitcast.
    """
    table = packed.value if isinstance(packed, keras.Variable) else packed
    width = table.shape[-1]
    backend = keras.backend.backend()
    if ids is not None and backend == "tensorflow" and _compiled_by_xla():
        return take_rows(unpack_int4(table), ids)
    if (
        ids is not None and backend == "jax" and sys.byteorder == "little" and width % 4 == 0
        and is_traced(ids) and all(isinstance(size, int) for size in ids.shape)
    ):
        import jax.numpy as jnp
        from jax import lax

        words = lax.bitcast_convert_type(table.reshape(*table.shape[:-1], width // 4, 4), jnp.int32)
        nibbles = lax.bitcast_convert_type(jnp.take(words, ids, axis=0, mode="clip"), jnp.int4)
        return nibbles.reshape((*ids.shape, 2 * width)).astype(jnp.int8)
    return unpack_int4(table if ids is None else take_rows(table, ids))


def unpack_int4(packed, axis=-1):
    """Signed 4-bit values as int8 from int8 bytes packed two per byte along `axis`
    (-1 or 0), low nibble first.

    Along the first axis, packed row `i` gives whole rows `2i` (low nibbles) and
    `2i + 1`: interleaving them copies contiguous rows. Along the last, on torch, the
    shifts run on int16 in place and each (low, high) pair is written as one
    little-endian int16 whose bytes are read as int8, where stacking on a new last
    axis is a strided copy.
    """
    if axis == 0:
        return keras.ops.reshape(keras.ops.stack(_nibbles(packed), axis=1), (-1, *packed.shape[1:]))
    if keras.backend.backend() == "torch" and sys.byteorder == "little":
        import torch

        shape = (*packed.shape[:-1], 2 * packed.shape[-1])
        if packed.numel() == 0:  # empty results of scalar shifts can have stride 0
            return packed.new_empty(shape)
        wide = packed.to(torch.int16, memory_format=torch.contiguous_format)  # any strides
        low = torch.bitwise_left_shift(wide, 12).bitwise_right_shift_(12).bitwise_and_(0xFF)
        pairs = low.bitwise_or_(wide.bitwise_right_shift_(4).bitwise_left_shift_(8))
        return pairs.view(torch.int8).reshape(shape)
    shape = keras.ops.shape(packed)
    pairs = keras.ops.stack(_nibbles(packed), axis=-1)
    return keras.ops.reshape(pairs, (*shape[:-1], 2 * shape[-1]))


def _nibbles(packed):
    """`(low, high)`: the signed 4-bit values of int8 bytes as int8 arrays of their shape."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.bitwise_left_shift(packed, 4).bitwise_right_shift_(4), torch.bitwise_right_shift(packed, 4)
    # Arithmetic on non-negative integers rather than bitwise ops, which ONNX
    # exporters lack or translate as logical shifts (or a division that truncates):
    # `byte + 128 = 16 * (high + 8) + low`, with `low` in [0, 16).
    shifted = keras.ops.add(keras.ops.cast(packed, "int32"), 128)
    high = keras.ops.floor_divide(shifted, 16)
    low = keras.ops.subtract(shifted, keras.ops.multiply(high, 16))
    return keras.ops.cast(keras.ops.where(low > 7, low - 16, low), "int8"), keras.ops.cast(high - 8, "int8")


def assign_here(variable, value):
    """`variable.assign(value)`; under a `tf.distribute` strategy, of this replica's copy
    (each replica computes the same value)."""
    if keras.backend.backend() == "tensorflow":
        return replica_local(variable.value).assign(value)
    return variable.assign(value)


def scatter_into(variable, rows, values):
    """`variable[rows] = values` in place: the rows alone are written (a whole copy on
    TensorFlow's `tensor_scatter_nd_update`, not here). Rows listed twice must get
    equal values, or be scratch. For a 2-D variable and 1-D values, `rows` number its
    elements, row-major."""
    _write_rows(variable, rows, values, add=False)


def add_into(variable, rows, values):
    """`variable[rows] += values` in place, a row listed twice getting both."""
    _write_rows(variable, rows, values, add=True)


def _write_rows(variable, rows, values, add):
    backend = keras.backend.backend()
    values = keras.ops.cast(values, variable.dtype)
    elements = len(variable.shape) == 2 and len(values.shape) == 1
    if backend == "tensorflow":
        import tensorflow as tf

        local = replica_local(variable.value)
        if elements:
            width = variable.shape[1]
            index = tf.stack([rows // width, rows % width], axis=-1)
            return local.scatter_nd_add(index, values) if add else local.scatter_nd_update(index, values)
        slices = tf.IndexedSlices(values, rows)
        return local.scatter_add(slices) if add else local.scatter_update(slices)
    if backend == "torch":
        import torch

        with torch.no_grad():
            target, index = variable.value, rows.long()
            target = target.view(-1) if elements else target
            return target.index_add_(0, index, values) if add else target.index_copy_(0, index, values)
    value = variable.value.reshape(-1) if elements else variable.value
    value = value.at[rows].add(values) if add else value.at[rows].set(values)
    variable.assign(value.reshape(variable.shape))


def group_by_bucket_then_key(buckets, keys):
    """`(order, position)`: `take(keys, order)` is sorted by `buckets`, then `keys`, so a
    key's repeats are side by side; `position[i]` is a sorted position of key `i` (for
    a repeated key, of any of its repeats: what is read there is the same for each).

    On JAX, for `n` keys with `n * n < 2**31`, each key's rank among the keys and its
    bucket's rank among the buckets make one int32 per key, sorted alone: XLA's CPU sort
    of one array is several times faster than of several, and a rank's repeats need no
    order among them. Elsewhere, and beyond that size, a sort by both (JAX) or two
    stable sorts (key, then bucket), faster there than one of a pair."""
    ops = keras.ops
    n = keys.shape[0]
    if keras.backend.backend() == "jax" and n is not None and n * n < 2**31:
        import jax
        import jax.numpy as jnp

        def rank(x):
            return jnp.searchsorted(jax.lax.sort(x), x, side="left", method="scan").astype("int32")

        key_rank = rank(keys)
        group = rank(buckets) * n + key_rank
        sorted_groups = jax.lax.sort(group)
        # A key of each rank (repeats write the same rank), read back from the sorted ranks.
        key_of_rank = jnp.zeros((n,), "int32").at[key_rank].set(jnp.arange(n, dtype="int32"))
        order = key_of_rank[sorted_groups % n]
        return order, jnp.searchsorted(sorted_groups, group, side="left", method="scan").astype("int32")
    if keras.backend.backend() == "jax":
        import jax

        order = jax.lax.sort((buckets, keys, jax.numpy.arange(n, dtype="int32")), num_keys=2)[2]
    else:
        by_key = ops.argsort(keys)
        order = ops.take(by_key, ops.argsort(ops.take(buckets, by_key)))
    positions = ops.arange(ops.shape(keys)[0], dtype="int32")
    return order, ops.scatter_update(ops.zeros_like(positions), ops.expand_dims(order, -1), positions)


def kth_smallest(x, k):
    """`sort(x, axis=-1)[i, k[i]]` of `x (n, m)` with distinct values in each row. On JAX
    each value's rank is counted (m * m comparisons that XLA fuses, 10x faster than its
    CPU sort); elsewhere by a sort."""
    ops = keras.ops
    if keras.backend.backend() == "jax":
        below = ops.sum(ops.cast(ops.expand_dims(x, 1) < ops.expand_dims(x, 2), "int32"), axis=-1)
        return ops.max(ops.where(below == ops.expand_dims(k, -1), x, ops.min(x)), axis=-1)
    return ops.take_along_axis(ops.sort(x, axis=-1), ops.expand_dims(k, -1), axis=-1)[:, 0]


def compress(x, mask):
    """The entries of `x` where `mask` holds (a dynamic shape: TensorFlow and torch)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.boolean_mask(x, mask)
    return x[mask]


def on_device_of(variable, ids, gather):
    """`gather(ids)` run where `variable` lives, the result moved back to where `ids` were.

    A table built under `keras.device("cpu:0")` stays in host memory: its rows are
    gathered there and only the rows move.
    """
    moved = to_device_of(ids, variable)
    if moved is ids:
        return gather(ids)
    return to_device_of(gather(moved), ids)


def to_device_of(x, reference):
    """`x` moved to the device of `reference` (a tensor or variable) when they differ.

    TensorFlow places ops by itself; under jax.jit the placement is XLA's, so on
    JAX this applies to eager arrays on one device only.
    """
    backend = keras.backend.backend()
    reference = getattr(reference, "value", reference)
    if backend == "torch":
        return x if x.device == reference.device else x.to(reference.device)
    if backend == "jax":
        import jax

        if isinstance(x, jax.core.Tracer) or isinstance(reference, jax.core.Tracer):
            return x
        devices = reference.devices()
        if len(devices) != 1 or x.devices() == devices:
            return x  # same place, or a sharded table: the sharding decides
        return jax.device_put(x, next(iter(devices)))
    return x


def rows_layout(variable, rank, sharded=True):
    """Under a `keras.distribution`, the layout of a rank-`rank` array beside `variable`:
    with `sharded`, its first axis sharded as the variable's rows are and the others
    replicated; without, replicated. `None` without a distribution."""
    layout = getattr(variable, "_layout", None)
    if keras.distribution.distribution() is None or not isinstance(layout, keras.distribution.TensorLayout):
        return None
    axes = (layout.axes[0] if sharded else None, *(None,) * (rank - 1)) if rank else ()
    return keras.distribution.TensorLayout(axes, layout.device_mesh)


def on_accelerator(x) -> bool:
    """Whether tensor or variable `x` lives on a GPU or another accelerator. Under
    jax.jit, where arrays have no place, JAX's default backend decides; TensorFlow's
    symbolic tensors likewise ask whether a GPU is visible."""
    backend = keras.backend.backend()
    x = getattr(x, "value", x)
    if backend == "torch":
        return x.device.type not in ("cpu", "meta")
    if backend == "jax":
        import jax

        if isinstance(x, jax.core.Tracer):
            return jax.default_backend() != "cpu"
        return any(device.platform != "cpu" for device in x.devices())
    import tensorflow as tf

    device = getattr(x, "device", "") or ""
    return ":CPU:" not in device.upper() if device else bool(tf.config.list_logical_devices("GPU"))


class Fused:
    """`fn` compiled by XLA on TensorFlow, as is elsewhere.

    TensorFlow runs each op of a decode, of the LoRA product or of a bag as its own
    pass over memory, where XLA fuses them (figures: docs/performance.md), in eager
    calls and in graphs that XLA does not compile (keras' `fit` on a CPU). Inside a
    function XLA compiles, and in a graph that `model.export` traces, `fn` runs
    inline. JAX is compiled by its caller and torch runs eagerly.

    The variables `fn` reads are arguments of the compiled function, not captures,
    and `key` holds every other value its trace depends on: layers and states with
    the same key and shapes share one compiled function. TensorFlow keeps each
    executable XLA compiles for as long as the process runs, so one function per
    layer, or per `enable_lora`, would grow memory with each. A compiled function is
    traced per rank of the arguments (and whether gradients are summed per id): one
    for several ranks would take tensors of unknown rank. A plain object:
    TensorFlow's tracking would save a `tf.function` held by the layer.
    """

    def __init__(self, fn):
        self.fn = fn
        self.compiled = None  # the function of the latest call, for inspection
        self.variables = ()  # and the variables it was given
        self._concrete = {}

    def __call__(self, key, variables, *args):
        if keras.backend.backend() != "tensorflow":
            return self.fn(*args)
        import tensorflow as tf

        if (_compiled_by_xla() or tf.distribute.has_strategy()
                or (not tf.executing_eagerly() and _traced_by_keras_export())):
            return self.fn(*args)
        ranks = (*(getattr(arg, "ndim", None) for arg in args), _SUMMING_REPEATS.get())
        # The variables' shapes too: a trace reads them as static shapes, and TensorFlow's
        # relaxed retracing would hand one table's trace another table's variables.
        shapes = tuple(tuple(v.shape) for v in variables)
        shared_key = (getattr(self.fn, "__qualname__", None) or self.fn.func.__qualname__, key, ranks, shapes)
        if shared_key not in _COMPILED:
            _COMPILED[shared_key] = tf.function(_call_current, jit_compile=True, reduce_retracing=True)
        # The tf.Variable under each keras Variable: TensorFlow traces a keras Variable
        # as a tensor (a read of the whole table, and its reads in `fn` captures).
        self.compiled = _COMPILED[shared_key]
        self.variables = tuple(getattr(v, "_value", v) for v in variables)
        token = _CURRENT_FN.set(self.fn)
        try:
            # Calling the concrete function skips matching the arguments to a trace.
            signature = (shared_key, *(_spec(v) for v in self.variables), *(_spec(arg) for arg in args))
            concrete = self._concrete.get(signature)
            if concrete is None:
                concrete = self._concrete[signature] = self.compiled.get_concrete_function(self.variables, *args)
            return concrete(self.variables, *args)
        finally:
            _CURRENT_FN.reset(token)


def _traced_by_keras_export() -> bool:
    """Whether `model.export` is tracing this call: its graph then runs the lookup's
    ops itself, which exporters (tf2onnx) can convert, where an XLA call they cannot.
    Read from the stack, once per trace."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith("keras.src.export."):
            return True
        frame = frame.f_back
    return False


_COMPILED = {}
_CURRENT_FN = contextvars.ContextVar("fused_fn")


def _spec(x):
    if isinstance(x, (list, tuple)):
        return tuple(_spec(item) for item in x)
    return (tuple(x.shape), x.dtype) if hasattr(x, "shape") else x


def _call_current(variables, *args):
    """The traced body of a `Fused` function: the calling layer's `fn`, which reads
    exactly `variables` (passed so that the trace takes them as arguments)."""
    del variables
    return _CURRENT_FN.get()(*args)

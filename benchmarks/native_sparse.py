"""The sparse training step a user of each backend would write without keras: the
contender of `bench_train.py --sparse-optimizer`.

The model is that of the benchmark: bags of ids -> mean of their rows -> a dense
unit -> squared error. Only the looked-up rows of the table are updated, with the
backend's own sparse machinery; the dense unit takes plain SGD.
"""

import numpy as np

LR = 0.01


def step_jax(table, ids, target, optimizer):
    """`table[ids]`'s gradient, its repeated ids summed, and a donated in-place update."""
    import jax
    import jax.numpy as jnp

    vocab, dim = table.shape
    flat = jnp.asarray(ids.reshape(-1))
    state = {"table": jnp.asarray(table), "w": jnp.zeros((dim, 1)), "t": jnp.zeros((), "int32")}
    if optimizer in ("adagrad", "adam"):
        state["s1"] = jnp.zeros_like(state["table"])
    if optimizer == "rowwise_adagrad":
        state["s1"] = jnp.zeros((vocab,))
    if optimizer == "adam":
        state["s2"] = jnp.zeros_like(state["table"])

    def loss(rows, w):
        bags = rows.reshape(*ids.shape, dim).mean(axis=1)
        return ((bags @ w - target) ** 2).mean()

    def update(state):
        rows, inverse = jnp.unique(flat, return_inverse=True, size=flat.shape[0], fill_value=vocab)
        gathered = state["table"][flat]
        row_grads, w_grad = jax.grad(loss, argnums=(0, 1))(gathered, state["w"])
        grads = jax.ops.segment_sum(row_grads, inverse.reshape(-1), flat.shape[0])
        new, t = dict(state, w=state["w"] - LR * w_grad), state["t"] + 1
        current = state["table"].at[rows].get(mode="fill", fill_value=0)
        if optimizer == "sgd":
            values = current - LR * grads
        elif optimizer == "adagrad":
            acc = state["s1"].at[rows].get(mode="fill", fill_value=0) + grads**2
            new["s1"] = state["s1"].at[rows].set(acc, mode="drop")
            values = current - LR * grads / jnp.sqrt(acc + 1e-7)
        elif optimizer == "rowwise_adagrad":
            acc = state["s1"].at[rows].get(mode="fill", fill_value=0) + (grads**2).mean(-1)
            new["s1"] = state["s1"].at[rows].set(acc, mode="drop")
            values = current - LR * grads / (jnp.sqrt(acc)[:, None] + 1e-8)
        else:
            m = 0.9 * state["s1"].at[rows].get(mode="fill", fill_value=0) + 0.1 * grads
            v = 0.999 * state["s2"].at[rows].get(mode="fill", fill_value=0) + 0.001 * grads**2
            new["s1"], new["s2"] = state["s1"].at[rows].set(m, mode="drop"), state["s2"].at[rows].set(v, mode="drop")
            alpha = LR * jnp.sqrt(1 - 0.999**t) / (1 - 0.9**t)
            values = current - alpha * m / (jnp.sqrt(v) + 1e-7)
        new["table"], new["t"] = state["table"].at[rows].set(values, mode="drop"), t
        return new

    update = jax.jit(update, donate_argnums=0)
    holder = [state]

    def step():
        holder[0] = update(holder[0])
        return holder[0]["table"]

    return step


def step_torch(table, ids, target, optimizer):
    """`nn.EmbeddingBag(sparse=True)` with torch's sparse optimizers: `SGD`, `Adagrad`
    (for both Adagrads: torch has no row-wise one) and `SparseAdam`."""
    import torch

    bag = torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(table), freeze=False, mode="mean", sparse=True)
    dense = torch.nn.Linear(table.shape[1], 1, bias=False)
    sparse_optimizer = {
        "sgd": lambda p: torch.optim.SGD(p, lr=LR),
        "adagrad": lambda p: torch.optim.Adagrad(p, lr=LR),
        "rowwise_adagrad": lambda p: torch.optim.Adagrad(p, lr=LR),
        "adam": lambda p: torch.optim.SparseAdam(p, lr=LR),
    }[optimizer](list(bag.parameters()))
    dense_optimizer = torch.optim.SGD(dense.parameters(), lr=LR)
    ids_t, target_t = torch.from_numpy(ids).long(), torch.from_numpy(target)

    def step():
        sparse_optimizer.zero_grad()
        dense_optimizer.zero_grad()
        loss = ((dense(bag(ids_t)) - target_t) ** 2).mean()
        loss.backward()
        sparse_optimizer.step()
        dense_optimizer.step()
        return loss

    return step


def step_tensorflow(table, ids, target, optimizer):
    """The `IndexedSlices` gradient of a gather, its repeated ids summed, applied with
    TensorFlow's sparse kernels (`ResourceSparseApplyAdagradV2`, `scatter_sub`) or, for
    lazy Adam and row-wise Adagrad, scatters of rows computed from `sparse_read`s."""
    import tensorflow as tf

    vocab, dim = table.shape
    weights = tf.Variable(table)
    w = tf.Variable(tf.zeros((dim, 1)))
    slots = {}
    if optimizer in ("adagrad", "adam"):
        slots["s1"] = tf.Variable(tf.zeros_like(table))
    if optimizer == "rowwise_adagrad":
        slots["s1"] = tf.Variable(tf.zeros((vocab,)))
    if optimizer == "adam":
        slots["s2"] = tf.Variable(tf.zeros_like(table))
    t = tf.Variable(0.0)
    ids_t, target_t = tf.constant(ids), tf.constant(target)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            rows = tf.nn.embedding_lookup(weights, ids_t)
            loss = tf.reduce_mean((tf.reduce_mean(rows, axis=1) @ w - target_t) ** 2)
        table_grad, w_grad = tape.gradient(loss, [weights, w])
        w.assign_sub(LR * w_grad)
        distinct, position = tf.unique(table_grad.indices)
        grads = tf.math.unsorted_segment_sum(table_grad.values, position, tf.size(distinct))
        if optimizer == "sgd":
            weights.scatter_sub(tf.IndexedSlices(LR * grads, distinct))
        elif optimizer == "adagrad":
            tf.raw_ops.ResourceSparseApplyAdagradV2(
                var=weights.handle, accum=slots["s1"].handle, lr=LR, epsilon=1e-7, grad=grads, indices=distinct
            )
        elif optimizer == "rowwise_adagrad":
            acc = slots["s1"].sparse_read(distinct) + tf.reduce_mean(grads**2, -1)
            slots["s1"].scatter_update(tf.IndexedSlices(acc, distinct))
            weights.scatter_sub(tf.IndexedSlices(LR * grads / (tf.sqrt(acc)[:, None] + 1e-8), distinct))
        else:
            t.assign_add(1.0)
            m = 0.9 * slots["s1"].sparse_read(distinct) + 0.1 * grads
            v = 0.999 * slots["s2"].sparse_read(distinct) + 0.001 * grads**2
            slots["s1"].scatter_update(tf.IndexedSlices(m, distinct))
            slots["s2"].scatter_update(tf.IndexedSlices(v, distinct))
            alpha = LR * tf.sqrt(1 - 0.999**t) / (1 - 0.9**t)
            weights.scatter_sub(tf.IndexedSlices(alpha * m / (tf.sqrt(v) + 1e-7), distinct))
        return loss

    return step


def native_step(backend, table, ids, target, optimizer):
    return {"jax": step_jax, "torch": step_torch, "tensorflow": step_tensorflow}[backend](
        table, np.asarray(ids, "int32"), np.asarray(target, "float32"), optimizer
    )

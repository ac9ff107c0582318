"""The low-rank adapter `(alpha / rank) * A @ B` of a table, used gather-first."""

from keras import initializers
from keras import ops

from keras_embed_ext.arguments import check_lora_alpha
from keras_embed_ext.arguments import is_positive_int
from keras_embed_ext.backends.arithmetic import add_matmul
from keras_embed_ext.backends.devices import on_device_of
from keras_embed_ext.backends.devices import to_device_of
from keras_embed_ext.backends.rows import take_rows
from keras_embed_ext.ids import zero_invalid


def check_rank_and_alpha(rank, lora_alpha):
    if not is_positive_int(rank):
        raise ValueError(f"`rank` must be a positive integer. Received: rank={rank!r}")
    check_lora_alpha(lora_alpha)


class Adapter:
    """Float32 factors `a (n, r)` and `b (r, m)` whose scaled product is added to a
    `(n, m)` table; `A @ B` is formed only to merge or export the table whole.

    Args:
        add_weight: The owning layer's `add_weight`.
        shape: The `(n, m)` table it adapts.
        rank: Its rank `r`.
        alpha: The delta is scaled by `alpha / rank`.
        names: The names of the two variables.
        a_initializer, b_initializer, regularizer: As for `add_weight`.
    """

    def __init__(self, add_weight, shape, rank, alpha, names, a_initializer="he_uniform", b_initializer="zeros",
                 regularizer=None):
        self.rank = rank
        self.alpha = alpha
        shapes = ((shape[0], rank), (rank, shape[1]))
        self.a, self.b = (
            add_weight(name=name, shape=factor_shape, initializer=initializers.get(initializer), dtype="float32",
                       regularizer=regularizer, autocast=False)
            for name, factor_shape, initializer in zip(names, shapes, (a_initializer, b_initializer))
        )

    def variables(self):
        return [self.a, self.b]

    def scaled_b(self):
        """`(alpha / r) * B`: scaling the small factor, not every output row."""
        return (self.alpha / self.rank) * ops.convert_to_tensor(self.b)

    def add_rows(self, rows, ids, valid=None, rows_of_a=None):
        """`rows + A[ids] @ ((alpha / r) * B)`: the delta of the looked-up rows only,
        zero for the ids that `valid` marks invalid.

        `rows` are float32 rows just gathered for `ids`; only `A[ids]` and `B` move to
        them when the adapter lives on another device. `rows_of_a` are `A[ids]` read
        by a training step of a row-wise optimizer.
        """
        if rows_of_a is None:
            rows_of_a = on_device_of(self.a, ids, lambda ids: take_rows(self.a, ids))
        return add_matmul(rows, zero_invalid(rows_of_a, valid), to_device_of(self.scaled_b(), rows))

    def delta(self):
        """`(alpha / r) * A @ B`, the delta of the whole table (merge and export)."""
        return ops.matmul(self.a, self.scaled_b())

    def row_logit_factors(self, x):
        """For a table of rows `(V, D)`: `(x @ B.T, A)` scaled, whose product
        `(x @ B.T) @ A.T` is the delta's logits `x @ delta.T`, never forming `A @ B`."""
        return ops.matmul(ops.cast(x, "float32"), ops.transpose(self.scaled_b())), self.a

    def column_logit_factors(self, x):
        """For a kernel of columns `(D, V)`: `(x @ A, B)` scaled, whose product is the
        delta's logits `x @ delta`, `r` columns wide."""
        return ops.matmul(ops.cast(x, "float32"), self.a), self.scaled_b()

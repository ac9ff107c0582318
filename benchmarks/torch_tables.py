"""The DLRM-like collection's tables trained by torch's own engines, the contenders of
`bench_collection.py` on the torch backend:

- FBGEMM's fused CPU TBE (`SplitTableBatchedEmbeddingBagsCodegen` on the host) with
  `EXACT_ADAGRAD` (keras' Adagrad rule) or `EXACT_ROWWISE_ADAGRAD`, its optimizer fused
  into the backward pass, when `fbgemm_gpu` imports (`fbgemm-gpu-cpu` 1.9.0 needs torch
  2.14: `benchmarks/requirements-fbgemm.txt`);
- one `torch.nn.EmbeddingBag(sparse=True)` per table, or one stacked for all of them,
  with `torch.optim.Adagrad` (or, stacked, `torch.optim.SparseAdam`).

Each builder returns `step(x)`, one training step of the tables alone (the loss is
the sum of the pooled vectors times a fixed upstream gradient), or with the same MLP
as the keras model in torch (`mlp=True`).
"""

import numpy as np
import torch

LEARNING_RATE, EPSILON, INITIAL_ACCUMULATOR = 0.05, 1e-7, 0.1


def has_fbgemm() -> bool:
    try:
        import fbgemm_gpu  # noqa: F401
    except Exception:  # its libraries fail to load beside another torch
        return False
    return True


def _pooled_inputs(x, names, bag):
    """FBGEMM's flat `(indices, offsets)` of every feature's ids, feature-major, and
    the features' table of each."""
    ids, lengths = [], []
    for name in names:
        values = torch.as_tensor(np.asarray(x[name]), dtype=torch.int64).reshape(len(x[name]), -1)
        ids.append(values.reshape(-1))
        lengths.append(torch.full((values.shape[0],), values.shape[1], dtype=torch.int64))
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(torch.cat(lengths), 0)])
    return torch.cat(ids), offsets


class _MLP(torch.nn.Module):
    def __init__(self, width_in):
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Linear(width_in, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128),
                                          torch.nn.ReLU(), torch.nn.Linear(128, 1), torch.nn.Sigmoid())

    def forward(self, x):
        return self.layers(x)


def _step(pooled_of, parameters_optimizer, names, dim, batch, dense_width, mlp, seed=0):
    """`step(x, y)` around `pooled_of(x) -> (batch, features * dim)`."""
    generator = torch.Generator().manual_seed(seed)
    upstream = torch.randn(batch, len(names) * dim, generator=generator)
    head = _MLP(dense_width + len(names) * dim) if mlp else None
    head_optimizer = torch.optim.Adam(head.parameters(), lr=1e-3) if mlp else None

    def step(x, y):
        if parameters_optimizer is not None:
            parameters_optimizer.zero_grad(set_to_none=True)
        pooled = pooled_of(x)
        if head is None:
            loss = (pooled * upstream).sum()
        else:
            head_optimizer.zero_grad(set_to_none=True)
            features = torch.cat([torch.as_tensor(np.asarray(x["numeric"])), pooled], dim=1)
            loss = torch.nn.functional.binary_cross_entropy(head(features), torch.as_tensor(np.asarray(y)))
        loss.backward()
        if parameters_optimizer is not None:
            parameters_optimizer.step()
        if head_optimizer is not None:
            head_optimizer.step()
        return loss

    return step


def fbgemm(sizes, names, dim, batch, bag_of, rowwise=False, mlp=False, dense_width=13):
    """FBGEMM's TBE over every table, a feature per `names` (mean pooling)."""
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import ComputeDevice
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import SplitTableBatchedEmbeddingBagsCodegen

    optimizer = EmbOptimType.EXACT_ROWWISE_ADAGRAD if rowwise else EmbOptimType.EXACT_ADAGRAD
    tables = SplitTableBatchedEmbeddingBagsCodegen(
        [(size, dim, EmbeddingLocation.HOST, ComputeDevice.CPU) for size in sizes],
        feature_table_map=[bag_of[name] for name in names], optimizer=optimizer, learning_rate=LEARNING_RATE,
        eps=EPSILON, pooling_mode=PoolingMode.MEAN, device="cpu")

    def pooled_of(x):
        indices, offsets = _pooled_inputs(x, names, None)
        return tables(indices, offsets)

    return _step(pooled_of, None, names, dim, batch, dense_width, mlp)


def embedding_bags(sizes, names, dim, batch, bag_of, stacked=False, mlp=False, dense_width=13, adam=False):
    """`torch.nn.EmbeddingBag(sparse=True, mode="mean")` per table (or one stacked for
    all), trained by `torch.optim.Adagrad` (keras' rule) or `torch.optim.SparseAdam`
    (lazy Adam, with its defaults)."""
    if stacked:
        offsets = np.cumsum([0] + list(sizes))
        bags = torch.nn.ModuleList([torch.nn.EmbeddingBag(int(offsets[-1]), dim, mode="mean", sparse=True)])
    else:
        bags = torch.nn.ModuleList([torch.nn.EmbeddingBag(size, dim, mode="mean", sparse=True) for size in sizes])
    if adam:
        optimizer = torch.optim.SparseAdam(bags.parameters(), lr=1e-3)
    else:
        optimizer = torch.optim.Adagrad(bags.parameters(), lr=LEARNING_RATE, eps=EPSILON,
                                        initial_accumulator_value=INITIAL_ACCUMULATOR)

    def pooled_of(x):
        if stacked:
            shifted = {name: np.asarray(x[name]) + offsets[bag_of[name]] for name in names}
            indices, bag_offsets = _pooled_inputs(shifted, names, None)
            return bags[0](indices, bag_offsets[:-1]).reshape(len(names), batch, dim).transpose(0, 1).reshape(batch, -1)
        pooled = []
        for name in names:
            ids = torch.as_tensor(np.asarray(x[name]), dtype=torch.int64).reshape(batch, -1)
            pooled.append(bags[bag_of[name]](ids))
        return torch.cat(pooled, dim=1)

    return _step(pooled_of, optimizer, names, dim, batch, dense_width, mlp)

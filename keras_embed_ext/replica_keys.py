"""A training step's keys from every replica, so that each replica admits and evicts
the same keys as one device given the global batch would.

On JAX the step is one program over the global batch (`keras.distribution`, one
process or several), whose keys are all there already. Under a `tf.distribute`
strategy and under `torch.distributed` each replica holds its share: the shares are
gathered in replica order, and a replica's own keys are a slice of the whole.
"""

import keras
from keras import ops


def gather(keys):
    """`(everyone, start)`: the 1-D `keys` of every replica one after another, and where
    this replica's begin; `(keys, None)` with one replica."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _gather_tensorflow(keys)
    if backend == "torch":
        return _gather_torch(keys)
    return keys, None


def own(values, start, count):
    """This replica's `count` entries of `values`, computed for every replica's keys."""
    if start is None:
        return values
    return ops.slice(values, (start,), (count,))


def _gather_tensorflow(keys):
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return keys, None
    counts = context.all_gather(tf.shape(keys)[:1], axis=0)
    start = tf.reduce_sum(counts[: context.replica_id_in_sync_group])
    return context.all_gather(keys, axis=0), start


def _gather_torch(keys):
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return keys, None
    count = torch.tensor([keys.shape[0]], device=keys.device)
    counts = [torch.empty_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    # all_gather takes equal shapes: pad each share to the longest, then trim.
    padded = torch.nn.functional.pad(keys, (0, max(counts) - keys.shape[0]))
    shares = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(shares, padded)
    everyone = torch.cat([share[:c] for share, c in zip(shares, counts)])
    return everyone, sum(counts[: dist.get_rank()])

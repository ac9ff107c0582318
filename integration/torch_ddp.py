"""Training under torch's DistributedDataParallel with two local processes (gloo on
127.0.0.1), or in one process.

    python torch_ddp.py single OUT.npz
    python torch_ddp.py process RANK PORT OUT.npz      # both processes, at once

Two loops, each process feeding its half of every global batch:
- keras' guide ("Multi-GPU distributed training with PyTorch"): the keras model in
  `DistributedDataParallel`, a torch loss and a torch optimizer (float and LoRA tables);
- a custom loop whose step is keras' optimizer applying the gradients, which is what a
  table trained by its own `sparse_optimizer` needs (a torch optimizer would train it
  with its own update): every state.
Process 0 writes the trained weights. Run by test_scaling_out.py.
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "torch"

V, D, L, BATCH, STEPS = 64, 8, 5, 16, 3
GUIDE_STATES = ("float", "lora")
KERAS_LOOP_STATES = ("float", "lora", "sparse_adagrad", "lora_sparse_adam", "collection", "dynamic")


def build(state):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from jax_processes import build as build_model  # the same models, on this backend

    return build_model(state)


def main(mode, *args):
    import faulthandler
    import gc

    import keras
    import numpy as np
    import torch

    # A process that hangs (in a collective its peer left) shows where, before the test's timeout kills it.
    faulthandler.dump_traceback_later(540, exit=False)

    from jax_processes import data, local_half

    torch.set_num_threads(1)
    distributed = mode == "process"
    if distributed:
        torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args[1]}", rank=int(args[0]),
                                             world_size=2)
    weights = {}
    for loop, states in (("guide", GUIDE_STATES), ("keras_optimizer", KERAS_LOOP_STATES)):
        for state in states:
            model = build(state)
            if not distributed:
                for i, value in enumerate(model.get_weights()):
                    weights[f"initial/{loop}/{state}/{i}"] = value
            x, y = data(state)
            if distributed:
                rank = torch.distributed.get_rank()
                x = keras.tree.map_structure(lambda a: local_half(a, rank), x)
                y = local_half(y, rank)
            batch = len(y) // STEPS
            network = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
            if loop == "guide":
                optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            else:
                optimizer = keras.optimizers.SGD(0.1)
                optimizer.build(model.trainable_variables)
            for _ in range(2):
                for start in range(0, len(y), batch):
                    inputs = keras.tree.map_structure(lambda a: torch.as_tensor(a[start:start + batch]), x)
                    target = torch.as_tensor(y[start:start + batch])
                    model.zero_grad()
                    loss = torch.nn.functional.mse_loss(network(inputs), target)
                    loss.backward()
                    if loop == "guide":
                        optimizer.step()
                    else:
                        trainable = model.trainable_variables
                        optimizer.apply([v.value.grad for v in trainable], trainable)
            for i, value in enumerate(model.get_weights()):
                weights[f"{loop}/{state}/{i}"] = value
            # DDP's reducer is freed while the process group it holds is alive, not at the function's exit.
            del network, model, optimizer, loss
            gc.collect()
    if not distributed or torch.distributed.get_rank() == 0:
        np.savez(args[-1], **weights)
    if distributed:
        # Both ranks leave together: gloo's teardown talks to the peer, which must still be there.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main(*sys.argv[1:])

"""A DistributedDataParallel loop with the gradient noise scale: each worker's gradient before
the all-reduce is a small batch, the averaged one the big batch, so the estimate costs no extra
backward pass. Two CPU workers (gloo):

    torchrun --nproc-per-node 2 examples/ddp_loop.py
"""

import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from batchscale import NoiseScale

dist.init_process_group("gloo")
rank, workers = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)  # the same data and initial model on every worker
inputs, batch, steps = 16, 32, 120  # batch: samples per worker and step
x = torch.randn(batch * workers * steps, inputs)
y = torch.sin(x[:, :1] * 2) + 0.3 * torch.randn(len(x), 1)

model = DistributedDataParallel(nn.Sequential(nn.Linear(inputs, 32), nn.Tanh(),
                                              nn.Linear(32, 1)))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
noise = NoiseScale(model, batch_size=batch, span=40)  # the DDP wrapper: local vs averaged

for step in range(steps):
    first = (step * workers + rank) * batch  # this worker's share of the global batch
    optimizer.zero_grad()
    loss = F.mse_loss(model(x[first:first + batch]), y[first:first + batch])
    loss.backward()
    noise.step()
    optimizer.step()
    if (step + 1) % 40 == 0:
        estimate = noise.estimate()  # the same on every worker
        if rank == 0:
            print(f"step {step + 1}: loss {loss.item():.3f}  {estimate}", flush=True)
noise.close()
dist.destroy_process_group()
# gloo's threads outlive the group and can abort a worker that finalizes the interpreter (SIGABRT
# after the work is done: docs/distributed.md, Leaving); leave without finalizing, as batchscale's
# own workers do
os._exit(0)

"""A plain PyTorch training loop with the gradient noise scale added: the five lines marked
`# batchscale` are all it takes (one of them replaces `loss_fn(x, y).backward()`: the batch is
split in two micro-batches, each one a small-batch gradient). Runs on CPU in seconds:

    python examples/plain_loop.py
"""

import torch
import torch.nn.functional as F
from torch import nn

from batchscale import NoiseScale  # batchscale

torch.manual_seed(0)
classes, inputs, epochs, batch = 4, 20, 5, 64
centers = torch.randn(classes, inputs)
labels = torch.randint(0, classes, (2048,))
images = centers[labels] + 2.0 * torch.randn(2048, inputs)  # four noisy clusters

model = nn.Sequential(nn.Linear(inputs, 64), nn.ReLU(), nn.Linear(64, classes))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
noise = NoiseScale(model, span=32)  # batchscale


def loss_fn(x, y):
    return F.cross_entropy(model(x), y)


for epoch in range(epochs):
    order = torch.randperm(len(labels))
    total = 0.0
    for start in range(0, len(labels), batch):
        pick = order[start:start + batch]
        optimizer.zero_grad()
        loss = noise.backward(loss_fn, images[pick], labels[pick])  # batchscale
        noise.step()  # batchscale
        optimizer.step()
        total += loss.item() * len(pick)
    print(f"epoch {epoch + 1}: loss {total / len(labels):.3f}")
    print(f"  {noise.estimate()}")  # batchscale

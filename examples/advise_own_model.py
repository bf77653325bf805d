"""`batchscale.advise` on your own pieces: a model factory, a data set (any map-style
`torch.utils.data.Dataset` of (input, label) pairs, or tensors), a loss and an optimizer
factory, with the recipe (lr at the base batch, scale rule, warmup, schedule, epochs). Writes
advice.json/.md/.png into the folder given (default advice-example/) and prints the advice.
Runs on CPU in seconds:

    python examples/advise_own_model.py [OUT]
"""

import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

import batchscale


class Clusters(Dataset):
    """Four noisy clusters in 20 dimensions: (input, label) pairs."""

    def __init__(self, n=1024, inputs=20, classes=4):
        generator = torch.Generator().manual_seed(0)
        centers = torch.randn(classes, inputs, generator=generator)
        self.labels = torch.randint(0, classes, (n,), generator=generator)
        self.x = centers[self.labels] + 2.0 * torch.randn(n, inputs, generator=generator)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.x[i], int(self.labels[i])


def make_model(classes):
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, classes))


def smoothed_cross_entropy(output, y):
    return F.cross_entropy(output, y, label_smoothing=0.1)


def sgd(params, lr):
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "advice-example"
    record = batchscale.advise(
        [16, 64, 256], out, model=make_model, dataset=Clusters(), loss=smoothed_cross_entropy,
        optimizer=sgd, lr=0.05, base_batch_size=16, scale_rule="linear", warmup_epochs=1,
        schedule="cosine", epochs=10, threads=1, overwrite=True)
    for row in record["rows"]:
        print(f"B = {row['batch']}: {row['verdict']} ({row['reason']})")
    print(f"advice: B = {record['advice']['batch']}, peak lr {record['advice']['peak_lr']:.3g}; "
          f"B_noise {record['noise']['b_noise']}")

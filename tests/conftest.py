"""Shared fixtures: tiny configs that train in seconds, and the real CIFAR-10 zip when present."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from batchscale.config import from_dict

ROOT = Path(__file__).resolve().parents[1]
SHARED_ZIP = ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip"

torch.set_num_threads(2)


def tiny_config(**overrides):
    """A run that takes seconds: width 4 on 256 images of the embedded sample, on the CPU
    (tests compare runs bit for bit; CUDA's kernels are not bit-reproducible by default)."""
    values = dict(dataset="sample", width=4, train_subset=256, epochs=2, batch_size=64,
                  base_batch_size=64, lr=0.05, eval_batch_size=500, threads=2, seed=3,
                  device="cpu")
    values.update(overrides)
    return from_dict(values)


@pytest.fixture
def shared_zip() -> Path:
    if not SHARED_ZIP.exists():
        pytest.skip(f"real CIFAR-10 zip not found at {SHARED_ZIP} (CI has ../shared beside the "
                    "clone; a user's clone does not)")
    return SHARED_ZIP

"""Shared fixtures: tiny configs that train in seconds, and the real CIFAR-10 zip when present.

Also, for the whole suite: every subprocess a test starts has PYTHONFAULTHANDLER=1 (an abort or
a crash prints every thread's Python stack, so a rare one can be told apart from the next), and
SIGTERM stops the suite, also while a training run goes on inside the test process (the run
would otherwise take the signal as a request to stop with a checkpoint, and the test would fail
with status `interrupted` while the suite ran on)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from batchscale.config import from_dict
from batchscale.engine.train import StopFlag

ROOT = Path(__file__).resolve().parents[1]
SHARED_ZIP = ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip"
# How long a test waits for a subprocess (a run, a worker, a launcher) before calling it hung:
# wide, since 2 cores shared with other work stretch a run's wall time several-fold (two slow
# test files side by side each took over 590 s, 161 s / 168 s alone). Only a hang reaches it.
PATIENCE_S = 900

torch.set_num_threads(2)
os.environ["PYTHONFAULTHANDLER"] = "1"  # inherited by every subprocess the tests start


def _stop_the_suite(signum, frame):
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def pytest_configure(config):
    signal.signal(signal.SIGTERM, _stop_the_suite)  # pytest ends as on Ctrl-C: interrupted


@pytest.fixture(autouse=True, scope="session")
def _signals_stop_the_suite_not_the_run():
    """In this process train() leaves SIGINT and SIGTERM alone (a subprocess's run still turns
    them into a checkpointed stop: tests/test_train.py checks it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StopFlag, "__enter__", lambda self: self)
        yield


def tiny_config(**overrides):
    """A run that takes seconds: width 4 on 256 images of the embedded sample, on the CPU
    (tests compare runs bit for bit; CUDA's kernels are not bit-reproducible by default)."""
    values = dict(dataset="sample", width=4, train_subset=256, epochs=2, batch_size=64,
                  base_batch_size=64, lr=0.05, eval_batch_size=500, threads=2, seed=3,
                  device="cpu")
    values.update(overrides)
    return from_dict(values)


def require_shared_zip(path: Path) -> Path:
    """`path` if it exists. A user's clone has no ../shared: the test skips, saying so; in CI
    (CI=true), which has it, its absence is a failure."""
    if not path.exists():
        message = f"real CIFAR-10 zip not found at {path}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}, and CI=true: CI must have ../shared beside the clone")
        pytest.skip(f"{message} (CI has ../shared beside the clone; a user's clone does not)")
    return path


@pytest.fixture
def shared_zip() -> Path:
    return require_shared_zip(SHARED_ZIP)

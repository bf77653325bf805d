"""Where a study's runs go on the machine's GPUs: each run sees only its own GPU(s) through
CUDA_VISIBLE_DEVICES, round robin over the visible GPUs, at most K runs on one GPU.

    batchscale study table3 --jobs 8 --runs-per-gpu 2    # 4 GPUs: two runs on each

A run with workers = W gets W GPUs (its torchrun workers take one each). The assignment is a
pure function of the GPUs' current load, so it is tested without GPUs.
"""

from __future__ import annotations

import os

import torch

from batchscale.errors import UserError


def visible_gpus(environ=None) -> list[str]:
    """The GPU names this process may hand out: its own CUDA_VISIBLE_DEVICES entries, or
    0..count-1; none when the runs will not use CUDA."""
    environ = os.environ if environ is None else environ
    if not torch.cuda.is_available():
        return []
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [name.strip() for name in listed.split(",") if name.strip()]
    return [str(index) for index in range(torch.cuda.device_count())]


def gpus_needed(cfg) -> int:
    """GPUs a run takes: its workers, or one; none for a CPU run."""
    if cfg.device == "cpu":
        return 0
    return max(cfg.workers, 1)


def assign(load: list[int], needed: int, per_gpu: int) -> list[int] | None:
    """Indices of the `needed` GPUs a new run goes to, given each GPU's number of runs (`load`)
    and at most `per_gpu` runs per GPU; None when not enough GPUs have room now. The least
    loaded GPUs first, the lowest index among equals: round robin as runs start."""
    if needed == 0:
        return []
    free = sorted((count, index) for index, count in enumerate(load) if count < per_gpu)
    if len(free) < needed:
        return None
    return sorted(index for _, index in free[:needed])


def check_fits(needed: list[int], gpus: int, per_gpu: int) -> None:
    """A UserError, before anything starts, for a run that can never be placed."""
    if per_gpu < 1:
        raise UserError(f"--runs-per-gpu must be at least 1, got {per_gpu}")
    if gpus and needed and max(needed) > gpus:
        raise UserError(f"a run with workers={max(needed)} needs {max(needed)} GPUs, "
                        f"{gpus} are visible; use --set workers={gpus} or fewer")


class Placement:
    """The study's GPUs and the runs on each; `take` places a run, `release` frees its GPUs."""

    def __init__(self, gpus: list[str], per_gpu: int = 1):
        self.gpus, self.per_gpu = gpus, per_gpu
        self.load = [0] * len(gpus)

    def take(self, cfg) -> list[int] | None:
        """GPU indices for a run (empty: no GPU to place, run it as it is), or None: wait."""
        if not self.gpus:
            return []
        chosen = assign(self.load, gpus_needed(cfg), self.per_gpu)
        for index in chosen or []:
            self.load[index] += 1
        return chosen

    def release(self, indices: list[int]) -> None:
        for index in indices:
            self.load[index] -= 1

    def environment(self, indices: list[int], base=None) -> dict:
        """The child's environment: `base` (this process's), and its GPUs where it has some."""
        env = dict(os.environ if base is None else base)
        if indices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus[i] for i in indices)
        return env

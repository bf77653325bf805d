"""The rules of a TrainConfig beyond one field's own range: the values derived from it, local SGD
and batch growth. `config.validate()` applies them; they live here to keep config.py the table
of fields.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from batchscale.errors import UserError

if TYPE_CHECKING:
    from batchscale.config import TrainConfig


# The widest model a config may ask for: 16x the standard ResNet-18 (about 2.9 G parameters).
MAX_WIDTH = 1024


def check_derived(cfg: TrainConfig) -> None:
    """Values computed from the fields must be usable too: a peak lr that overflows to inf is a
    config error, not a recipe that diverged."""
    if cfg.width > MAX_WIDTH:
        raise UserError(f"width {cfg.width} exceeds {MAX_WIDTH} (16x the standard ResNet-18: "
                        f"{MAX_WIDTH} already has about 2.9 G parameters)")
    peak = cfg.peak_lr
    if not math.isfinite(peak) or not math.isfinite(peak * cfg.batch_size):
        raise UserError(f"the peak lr lr x {cfg.scale_rule}(batch_size / base_batch_size) = "
                        f"{cfg.lr:g} x {cfg.scale_rule}({cfg.batch_size} / "
                        f"{cfg.base_batch_size}) is {peak:g}, not a usable number")


def first_decay_epoch(cfg: TrainConfig) -> int:
    """The first epoch the step schedule trains at a decayed rate."""
    return math.ceil(cfg.decay_every - 1e-9)


def local_start(cfg: TrainConfig) -> int:
    """The epoch local SGD starts (local_start_epoch, -1 resolved to the first decay)."""
    return first_decay_epoch(cfg) if cfg.local_start_epoch == -1 else cfg.local_start_epoch


def check_local_sgd(cfg: TrainConfig) -> None:
    """The rules of --local-steps, --local-start-epoch and --local-workers."""
    if cfg.local_steps < 1:
        raise UserError(f"local_steps must be at least 1, got {cfg.local_steps}")
    if cfg.local_start_epoch < -1:
        raise UserError(f"local_start_epoch must be -1 (post-local) or an epoch, got "
                        f"{cfg.local_start_epoch}")
    if cfg.local_start_epoch == -1 and cfg.schedule != "step":
        raise UserError("local_start_epoch -1 (the first decay) needs schedule step")
    if local_start(cfg) >= cfg.epochs:
        raise UserError(f"local SGD would start at epoch {local_start(cfg)}, after the last "
                        f"epoch ({cfg.epochs})")
    workers = cfg.local_workers
    if workers < 0 or workers == 1:
        raise UserError(f"local_workers must be 0 (off) or at least 2, got {workers}")
    if workers and cfg.workers:
        raise UserError("local_workers simulates workers in one process; it cannot be combined "
                        "with workers (real torchrun workers)")
    if workers and cfg.batch_size % workers:
        raise UserError(f"batch_size {cfg.batch_size} is not a multiple of local_workers "
                        f"{workers}")
    if workers and cfg.bn_group and (cfg.batch_size // workers) % cfg.bn_group:
        raise UserError(f"the per-worker batch {cfg.batch_size // workers} is not a multiple of "
                        f"bn_group {cfg.bn_group}")
    if cfg.local_steps > 1 or workers:
        for name, why in (("sync_bn", "batch norm over the global batch needs every worker at "
                                      "every step"),
                          ("track_noise_scale", "the noise scale needs the workers' gradients"),
                          ("compile", "the replicas run eagerly")):
            if getattr(cfg, name):
                raise UserError(f"{name} cannot be combined with local SGD ({why})")


def check_batch_growth(cfg: TrainConfig) -> None:
    """The rules of --batch-growth and --max-batch-size."""
    if cfg.batch_growth < 1:
        raise UserError(f"batch_growth must be at least 1, got {cfg.batch_growth}")
    if cfg.max_batch_size < 0:
        raise UserError(f"max_batch_size must not be negative, got {cfg.max_batch_size}")
    if cfg.batch_growth == 1:
        return
    if cfg.schedule != "step":
        raise UserError("batch_growth replaces the step schedule's decays; it needs schedule step")
    if cfg.decay_factor * cfg.batch_growth > 1 + 1e-9:
        raise UserError(f"batch_growth {cfg.batch_growth} x decay_factor {cfg.decay_factor} "
                        "exceeds 1: the rate would rise at a decay")
    if cfg.max_batch_size and cfg.max_batch_size < cfg.batch_size:
        raise UserError(f"max_batch_size {cfg.max_batch_size} is below batch_size "
                        f"{cfg.batch_size}")
    if cfg.local_steps > 1 or cfg.local_workers:
        raise UserError("batch_growth cannot be combined with local SGD")

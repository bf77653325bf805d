"""The learning-rate plan: scaling rule → peak rate, per-step linear warmup, then a named decay.

    lr(step) = warmup(step) * decay(step)

warmup ramps linearly per step from the base rate (the rate at the base batch size) to the peak
over `warmup_steps` (Goyal et al. 2017); decay is one of the tiny named schedules below, looked
up by name. The step schedule counts epochs from the start of training, as the study does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LearningRatePlan:
    base_lr: float  # rate at the base batch size; where warmup starts
    peak_lr: float  # rate after warmup, from the scaling rule
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int = 0
    schedule: str = "step"
    decay_every: float = 50.0  # epochs
    decay_factor: float = 0.1

    def lr_at(self, step: int) -> float:
        """The learning rate used for optimizer step `step` (0-based)."""
        if step < self.warmup_steps:
            rate = self.base_lr + (self.peak_lr - self.base_lr) * step / self.warmup_steps
        else:
            rate = self.peak_lr
        return rate * SCHEDULES[self.schedule](self, step)


def constant_decay(plan: LearningRatePlan, step: int) -> float:
    return 1.0


def step_decay(plan: LearningRatePlan, step: int) -> float:
    """decay_factor ** (number of whole decay periods passed, in epochs from the start)."""
    epoch = step // plan.steps_per_epoch
    return plan.decay_factor ** math.floor(epoch / plan.decay_every + 1e-9)


def cosine_decay(plan: LearningRatePlan, step: int) -> float:
    """Half a cosine from 1 to 0 over the steps after warmup."""
    if step < plan.warmup_steps:
        return 1.0
    span = max(plan.total_steps - plan.warmup_steps, 1)
    return 0.5 * (1 + math.cos(math.pi * (step - plan.warmup_steps) / span))


def poly_decay(plan: LearningRatePlan, step: int) -> float:
    """(1 - progress)^2 over the steps after warmup: from 1 to 0 at the end of training
    (the usual partner of LARS; the same span as `cosine_decay`)."""
    if step < plan.warmup_steps:
        return 1.0
    span = max(plan.total_steps - plan.warmup_steps, 1)
    return max(1.0 - (step - plan.warmup_steps) / span, 0.0) ** 2


SCHEDULES = {"constant": constant_decay, "step": step_decay, "cosine": cosine_decay,
             "poly": poly_decay}


def plan_from_config(cfg, steps_per_epoch: int) -> LearningRatePlan:
    """The plan of a TrainConfig, for a training split giving `steps_per_epoch` steps."""
    return LearningRatePlan(
        base_lr=cfg.lr if cfg.warmup_epochs > 0 else cfg.peak_lr,
        peak_lr=cfg.peak_lr,
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * cfg.epochs,
        warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
        schedule=cfg.schedule,
        decay_every=cfg.decay_every,
        decay_factor=cfg.decay_factor,
    )

"""The learning-rate plan: scaling rule → peak rate, per-step linear warmup, then a named decay.

    lr(step) = warmup(step) * decay(step)

warmup ramps linearly per step from the base rate (the rate at the base batch size) to the peak
over `warmup_steps` (Goyal et al. 2017); decay is one of the tiny named schedules below, looked
up by name. The step schedule counts epochs from the start of training, as the study does.

With batch growth F (Smith et al. 2018, "Don't decay the learning rate, increase the batch
size"), each decay of the step schedule multiplies the batch by F instead, while it stays within
the largest batch, and the rate by decay_factor x F (F = 1 / decay_factor: the rate holds); past
the largest batch the rate decays as usual. The batch changes only at epoch boundaries, so an
epoch's steps, and the global step where it starts, come from `epoch_batches`.
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
    batch_growth: int = 1
    epoch_batches: tuple = ()  # with batch growth: (batch size, steps) of every epoch

    # ------------------------------------------------------------ epochs of a changing batch
    def batch_in(self, epoch: int, default: int) -> int:
        """The batch size of `epoch` (`default`, the configured one, without growth)."""
        if not self.epoch_batches:
            return default
        return self.epoch_batches[min(epoch, len(self.epoch_batches) - 1)][0]

    def steps_in(self, epoch: int) -> int:
        if not self.epoch_batches:
            return self.steps_per_epoch
        return self.epoch_batches[min(epoch, len(self.epoch_batches) - 1)][1]

    def epoch_start(self, epoch: int) -> int:
        """The global step that starts `epoch` (= the steps of all epochs before it)."""
        if not self.epoch_batches:
            return epoch * self.steps_per_epoch
        return sum(self.steps_in(e) for e in range(epoch))

    def epoch_of(self, step: int) -> int:
        """The epoch global step `step` belongs to."""
        if not self.epoch_batches:
            return step // self.steps_per_epoch
        epoch, start = 0, 0
        while start + self.steps_in(epoch) <= step:
            start, epoch = start + self.steps_in(epoch), epoch + 1
        return epoch

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
    decays = decays_before(plan.epoch_of(step), plan.decay_every)
    if not plan.epoch_batches:
        return plan.decay_factor ** decays
    growths = math.log(plan.batch_in(plan.epoch_of(step), 1) / plan.epoch_batches[0][0],
                       plan.batch_growth)
    return plan.decay_factor ** decays * plan.batch_growth ** round(growths)


def decays_before(epoch: int, decay_every: float) -> int:
    """How many decays of the step schedule come at or before `epoch`."""
    return math.floor(epoch / decay_every + 1e-9)


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


def grown_batches(cfg, train_images: int) -> tuple:
    """(batch size, steps) of every epoch under batch growth: the batch grows by
    cfg.batch_growth at each decay while it stays within cfg.max_batch_size (or the training
    set); () without growth."""
    if cfg.batch_growth <= 1:
        return ()
    largest = min(cfg.max_batch_size or train_images, train_images)
    batches, batch, grown = [], cfg.batch_size, 0
    for epoch in range(cfg.epochs):
        decays = decays_before(epoch, cfg.decay_every)
        while grown < decays and batch * cfg.batch_growth <= largest:
            batch, grown = batch * cfg.batch_growth, grown + 1
        if grown < decays:
            grown = decays  # past the largest batch: the remaining decays are the rate's
        batches.append((batch, train_images // batch))
    return tuple(batches)


def plan_from_config(cfg, steps_per_epoch: int, train_images: int = 0) -> LearningRatePlan:
    """The plan of a TrainConfig, for a training split giving `steps_per_epoch` steps
    (`train_images`, needed with batch growth, defaults to steps x batch)."""
    train_images = train_images or steps_per_epoch * cfg.batch_size
    epoch_batches = grown_batches(cfg, train_images)
    return LearningRatePlan(
        base_lr=cfg.lr if cfg.warmup_epochs > 0 else cfg.peak_lr,
        peak_lr=cfg.peak_lr,
        steps_per_epoch=steps_per_epoch,
        total_steps=(sum(steps for _, steps in epoch_batches) if epoch_batches
                     else steps_per_epoch * cfg.epochs),
        warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
        schedule=cfg.schedule,
        decay_every=cfg.decay_every,
        decay_factor=cfg.decay_factor,
        batch_growth=cfg.batch_growth,
        epoch_batches=epoch_batches,
    )

"""What `batchscale advise` may spend and on what: the ledger of training images, the probe's
plan (each piece's size, decided before anything runs) and the default budget. advise.py spends
it; advise_rules.py holds the rules the trials are judged by.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from batchscale.analysis.advise_rules import (
    START,
    base_steps,
    config_at,
    hold_steps,
    ramp_steps,
)
from batchscale.config import TrainConfig
from batchscale.engine.schedule import plan_from_config

DEFAULT_BUDGET_FRACTION = 0.10  # of one full run's training images at the base batch
DEFAULT_TRIALS = 3  # the default budget holds this many trials per batch (first + 2 bisection)
TIMED_STEPS = 1  # after one untimed step (throughput is reported, not used to predict)
NOISE_SMALL_BATCHES = 8  # a noise measurement: this many base batches, one big batch
NOISE_MEASUREMENTS = 2
HESSIAN_IMAGES, HESSIAN_ITERS, HESSIAN_TOL = 32, 10, 1e-2
JUDGE_IMAGES = 128  # the fixed sample of the loss-progress test


# ---------------------------------------------------------------------- the budget
class Ledger:
    """Training images spent by the probe, per piece, against the budget."""

    def __init__(self, budget: int):
        self.budget, self.spent, self.pieces = budget, 0, {}

    def left(self) -> int:
        return self.budget - self.spent

    def spend(self, piece: str, images: int) -> None:
        if self.spent + images > self.budget:
            raise RuntimeError(f"probe over budget: {piece} needs {images} images, "
                               f"{self.budget - self.spent} left")
        self.spent += images
        self.pieces[piece] = self.pieces.get(piece, 0) + images


@dataclass
class Plan:
    """How the probe is shaped and what each piece costs: decided before anything runs."""

    base_steps: int  # base-batch steps through the recipe's warmup (0 without warmup)
    noise_measurements: int
    hessian_images: int
    hessian_iters: int
    timing_images: int
    ramp: dict  # B -> ramp steps of a trial
    hold: dict  # B -> held steps of a trial
    judge_images: int  # the fixed sample's loss at the end of a trial (once more at the start)
    warmup_steps: int = 0  # the recipe's warmup at the base batch (base_steps may stop short)

    def trial_images(self, batch: int) -> int:
        judging = self.judge_images * (2 if self.ramp[batch] else 1)
        return (self.ramp[batch] + self.hold[batch]) * batch + judging

    def fixed_images(self, base_batch: int) -> int:
        """Everything but the trials."""
        return (self.timing_images + self.base_steps * base_batch + self.judge_images
                + self.noise_measurements * NOISE_SMALL_BATCHES * base_batch
                + 2 * self.hessian_images * self.hessian_iters)

    def needed(self, base_batch: int) -> int:
        """The least budget that gives every batch its first trial."""
        return self.fixed_images(base_batch) + sum(self.trial_images(b) for b in self.ramp)


def plan_probe(cfg: TrainConfig, batches: list[int], train_images: int) -> Plan:
    base = cfg.base_batch_size
    ramp, hold = {}, {}
    for batch in batches:
        at_b = plan_from_config(config_at(cfg, batch), train_images // batch)
        ramp[batch] = ramp_steps(at_b.warmup_steps)
        hold[batch] = hold_steps(at_b.steps_per_epoch, at_b.total_steps - at_b.warmup_steps,
                                 from_init=at_b.warmup_steps == 0)
    base_plan = plan_from_config(config_at(cfg, base), train_images // base)
    hessian_images = min(max(HESSIAN_IMAGES, cfg.group_size), train_images)
    hessian_images = max(hessian_images - hessian_images % cfg.group_size, 0)
    judge = min(JUDGE_IMAGES, train_images)
    # the base state: the base batch through the recipe's warmup, at least one epoch
    steps = base_steps(base_plan.warmup_steps, base_plan.steps_per_epoch, base_plan.total_steps)
    warm = START == "warm" and cfg.warmup_epochs > 0  # no warmup: the run starts at the peak
    return Plan(base_steps=steps if warm else 0,
                noise_measurements=NOISE_MEASUREMENTS, hessian_images=hessian_images,
                hessian_iters=HESSIAN_ITERS, timing_images=(1 + TIMED_STEPS) * sum(batches),
                ramp=ramp, hold=hold, judge_images=judge - judge % cfg.group_size or judge,
                warmup_steps=base_plan.warmup_steps)


def budget_cap(full_run: int, epochs: int) -> int:
    """The most the default budget spends: one run for a recipe of up to 10 epochs, a tenth of a
    run from 100 epochs on, 10 / epochs of a run in between (a third of a 30-epoch run)."""
    return int(full_run * max(DEFAULT_BUDGET_FRACTION, min(1.0, 10 / max(epochs, 1))))


def default_budget(plan: Plan, base_batch: int, full_run: int, epochs: int) -> int:
    """DEFAULT_TRIALS trials per batch plus the fixed pieces (at least DEFAULT_BUDGET_FRACTION of
    a run), but no more than budget_cap -- and never less than what gives every batch its first
    trial (then the probe costs more than the cap, and says so)."""
    trials = sum(plan.trial_images(b) for b in plan.ramp)
    wanted = max(int(DEFAULT_BUDGET_FRACTION * full_run),
                 plan.fixed_images(base_batch) + DEFAULT_TRIALS * trials)
    return max(plan.needed(base_batch), min(wanted, budget_cap(full_run, epochs)))


def fit_context(plan: Plan, base_batch: int, cap: int) -> tuple[Plan, str | None]:
    """The plan of a default-budget probe whose fixed pieces and first trials do not fit the
    cap (budget_cap): λ_max and B_noise are context (no verdict reads them), so the noise
    scale, then the Hessian too, is left out when that brings every batch's first trial within
    the cap. Returns the plan and what was left out and why (None: nothing)."""
    needed = plan.needed(base_batch)
    if needed <= cap:
        return plan, None
    for cut in ({"noise_measurements": 0}, {"noise_measurements": 0, "hessian_iters": 0}):
        smaller = replace(plan, **cut)
        if smaller.needed(base_batch) <= cap:
            return smaller, (f"left out: the default budget is at most {cap} images here and "
                             f"every batch's first trial needs them; --budget-images {needed} "
                             f"measures it")
    return plan, None

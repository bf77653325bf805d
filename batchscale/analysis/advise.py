"""How far can this recipe's batch be scaled? A short probe answers before the sweep is paid for.

    batchscale advise --config recipe.yaml --batches 4,16,64,256 --out advice/

For every candidate batch B the probe measures, on this machine and within a budget of training
images (default: 10% of one full run of the recipe at its base batch):

1. throughput (img/s over a few timed steps) and memory (activations kept for backward plus the
   parameters, gradients and optimizer state; on CUDA the allocator's peak), and whether it fits;
2. stability: the recipe's peak lr at B (its scale rule) against the largest lr that trained
   stably in a short exponential lr range test at B, started from the recipe's warmed-up state
   (the base batch trained through its warmup), and against the curvature bound
   η·λ_max < 2(1+β) of heavy-ball momentum β, λ_max by power iteration at that state;
3. step efficiency: the gradient noise scale B_noise = tr(Σ)/|G|² measured during the base-batch
   probe (McCandlish et al. 2018; jackknife error over the measurements) gives the steps and
   images to reach the base run's training loss, S(B) = S_min (1 + B_noise/B) and
   E(B) = E_min (1 + B/B_noise), and with the throughput the predicted wall-clock of a run;
4. the advice: the batch with the least predicted time among those judged stable, its peak lr
   and warmup, and one sentence for each larger batch it rejects.

The images every piece costs are counted (a Hessian-vector product as two passes of its images)
and the pieces are sized so that the total never exceeds the budget; a range test that does not
fit is left out and said to be left out. What the probe cannot know (test accuracy, how the noise
scale grows later in training, instabilities after thousands of steps) it says it cannot know.

This module is the probe (what is measured, within the budget); the rules it decides by are in
advise_rules.py, the files it writes in advise_report.py.
"""


from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from batchscale.analysis import hessian
from batchscale.analysis.advise_report import RESULT_JSON, write_outputs
from batchscale.analysis.advise_rules import (
    CANNOT_KNOW,
    DIVERGE_FACTOR,
    DIVERGE_PATIENCE,
    RAMP_SPAN,
    SAFETY,
    RangeTest,
    advice_for,
    config_at,
    jackknife_ratio,
    momentum_of,
    patience_at,
    predictions,
    range_test,
    verdict,
)
from batchscale.config import TrainConfig
from batchscale.engine import noise as noise_scale
from batchscale.engine.data import EpochLoader, normalize
from batchscale.engine.optim import set_lr
from batchscale.engine.schedule import plan_from_config
from batchscale.engine.setup import Setup, build
from batchscale.engine.step import forward_loss, prepare_input, train_step
from batchscale.errors import UserError

DEFAULT_BUDGET_FRACTION = 0.10  # of one full run's training images at the base batch
MAX_RAMP_STEPS, MIN_RAMP_STEPS = 200, 20
TIMED_STEPS = 2  # after one untimed step
NOISE_SMALL_BATCHES = 8  # a noise measurement: this many base batches, one big batch
MAX_NOISE_MEASUREMENTS = 24
HESSIAN_IMAGES, HESSIAN_ITERS, HESSIAN_TOL = 256, 10, 1e-2


# ---------------------------------------------------------------------- the budget
class Ledger:
    """Training images spent by the probe, per piece, against the budget."""

    def __init__(self, budget: int):
        self.budget, self.spent, self.pieces = budget, 0, {}

    def spend(self, piece: str, images: int) -> None:
        if self.spent + images > self.budget:
            raise RuntimeError(f"probe over budget: {piece} needs {images} images, "
                               f"{self.budget - self.spent} left")
        self.spent += images
        self.pieces[piece] = self.pieces.get(piece, 0) + images


@dataclass
class Plan:
    """How the budget is cut: every count here is decided before anything runs."""

    base_steps: int  # base-batch steps through the recipe's warmup
    noise_every: int
    noise_measurements: int
    hessian_images: int
    hessian_iters: int
    ramp_steps: int
    tested: list[int]  # the batches that get a range test
    timing_images: int

    def images(self, base_batch: int, batches: list[int]) -> int:
        return (self.timing_images + self.base_steps * base_batch
                + self.noise_measurements * NOISE_SMALL_BATCHES * base_batch
                + 2 * self.hessian_images * self.hessian_iters
                + self.ramp_steps * sum(self.tested))


def plan_probe(cfg: TrainConfig, batches: list[int], train_images: int, budget: int) -> Plan:
    """Cut the budget: timing first, then up to a quarter for the base-batch warmup, a tenth for
    the noise scale, 15% for the Hessian, and what is left for the range tests (the largest
    batches lose theirs first when fewer than MIN_RAMP_STEPS steps each would fit)."""
    base = cfg.base_batch_size
    timing = (1 + TIMED_STEPS) * sum(batches)
    per_epoch = train_images // base
    base_steps = min(round(max(cfg.warmup_epochs, 1.0) * per_epoch), int(0.25 * budget) // base)
    measurements = min(MAX_NOISE_MEASUREMENTS,
                       int(0.1 * budget) // (NOISE_SMALL_BATCHES * base), max(base_steps // 2, 0))
    every = max(1, (base_steps // 2) // max(measurements, 1))
    hessian_images = min(HESSIAN_IMAGES, train_images, int(0.15 * budget) // (2 * HESSIAN_ITERS))
    hessian_images = hessian_images if hessian_images >= cfg.base_batch_size else 0
    plan = Plan(base_steps, every, measurements, hessian_images, HESSIAN_ITERS, 0, [], timing)
    left = budget - plan.images(base, batches)
    if left < 0:
        raise UserError(f"--budget-images {budget} is too small: timing the batches and warming "
                        f"up the base batch alone take {budget - left} images")
    tested = sorted(batches)
    while tested and left // sum(tested) < MIN_RAMP_STEPS:
        tested.pop()
    plan.tested = tested
    plan.ramp_steps = min(MAX_RAMP_STEPS, left // sum(tested)) if tested else 0
    return plan


# ---------------------------------------------------------------------- the probe's pieces
def setup_at(base: Setup, batch: int) -> Setup:
    """The base setup's data and model with the recipe's config and lr plan at `batch`."""
    cfg = config_at(base.cfg, batch)
    plan = plan_from_config(cfg, len(base.train) // batch)
    return dataclasses.replace(base, cfg=cfg, plan=plan, noise=None, train_model=None)


def state_of(setup: Setup) -> dict:
    return copy.deepcopy({"model": setup.model.state_dict(),
                          "optimizer": setup.optimizer.state_dict()})


def load_state(setup: Setup, state: dict) -> None:
    setup.model.load_state_dict(state["model"])
    setup.optimizer.load_state_dict(state["optimizer"])


def batches_of(setup: Setup, seed_offset: int):
    """An endless stream of the setup's training batches (epoch after epoch)."""
    epoch = 0
    while True:
        loader = EpochLoader(setup.train, setup.cfg.batch_size, setup.cfg.seed + seed_offset,
                             epoch)
        for step in range(len(loader)):
            yield loader.batch(step)
        epoch += 1


def activation_bytes(setup: Setup, images, labels) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one training forward."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = forward_loss(setup, images, labels)
    del loss
    return total


def state_bytes(setup: Setup) -> int:
    """Parameters, gradients and optimizer state."""
    params = sum(p.numel() * p.element_size() for p in setup.model.parameters())
    extra = sum(t.numel() * t.element_size() for s in setup.optimizer.state.values()
                for t in s.values() if torch.is_tensor(t))
    return 2 * params + extra


def available_memory_mb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 2**20
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (ValueError, OSError, AttributeError):
        return None


def time_steps(setup: Setup, stream, ledger: Ledger) -> dict:
    """One untimed step, then TIMED_STEPS timed ones: img/s and memory at this batch."""
    batch = setup.cfg.batch_size
    cuda = setup.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(setup.device)
    images, labels = next(stream)
    try:
        activations = activation_bytes(setup, prepare_input(setup, images), labels)
        ledger.spend("timing", batch)
        train_step(setup, prepare_input(setup, images), labels)
        ledger.spend("timing", batch * TIMED_STEPS)
        if cuda:
            torch.cuda.synchronize(setup.device)
        started = time.perf_counter()
        for _ in range(TIMED_STEPS):
            images, labels = next(stream)
            loss, _ = train_step(setup, prepare_input(setup, images), labels)
        loss.item()
        if cuda:
            torch.cuda.synchronize(setup.device)
        seconds = (time.perf_counter() - started) / TIMED_STEPS
    except torch.cuda.OutOfMemoryError:
        return {"images_per_s": None, "step_s": None, "memory_mb": None, "fits": False}
    memory = (torch.cuda.max_memory_allocated(setup.device) if cuda
              else activations + state_bytes(setup)) / 2**20
    available = available_memory_mb(setup.device)
    return {"images_per_s": batch / seconds, "step_s": seconds, "memory_mb": memory,
            "memory_kind": "CUDA allocator peak" if cuda else
            "activations kept for backward + parameters, gradients, optimizer state",
            "fits": available is None or memory < available}


def warm_up_base(setup: Setup, steps: int, plan: Plan, ledger: Ledger) -> dict:
    """Train the base batch through the recipe's warmup; measure the noise scale on the way,
    in the second half: every `noise_every` steps, NOISE_SMALL_BATCHES base batches' gradients
    are taken apart (small) and averaged (big)."""
    stream = batches_of(setup, 0)
    big_stream = batches_of(setup_at(setup, setup.cfg.batch_size * NOISE_SMALL_BATCHES), 1)
    grad_sq, trace_sigma, losses = [], [], []
    for step in range(steps):
        set_lr(setup.optimizer, setup.plan.lr_at(step))
        images, labels = next(stream)
        loss, _ = train_step(setup, prepare_input(setup, images), labels)
        ledger.spend("base warmup", len(labels))
        losses.append(loss.item())
        due = step >= steps - steps // 2 and (step - (steps - steps // 2)) % plan.noise_every == 0
        if due and len(grad_sq) < plan.noise_measurements:
            g, t = measure_noise(setup, *next(big_stream))
            ledger.spend("noise scale", NOISE_SMALL_BATCHES * setup.cfg.batch_size)
            grad_sq.append(g)
            trace_sigma.append(t)
    b_noise, error = (jackknife_ratio(trace_sigma, grad_sq) if grad_sq else (None, None))
    return {"steps": steps, "final_loss": sum(losses[-20:]) / len(losses[-20:]),
            "b_noise": b_noise, "b_noise_error": error, "measurements": len(grad_sq),
            "small_batch": setup.cfg.batch_size,
            "big_batch": setup.cfg.batch_size * NOISE_SMALL_BATCHES,
            "grad_sq": grad_sq, "trace_sigma": trace_sigma}


def measure_noise(setup: Setup, images, labels) -> tuple[float, float]:
    """Unbiased (|G|², tr Σ) from one big batch cut into base batches: the small estimate is the
    mean squared norm of the parts' gradients, the big one the squared norm of their mean."""
    small = setup.cfg.batch_size
    small_sq, big_sq = noise_scale.parts_squared_norms(
        setup.model, lambda x, y: forward_loss(setup, prepare_input(setup, x), y)[0],
        images, labels, small)
    g_sq, trace = noise_scale.unbiased_estimates(small_sq.item(), small, big_sq.item(),
                                                 len(labels))
    return float(g_sq), float(trace)


def top_curvature(setup: Setup, images: int, iters: int, ledger: Ledger) -> dict:
    """λ_max of the training loss (train-mode batch norm over the base batch's groups, its
    running statistics restored) on a fixed sample, by power iteration."""
    generator = torch.Generator().manual_seed(setup.cfg.seed)
    index = torch.randperm(len(setup.train), generator=generator)[:images].to(setup.device)
    x = prepare_input(setup, normalize(setup.train.images.index_select(0, index)))
    y = setup.train.labels[index]
    chunk = setup.cfg.group_size

    def chunks():
        for start in range(0, len(y), chunk):
            loss, _ = forward_loss(setup, x[start:start + chunk], y[start:start + chunk])
            yield loss, len(y[start:start + chunk]) / len(y)

    params = [p for p in setup.model.parameters() if p.requires_grad]
    with noise_scale.batch_norm_buffers_kept(setup.model):
        result = hessian.top_eigenvalue(chunks, params, HESSIAN_TOL, iters, setup.cfg.seed)
    ledger.spend("Hessian", 2 * images * result.iterations)
    return {"lambda_max": result.eigenvalue, "iterations": result.iterations,
            "converged": result.converged, "images": images}


def probe_batch(setup: Setup, warm: dict, steps: int, ledger: Ledger, classes: int) -> RangeTest:
    """The range test at one batch from the warmed-up state: rates from peak / RAMP_SPAN to
    peak × RAMP_SPAN over `steps` steps."""
    load_state(setup, warm)
    stream = batches_of(setup, 2)
    batch = setup.cfg.batch_size

    def step(lr: float) -> float:
        set_lr(setup.optimizer, lr)
        images, labels = next(stream)
        loss, _ = train_step(setup, prepare_input(setup, images), labels)
        ledger.spend(f"range test B={batch}", batch)
        return loss.item()

    peak = setup.cfg.peak_lr
    return range_test(step, peak / RAMP_SPAN, peak * RAMP_SPAN, steps,
                      patience=patience_at(batch), chance=math.log(classes))


# ---------------------------------------------------------------------- the command
def check_batches(text: str, cfg: TrainConfig) -> list[int]:
    """`--batches 4,16,64` as sorted distinct positive ints compatible with the recipe."""
    try:
        batches = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise UserError(f"--batches must be comma-separated positive integers, got {text!r}") \
            from None
    if not batches or batches[0] < 1:
        raise UserError(f"--batches must be comma-separated positive integers, got {text!r}")
    for batch in batches:
        if cfg.bn_group and batch % cfg.bn_group:
            raise UserError(f"--batches: {batch} is not a multiple of bn_group {cfg.bn_group}")
    return batches


def probe_row(at_b: Setup, warm: dict, plan: Plan, ledger: Ledger, classes: int,
              bound_lr: float | None, lambda_max: float | None) -> dict:
    """One batch's row: its throughput and memory, its range test if the plan has one for it and
    it fits, and the verdict."""
    batch = at_b.cfg.batch_size
    load_state(at_b, warm)
    timing = time_steps(at_b, batches_of(at_b, 3), ledger)
    test = None
    if batch in plan.tested and timing["fits"]:
        test = probe_batch(at_b, warm, plan.ramp_steps, ledger, classes)
    test_record = None if test is None else {
        "diverged": test.diverged, "stable_lr": test.stable_lr,
        "diverge_lr": test.diverge_lr, "steps": len(test.losses), "ratio": test.ratio,
        "low": test.lrs[0], "lrs": test.lrs, "losses": test.losses}
    peak = at_b.cfg.peak_lr
    state, margin, reason = verdict(peak, test_record, bound_lr)
    return {"batch": batch, **timing, "peak_lr": peak, "warmup_steps": at_b.plan.warmup_steps,
            "recipe_steps": at_b.plan.total_steps, "range_test": test_record,
            "curvature_product": None if bound_lr is None else peak * lambda_max,
            "curvature_bound_lr": bound_lr, "verdict": state, "margin": margin,
            "reason": reason}


def advise(cfg: TrainConfig, batches: list[int], out: Path, budget_images: int = 0,
           overwrite: bool = False, quiet: bool = False) -> dict:
    """Run the probe for `cfg`'s recipe at `batches`; write advice.json/.md/.png into `out`."""
    out = Path(out)
    if (out / RESULT_JSON).exists() and not overwrite:
        raise UserError(f"{out / RESULT_JSON} exists; pass --overwrite to replace it")
    started = time.perf_counter()
    base_cfg = config_at(cfg, cfg.base_batch_size)
    setup = build(base_cfg, progress=not quiet)
    train_images = len(setup.train)
    too_big = [b for b in batches if b > train_images]
    if too_big:
        raise UserError(f"--batches: {too_big[0]} exceeds the {train_images} training images")
    full_run = train_images * cfg.epochs
    budget = budget_images or int(DEFAULT_BUDGET_FRACTION * full_run)
    if budget < 1:
        raise UserError(f"--budget-images must be positive, got {budget_images}")
    plan = plan_probe(cfg, batches, train_images, budget)
    ledger = Ledger(budget)
    classes = int(setup.train.labels.max().item()) + 1
    say = (lambda *_: None) if quiet else (lambda text: print(text, flush=True))

    say(f"advise: budget {budget} images ({budget / full_run:.1%} of a full run at "
        f"B = {cfg.base_batch_size}); warming up the base batch for {plan.base_steps} steps")
    noise = warm_up_base(setup, plan.base_steps, plan, ledger)
    curvature = (top_curvature(setup, plan.hessian_images, plan.hessian_iters, ledger)
                 if plan.hessian_images else {"lambda_max": None, "iterations": 0,
                                              "converged": False, "images": 0})
    warm = state_of(setup)
    beta = momentum_of(cfg)
    bound_lr = (2 * (1 + beta) / curvature["lambda_max"]
                if beta is not None and (curvature["lambda_max"] or 0) > 0 else None)
    rows = []
    for batch in batches:
        rows.append(probe_row(setup_at(setup, batch), warm, plan, ledger, classes, bound_lr,
                              curvature["lambda_max"]))
        say(f"  B = {batch}: {rows[-1]['verdict']} ({rows[-1]['reason']})")
    base_steps = train_images // cfg.base_batch_size * cfg.epochs
    predictions(rows, cfg.base_batch_size, base_steps, noise)
    record = {
        "config": cfg.to_dict(), "batches": batches, "base_batch": cfg.base_batch_size,
        "train_images": train_images, "full_run_images": full_run,
        "budget_images": budget, "probe_images": ledger.spent,
        "probe_fraction": ledger.spent / full_run, "probe_pieces": ledger.pieces,
        "probe_wall_s": time.perf_counter() - started, "device": str(setup.device),
        "base_run_steps": base_steps, "plan": dataclasses.asdict(plan),
        "noise": noise, "curvature": curvature, "momentum": beta,
        "criterion": {"factor": DIVERGE_FACTOR, "patience": DIVERGE_PATIENCE,
                      "limit": "min(factor × the first window's mean loss, ln(classes)); "
                               "mean of the last max(patience, 64/B) losses above it",
                      "safety": SAFETY, "ramp_span": RAMP_SPAN},
        "rows": rows, "advice": advice_for(rows, cfg), "cannot_know": CANNOT_KNOW,
    }
    write_outputs(record, out)
    return record



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
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from batchscale import files
from batchscale.analysis import hessian
from batchscale.config import TrainConfig, from_dict
from batchscale.engine import noise as noise_scale
from batchscale.engine.data import EpochLoader, normalize
from batchscale.engine.optim import set_lr
from batchscale.engine.schedule import plan_from_config
from batchscale.engine.setup import Setup, build
from batchscale.engine.step import forward_loss, prepare_input, train_step
from batchscale.errors import UserError
from batchscale.files import atomic_write

RESULT_JSON, RESULT_MD, RESULT_PNG = "advice.json", "advice.md", "advice.png"
DEFAULT_BUDGET_FRACTION = 0.10  # of one full run's training images at the base batch

# The per-step divergence criterion of a probe (see `step_diverged`).
DIVERGE_FACTOR, DIVERGE_PATIENCE = 2.0, 3
# A batch is "stable" when its peak lr is at most the range test's stable lr / SAFETY: the short
# test holds each rate for one step, a run holds the peak for thousands.
SAFETY = 1.5
RAMP_SPAN = 10.0  # the range test at B ramps from peak(B) / SPAN to peak(B) × SPAN
MAX_RAMP_STEPS, MIN_RAMP_STEPS = 200, 20
TIMED_STEPS = 2  # after one untimed step
NOISE_SMALL_BATCHES = 8  # a noise measurement: this many base batches, one big batch
MAX_NOISE_MEASUREMENTS = 24
HESSIAN_IMAGES, HESSIAN_ITERS, HESSIAN_TOL = 256, 10, 1e-2


# ---------------------------------------------------------------------- divergence of a probe
def step_diverged(losses: list[float], reference: float, factor: float = DIVERGE_FACTOR,
                  patience: int = DIVERGE_PATIENCE, chance: float | None = None) -> bool:
    """Has a probe diverged (or collapsed) at its latest step? Yes when the latest loss is
    non-finite, or when the mean of the last `patience` losses exceeds the limit: `factor` ×
    `reference` (the probe's loss at its start), or for a classifier that started better than
    chance, already the chance loss `chance` = ln(classes) (collapse: no better than guessing).
    The mean over a window, not every loss, so that small batches' noisy losses neither trigger
    it alone nor hide a collapse.

    This judges the steps of a probe. Whether a whole run diverged or collapsed is the
    run-level definition in engine/collapse.py; the two are meant to agree, and this one is kept
    in this single function so that they can be wired together."""
    if not losses:
        return False
    if not math.isfinite(losses[-1]):
        return True
    if len(losses) < patience:
        return False
    return sum(losses[-patience:]) / patience > divergence_limit(reference, factor, chance)


def divergence_limit(reference: float, factor: float = DIVERGE_FACTOR,
                     chance: float | None = None) -> float:
    limit = factor * reference
    return min(limit, chance) if chance is not None and reference < chance else limit


def patience_at(batch: int) -> int:
    """Steps averaged by the criterion at batch B: at least DIVERGE_PATIENCE, and enough steps
    for 64 images (a batch of 4 averages 16 losses)."""
    return max(DIVERGE_PATIENCE, math.ceil(64 / batch))


# ---------------------------------------------------------------------- the lr range test
@dataclass
class RangeTest:
    lrs: list[float]  # the rate of every step taken
    losses: list[float]  # the loss of every step taken (before its update)
    ratio: float  # one step of the ramp multiplies the rate by this
    diverged: bool
    stable_lr: float  # the last rate whose loss stayed within the limit (a lower bound if not
    #                   diverged: the top of the ramp)
    diverge_lr: float | None  # the first rate of the run of losses over the limit


def lr_ramp(low: float, high: float, steps: int) -> list[float]:
    """`steps` rates from `low` to `high`, each the previous × (high/low)^(1/(steps-1))."""
    if not 0 < low < high or steps < 2:
        raise ValueError(f"need 0 < low < high and steps ≥ 2, got {low}, {high}, {steps}")
    return [low * (high / low) ** (t / (steps - 1)) for t in range(steps)]


def range_test(step: Callable[[float], float], low: float, high: float, steps: int,
               factor: float = DIVERGE_FACTOR, patience: int = DIVERGE_PATIENCE,
               chance: float | None = None) -> RangeTest:
    """Take up to `steps` steps at exponentially rising rates, stopping at divergence.

    `step(lr)` takes one step at rate lr and returns its loss; the criterion is `step_diverged`
    relative to the mean loss of the first `patience` steps. When it fires, the divergence is
    dated to the first step of the window that fired (the last step if a loss was non-finite):
    the stable lr is the rate of the step before it."""
    rates = lr_ramp(low, high, steps)
    ratio = rates[1] / rates[0]
    losses: list[float] = []
    for lr in rates:
        losses.append(float(step(lr)))
        # the reference: the mean of the first window (one small batch's loss is too noisy)
        reference = sum(losses[:patience]) / len(losses[:patience])
        if step_diverged(losses, reference, factor, patience, chance):
            start = (len(losses) - 1 if not math.isfinite(losses[-1])
                     else len(losses) - patience)
            stable = rates[start - 1] if start > 0 else rates[0] / ratio
            return RangeTest(rates[:len(losses)], losses, ratio, True, stable, rates[start])
    return RangeTest(rates, losses, ratio, False, rates[-1], None)


# ---------------------------------------------------------------------- step efficiency
def steps_needed(s_min: float, b_noise: float, batch: float) -> float:
    """S(B) = S_min (1 + B_noise / B): steps to a given loss (McCandlish et al. 2018, eq. 2.11)."""
    return s_min * (1 + b_noise / batch)


def images_needed(e_min: float, b_noise: float, batch: float) -> float:
    """E(B) = E_min (1 + B / B_noise): training images to the same loss."""
    return e_min * (1 + batch / b_noise)


def minima_from_base(base_steps: float, base_batch: float, b_noise: float) -> tuple[float, float]:
    """(S_min, E_min) of the run that took `base_steps` steps at `base_batch`:
    S_min = S(B0) / (1 + B_noise/B0), E_min = S_min × B_noise."""
    s_min = base_steps / (1 + b_noise / base_batch)
    return s_min, s_min * b_noise


def jackknife_ratio(numerators: list[float], denominators: list[float]) -> tuple[float, float]:
    """Σ num / Σ den and its jackknife standard error over the measurements."""
    n = len(numerators)
    total_num, total_den = sum(numerators), sum(denominators)
    ratio = total_num / total_den
    if n < 2:
        return ratio, None
    leave_one = [(total_num - a) / (total_den - b) for a, b in zip(numerators, denominators,
                                                                     strict=True)]
    mean = sum(leave_one) / n
    return ratio, math.sqrt((n - 1) / n * sum((v - mean) ** 2 for v in leave_one))


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
def config_at(cfg: TrainConfig, batch: int) -> TrainConfig:
    return from_dict({**cfg.to_dict(), "batch_size": batch, "track_noise_scale": False})


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


# ---------------------------------------------------------------------- verdicts and advice
def momentum_of(cfg: TrainConfig) -> float | None:
    """β of the heavy-ball bound; None where the bound does not apply (adaptive optimizers)."""
    return cfg.momentum if cfg.optimizer == "sgd" else None


def verdict(peak: float, test: dict | None, bound_lr: float | None) -> tuple[str, float | None,
                                                                              str]:
    """(stable | at risk | diverges, margin = stable lr / peak lr, the reason in words)."""
    curvature_ok = bound_lr is None or peak < bound_lr
    curvature = ("" if bound_lr is None else
                 f"; η·λ_max is {peak / bound_lr:.2f}× the bound 2(1+β)")
    if test is None:
        why = "no range test fitted the budget"
        if not curvature_ok:
            why += f", and the peak lr is above the curvature bound {bound_lr:.3g}"
        return "at risk", None, why
    margin = test["stable_lr"] / peak
    if test["diverged"] and margin < 1:
        return "diverges", margin, (f"the range test diverged at lr {test['diverge_lr']:.3g}; "
                                    f"last stable lr {test['stable_lr']:.3g} < peak {peak:.3g}")
    if test["diverged"] and margin < SAFETY:
        return "at risk", margin, (f"peak {peak:.3g} is within {SAFETY}× of the last stable lr "
                                   f"{test['stable_lr']:.3g}" + curvature)
    bounded = "" if test["diverged"] else "≥ "
    if not curvature_ok:
        return "at risk", margin, (f"range test stable to lr {bounded}{test['stable_lr']:.3g}, "
                                   f"but peak {peak:.3g} exceeds the curvature bound "
                                   f"2(1+β)/λ_max = {bound_lr:.3g}")
    return "stable", margin, f"range test stable to lr {bounded}{test['stable_lr']:.3g}" + (
        curvature if bound_lr is not None else "")


def predictions(rows: list[dict], base_batch: int, base_steps: int, noise: dict) -> None:
    """Fill S(B), E(B) and the predicted time (with the B_noise ± error band) into each row."""
    b_noise, error = noise["b_noise"], noise["b_noise_error"]
    for row in rows:
        row.update(predicted_steps=None, predicted_images=None, predicted_time_s=None,
                   predicted_time_range_s=None)
    if b_noise is None or not b_noise > 0:
        return
    low = max(b_noise - (error or 0.0), 1e-9)
    high = b_noise + (error or 0.0)
    for row in rows:
        times = []
        for value in (b_noise, low, high):
            s_min, e_min = minima_from_base(base_steps, base_batch, value)
            steps = steps_needed(s_min, value, row["batch"])
            images = images_needed(e_min, value, row["batch"])
            if value == b_noise:
                row["predicted_steps"], row["predicted_images"] = steps, images
            if row["images_per_s"]:
                times.append(images / row["images_per_s"])
        if times:
            row["predicted_time_s"] = times[0]
            row["predicted_time_range_s"] = [min(times), max(times)]


def advice_for(rows: list[dict], cfg: TrainConfig) -> dict:
    """The batch with the least predicted time among the stable ones, and why not the others."""
    stable = [r for r in rows if r["verdict"] == "stable" and r["fits"]]
    timed = [r for r in stable if r["predicted_time_s"] is not None]
    if timed:
        best = min(timed, key=lambda r: r["predicted_time_s"])
    elif stable:
        best = max(stable, key=lambda r: r["batch"])
    else:
        best = min(rows, key=lambda r: r["batch"])
    reasons = []
    for row in rows:
        if row["batch"] <= best["batch"]:
            continue
        if not row["fits"]:
            why = "does not fit in memory here"
        elif row["verdict"] != "stable":
            why = f"{row['verdict']}: {row['reason']}"
        elif row["predicted_time_s"] is not None and best["predicted_time_s"] is not None:
            why = (f"stable, but predicted {row['predicted_time_s'] / 60:.1f} min against "
                   f"{best['predicted_time_s'] / 60:.1f} min: it needs "
                   f"{row['predicted_images'] / best['predicted_images']:.2f}× the images "
                   f"(E(B) grows as 1 + B/B_noise) at {row['images_per_s']:.0f} img/s")
        else:
            why = "stable, but no time could be predicted (no noise scale)"
        reasons.append({"batch": row["batch"], "sentence": f"B = {row['batch']}: {why}."})
    cfg_best = config_at(cfg, best["batch"])
    note = "" if best["verdict"] == "stable" else (
        " No candidate was judged stable, so this is the smallest batch, not a recommendation.")
    return {"batch": best["batch"], "peak_lr": cfg_best.peak_lr,
            "warmup_epochs": cfg_best.warmup_epochs, "warmup_steps": best["warmup_steps"],
            "verdict": best["verdict"], "rejected": reasons, "note": note.strip()}


CANNOT_KNOW = [
    "Test accuracy: the probe measures whether training is stable and how fast the training "
    "loss falls, not the generalization gap at B (for example the accuracy that per-worker "
    "batch norm repairs); it gives no accuracy number.",
    "The noise scale later in training: B_noise is measured during warmup and usually grows as "
    "the loss falls, so S(B) and E(B) are for the early phase and under-predict the benefit of "
    "large batches later.",
    "Instabilities that need thousands of steps at the peak lr (the range test holds each rate "
    "for one step), or that come with the schedule's later phases.",
    "Times on other hardware, with other workloads on this machine, or with several workers.",
]


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
    rows, tests = [], {}
    for batch in batches:
        at_b = setup_at(setup, batch)
        load_state(at_b, warm)
        timing = time_steps(at_b, batches_of(at_b, 3), ledger)
        test = None
        if batch in plan.tested and timing["fits"]:
            test = probe_batch(at_b, warm, plan.ramp_steps, ledger, classes)
            tests[batch] = test
        test_record = None if test is None else {
            "diverged": test.diverged, "stable_lr": test.stable_lr,
            "diverge_lr": test.diverge_lr, "steps": len(test.losses), "ratio": test.ratio,
            "low": test.lrs[0], "lrs": test.lrs, "losses": test.losses}
        peak = at_b.cfg.peak_lr
        state, margin, reason = verdict(peak, test_record, bound_lr)
        rows.append({"batch": batch, **timing, "peak_lr": peak,
                     "warmup_steps": at_b.plan.warmup_steps,
                     "recipe_steps": at_b.plan.total_steps, "range_test": test_record,
                     "curvature_product": None if bound_lr is None else
                     peak * curvature["lambda_max"],
                     "curvature_bound_lr": bound_lr, "verdict": state, "margin": margin,
                     "reason": reason})
        say(f"  B = {batch}: {state} ({reason})")
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


# ---------------------------------------------------------------------- output
def fmt(value, spec: str = ".3g", none: str = "—") -> str:
    return none if value is None else format(value, spec)


def table(record: dict) -> str:
    """The per-batch table, in Markdown (also what the command prints)."""
    lines = ["| B | img/s | memory MB | fits | peak lr | stable lr (range test) | "
             "η·λ_max / 2(1+β) | verdict | margin | S(B) | E(B) | predicted time |",
             "|---:|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for row in record["rows"]:
        test = row["range_test"]
        if test is None:
            stable = "not tested"
        elif test["diverged"]:
            stable = f"{test['stable_lr']:.3g} (diverged at {test['diverge_lr']:.3g})"
        else:
            stable = f"≥ {test['stable_lr']:.3g}"
        ratio = (None if row["curvature_bound_lr"] is None
                 else row["peak_lr"] / row["curvature_bound_lr"])
        band = row["predicted_time_range_s"]
        time_text = "—" if row["predicted_time_s"] is None else (
            f"{row['predicted_time_s'] / 60:.1f} min ({band[0] / 60:.1f}–{band[1] / 60:.1f})")
        margin = fmt(row["margin"], ".2f")
        if test is not None and not test["diverged"] and row["margin"] is not None:
            margin = "≥ " + margin
        lines.append(
            f"| {row['batch']} | {fmt(row['images_per_s'], '.0f')} | "
            f"{fmt(row['memory_mb'], '.1f')} | {'yes' if row['fits'] else 'no'} | "
            f"{row['peak_lr']:.3g} | {stable} | {fmt(ratio, '.2f', 'n/a')} | {row['verdict']} | "
            f"{margin} | {fmt(row['predicted_steps'], '.0f')} | "
            f"{fmt(row['predicted_images'], '.3g')} | {time_text} |")
    return "\n".join(lines)


def markdown(record: dict) -> str:
    cfg, noise, curv, advice = (record["config"], record["noise"], record["curvature"],
                                record["advice"])
    b_noise = ("not measured" if noise["b_noise"] is None else
               f"{noise['b_noise']:.3g} ± {fmt(noise['b_noise_error'], '.2g', '?')}")
    rejected = "\n".join(f"- {r['sentence']}" for r in advice["rejected"]) or "- (none larger)"
    cannot = "\n".join(f"- {line}" for line in record["cannot_know"])
    pieces = ", ".join(f"{k} {v}" for k, v in record["probe_pieces"].items())
    untested = [str(r["batch"]) for r in record["rows"] if r["range_test"] is None]
    untested = f" Not tested (budget): B = {', '.join(untested)}." if untested else ""
    crit = record["criterion"]
    beta = record["momentum"]
    bound = ("" if beta is None or not (curv["lambda_max"] or 0) > 0
             else f" = {2 * (1 + beta) / curv['lambda_max']:.3g} (β = {beta})")
    state = "converged" if curv["converged"] else "NOT converged"
    return f"""# batchscale advise

Recipe: optimizer {cfg['optimizer']}, lr {cfg['lr']} at base batch {cfg['base_batch_size']},
scale rule {cfg['scale_rule']}, warmup {cfg['warmup_epochs']} epochs, bn_group {cfg['bn_group']},
{cfg['epochs']} epochs on {record['train_images']} training images ({cfg['dataset']}, width
{cfg['width']}); device {record['device']}.

## Advice

**B = {advice['batch']}**, peak lr {advice['peak_lr']:.4g}, warmup {advice['warmup_epochs']} epochs
({advice['warmup_steps']} steps). {advice['note']}

Larger batches, rejected:

{rejected}

## Per batch

{table(record)}

- *stable lr*: the last rate of the range test (from the warmed-up state, rates × ratio per
  step, from peak/{crit['ramp_span']:g} to peak × {crit['ramp_span']:g}) before the
  divergence criterion fired: the mean loss of the last max({crit['patience']}, 64/B) steps above
  min({crit['factor']:g}× the first window's mean, ln classes) (above chance: collapsed), or
  non-finite;
  *margin* = stable lr / peak lr; *stable* needs margin ≥ {crit['safety']} and the curvature
  bound; below 1 it *diverges*.{untested}
- λ_max = {fmt(curv['lambda_max'], '.4g', 'not measured')} ({state} after
  {curv['iterations']} power iterations on {curv['images']} images) at the end of the base
  batch's warmup; the bound is η < 2(1+β)/λ_max{bound}.
- B_noise = {b_noise} (jackknife error, {noise['measurements']} measurements of small batch
  {noise['small_batch']} vs big batch {noise['big_batch']}); S(B) = S_min (1 + B_noise/B),
  E(B) = E_min (1 + B/B_noise), from the base run's {record['base_run_steps']} steps; predicted
  time = E(B) / img/s (range: B_noise ± its error).

## Probe cost

{record['probe_images']} training images ({record['probe_fraction']:.1%} of one full run at the
base batch, budget {record['budget_images']}): {pieces}; {record['probe_wall_s'] / 60:.1f} min
wall-clock.

## What this probe cannot know

{cannot}
"""


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for row in record["rows"]:
        test = row["range_test"]
        if test is None:
            continue
        finite = [(lr, loss) for lr, loss in zip(test["lrs"], test["losses"], strict=True)
                  if math.isfinite(loss)]
        if finite:
            line, = left.plot(*zip(*finite, strict=True), label=f"B = {row['batch']}")
            left.axvline(row["peak_lr"], color=line.get_color(), ls=":", lw=1)
    left.set(xscale="log", xlabel="learning rate", ylabel="training loss",
             title="lr range test from the warmed-up state (dotted: recipe's peak lr)")
    left.set_ylim(top=min(left.get_ylim()[1], 10))
    left.legend(fontsize=8)
    colors = {"stable": "tab:green", "at risk": "tab:orange", "diverges": "tab:red"}
    for row in record["rows"]:
        if row["predicted_time_s"] is None:
            continue
        low, high = row["predicted_time_range_s"]
        minutes = row["predicted_time_s"] / 60
        right.errorbar(row["batch"], minutes, yerr=[[minutes - low / 60], [high / 60 - minutes]],
                       fmt="o", color=colors[row["verdict"]], capsize=3)
    for name, color in colors.items():
        right.plot([], [], "o", color=color, label=name)
    right.set(xscale="log", yscale="log", xlabel="batch size B",
              ylabel="predicted minutes to the base run's loss",
              title="predicted wall-clock per run on this machine")
    right.legend(fontsize=8)
    fig.tight_layout()
    files.save_figure(fig, path, 110)
    plt.close(fig)


def write_outputs(record: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=2) + "\n"
    atomic_write(out / RESULT_JSON, lambda handle: handle.write(text.encode()))
    md = markdown(record)
    atomic_write(out / RESULT_MD, lambda handle: handle.write(md.encode()))
    plot(record, out / RESULT_PNG)

"""How far can this recipe's batch be scaled? A short probe answers before the sweep is paid for.

    batchscale advise --config recipe.yaml --batches 4,16,64,256 --out advice/

For every candidate batch B the probe measures, on this machine and within a budget of training
images (default: 3 trials per batch, but at most one run of a recipe of up to 10 epochs, 10/epochs
of a run up to 100 epochs and a tenth of a run beyond -- never less than every batch's first
trial):

1. throughput (img/s over a few timed steps) and memory (activations kept for backward plus the
   parameters, gradients and optimizer state; on CUDA the allocator's peak), and whether it fits;
2. stability, by held-peak trials: from the recipe's warmed-up base state (the base batch trained
   through its warmup; the initialization when it has none) a trial replays the warmup ramp to a
   candidate peak at B and holds that peak, and is judged by the engine's collapse rule and a
   loss-progress test (advise_rules.judge_trial); every trial at B sees the same batches, so
   trials differ only in the rate. Per B the largest stable peak is bracketed by
   log bisection from the recipe's peak (factor 2, then √2 as the budget allows), and the verdict
   compares the recipe's peak with the bracket;
3. the largest positive eigenvalue λ_max of the training loss's Hessian at the base state
   (Lanczos) and the gradient noise scale B_noise there (McCandlish et al. 2018), as context:
   neither decides a verdict, and no step or time prediction is made from them;
4. the advice: the largest batch judged stable that fits, its peak lr and warmup, and one
   sentence for each larger batch it rejects.

The images every piece costs are counted (a Hessian-vector product as two passes of its images)
and the pieces are sized before anything runs; every batch gets its first trial before any batch
gets a second, and a batch the budget cannot hold a trial for is named, with the budget that
would. `probe(setup, batches, budget)` is the measurement on an already built setup (config,
model, data); `advise()` builds one from a config and writes the files.

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
from batchscale.analysis.advise_report import OUTPUTS, write_outputs
from batchscale.analysis.advise_rules import (
    CANNOT_KNOW,
    HOLD_EPOCHS,
    HOLD_MAX,
    HOLD_MIN,
    RAMP_STEPS,
    SAFETY,
    START,
    Bracket,
    advice_for,
    config_at,
    exploded,
    hold_steps,
    judge_trial,
    momentum_of,
    ramp_steps,
    trial_rates,
    verdict,
    window_steps,
)
from batchscale.config import TrainConfig
from batchscale.engine import noise as noise_scale
from batchscale.engine.data import EpochLoader
from batchscale.engine.norm import set_group_size
from batchscale.engine.optim import set_lr, sgd_momentum
from batchscale.engine.schedule import plan_from_config
from batchscale.engine.setup import Setup, build
from batchscale.engine.step import forward_loss, prepare_input, train_step
from batchscale.errors import UserError

DEFAULT_BUDGET_FRACTION = 0.10  # of one full run's training images at the base batch
DEFAULT_TRIALS = 3  # the default budget holds this many trials per batch (first + 2 bisection)
TIMED_STEPS = 1  # after one untimed step (throughput is reported, not used to predict)
NOISE_SMALL_BATCHES = 8  # a noise measurement: this many base batches, one big batch
NOISE_MEASUREMENTS = 2
HESSIAN_IMAGES, HESSIAN_ITERS, HESSIAN_TOL = 32, 10, 1e-2
JUDGE_IMAGES = 128  # the fixed sample of the loss-progress test
TRIAL_STREAM = 10  # every trial at a batch sees the same batches: trials differ only in the rate


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
        hold[batch] = hold_steps(at_b.steps_per_epoch, at_b.total_steps - at_b.warmup_steps)
    base_plan = plan_from_config(config_at(cfg, base), train_images // base)
    hessian_images = min(max(HESSIAN_IMAGES, cfg.group_size), train_images)
    hessian_images = max(hessian_images - hessian_images % cfg.group_size, 0)
    judge = min(JUDGE_IMAGES, train_images)
    # the base state: the base batch through the recipe's warmup, at least one epoch
    base_steps = max(base_plan.warmup_steps, base_plan.steps_per_epoch)
    warm = START == "warm" and cfg.warmup_epochs > 0  # no warmup: the run starts at the peak
    return Plan(base_steps=base_steps if warm else 0,
                noise_measurements=NOISE_MEASUREMENTS, hessian_images=hessian_images,
                hessian_iters=HESSIAN_ITERS, timing_images=(1 + TIMED_STEPS) * sum(batches),
                ramp=ramp, hold=hold, judge_images=judge - judge % cfg.group_size or judge)


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


# ---------------------------------------------------------------------- the probe's pieces
def setup_at(base: Setup, batch: int) -> Setup:
    """The base setup's data and model with the recipe's config and lr plan at `batch`."""
    cfg = config_at(base.cfg, batch)
    plan = plan_from_config(cfg, len(base.train) // batch)
    return dataclasses.replace(base, cfg=cfg, plan=plan, noise=None, train_model=None)


def recipe_groups(setup: Setup) -> None:
    """Batch norm as the recipe has it at every batch the probe trains: groups of bn_group, or the
    whole batch without groups. The model is built for the base batch (its groups are the base
    batch), so without this a whole-batch-BN recipe was probed at B > base with BN over groups of
    the base batch -- the per-worker-BN recipe instead of its own."""
    set_group_size(setup.model, setup.cfg.bn_group if setup.cfg.bn_impl == "ghost" else 0)


def state_of(setup: Setup) -> dict:
    return copy.deepcopy({"model": setup.model.state_dict(),
                          "optimizer": setup.optimizer.state_dict()})


def load_state(setup: Setup, state: dict) -> None:
    setup.model.load_state_dict(state["model"])
    # a copy: Optimizer.load_state_dict keeps the given tensors when dtype and device already
    # match, so the momentum buffers of every trial after the first were the previous trial's
    setup.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))


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


def warm_up_base(setup: Setup, steps: int, ledger: Ledger) -> dict:
    """Train the base batch through the recipe's warmup (its rates, its first steps)."""
    stream = batches_of(setup, 0)
    losses = []
    for step in range(steps):
        set_lr(setup.optimizer, setup.plan.lr_at(step))
        images, labels = next(stream)
        loss, _ = train_step(setup, prepare_input(setup, images), labels)
        ledger.spend("base warmup", len(labels))
        losses.append(loss.item())
    tail = losses[-20:]
    return {"steps": steps, "final_loss": sum(tail) / len(tail) if tail else None}


def noise_at(setup: Setup, measurements: int, ledger: Ledger) -> dict:
    """B_noise at the base state: `measurements` big batches of NOISE_SMALL_BATCHES base batches,
    each observed by the public estimator (`NoiseScale`, the one behind `batchscale.NoiseScale`
    and the engine's tracking) as its base batches' gradients (small) and their mean (big); no
    step is taken. B_noise is the ratio of the mean estimates (NoiseScale over an infinite
    span), its error the jackknife over the measurements."""
    if measurements < 1:
        return {"b_noise": None, "b_noise_error": None, "measurements": 0,
                "why_not": "no measurement planned"}
    big = setup_at(setup, setup.cfg.batch_size * NOISE_SMALL_BATCHES)
    if big.cfg.batch_size > len(setup.train):
        return {"b_noise": None, "b_noise_error": None, "measurements": 0,
                "why_not": f"{NOISE_SMALL_BATCHES} base batches ({big.cfg.batch_size} images) "
                           f"exceed the {len(setup.train)} training images"}
    stream = batches_of(big, 1)
    with (noise_scale.batch_norm_buffers_kept(setup.model),
          noise_scale.NoiseScale(setup.model, span=math.inf) as tracked):
        for _ in range(measurements):
            measure_noise(setup, tracked, *next(stream))
            ledger.spend("noise scale", big.cfg.batch_size)
        estimate = tracked.estimate()
        observed = ([] if tracked.tracker is None else  # None: no gradient reached a hook
                    tracked.tracker.state["recent"][:tracked.tracker.state["count"]].tolist())
    grad_sq, trace_sigma = [g for g, _ in observed], [t for _, t in observed]
    if not observed:
        return {"b_noise": None, "b_noise_error": None, "measurements": 0,
                "why_not": "no gradient reached a trainable parameter"}
    if not all(math.isfinite(v) for v in grad_sq + trace_sigma):
        return {"b_noise": None, "b_noise_error": None, "measurements": len(grad_sq),
                "why_not": "the gradients at the base state are not finite"}
    if not estimate.defined:
        return {"b_noise": None, "b_noise_error": None, "measurements": len(grad_sq),
                "why_not": "the unbiased |G|² estimate was not positive (noise dominates at "
                           "this state)", "grad_sq": grad_sq, "trace_sigma": trace_sigma}
    return {"b_noise": estimate.b_simple, "b_noise_error": estimate.error,
            "measurements": len(grad_sq), "small_batch": estimate.small_batch,
            "big_batch": estimate.big_batch, "grad_sq": grad_sq, "trace_sigma": trace_sigma,
            "estimator": "batchscale.NoiseScale", "why_not": None}


def measure_noise(setup: Setup, tracked: noise_scale.NoiseScale, images, labels) -> None:
    """One observation of `tracked` (a NoiseScale on the setup's model) from one big batch cut
    into base batches, each its own forward and backward (batch norm over the base batch):
    the small gradients are the parts', the big one their mean. The gradients are cleared
    before and after (no step is taken)."""
    setup.optimizer.zero_grad(set_to_none=True)
    tracked.backward(lambda x, y: forward_loss(setup, prepare_input(setup, x), y)[0],
                     images, labels, parts=len(labels) // setup.cfg.batch_size)
    tracked.step()
    setup.optimizer.zero_grad(set_to_none=True)


def top_curvature(setup: Setup, images: int, iters: int, ledger: Ledger) -> dict:
    """The largest positive eigenvalue λ_max of the training loss's Hessian (train-mode batch
    norm over the base batch's groups, its running statistics restored) on a fixed sample, by
    Lanczos with a residual convergence check."""
    if images < 1:
        return {"lambda_max": None, "iterations": 0, "converged": False, "images": 0,
                "why_not": "fewer training images than one batch-norm group"}
    generator = torch.Generator().manual_seed(setup.cfg.seed)
    index = torch.randperm(len(setup.train), generator=generator)[:images].to(setup.device)
    x = prepare_input(setup, setup.train.inputs(index))
    y = setup.train.labels[index]
    chunk = setup.cfg.group_size

    def chunks():
        for start in range(0, len(y), chunk):
            loss, _ = forward_loss(setup, x[start:start + chunk], y[start:start + chunk])
            yield loss, len(y[start:start + chunk]) / len(y)

    params = [p for p in setup.model.parameters() if p.requires_grad]
    if not all(torch.isfinite(p).all() for p in params):
        return {"lambda_max": None, "iterations": 0, "converged": False, "images": 0,
                "why_not": "the base state's weights are not finite"}
    with noise_scale.batch_norm_buffers_kept(setup.model):
        try:
            result = hessian.top_positive_eigenvalue(chunks, params, HESSIAN_TOL, iters,
                                                     setup.cfg.seed)
        except RuntimeError as error:  # e.g. eigh of a non-finite tridiagonal matrix
            ledger.spend("Hessian", 2 * images * iters)
            return {"lambda_max": None, "iterations": 0, "converged": False, "images": images,
                    "why_not": f"Lanczos failed: {error}"}
    ledger.spend("Hessian", 2 * images * result.iterations)
    return {"lambda_max": result.eigenvalue, "lambda_min_ritz": result.smallest,
            "residual": result.residual, "iterations": result.iterations,
            "converged": result.converged, "images": images, "method": "Lanczos", "why_not": None}


def fixed_sample(setup: Setup, images: int):
    generator = torch.Generator().manual_seed(setup.cfg.seed + 7)
    index = torch.randperm(len(setup.train), generator=generator)[:images].to(setup.device)
    return prepare_input(setup, setup.train.inputs(index)), setup.train.labels[index]


def sample_loss(setup: Setup, sample, ledger: Ledger) -> float:
    """The mean training-mode loss (batch norm over the recipe's groups, or over the whole
    sample without groups; its running statistics restored) on a fixed sample: one
    deterministic function of the weights."""
    x, y = sample
    chunk = min(setup.cfg.bn_group or len(y), len(y))
    total = 0.0
    with torch.no_grad(), noise_scale.batch_norm_buffers_kept(setup.model):
        for start in range(0, len(y), chunk):
            loss, _ = forward_loss(setup, x[start:start + chunk], y[start:start + chunk])
            total += loss.item() * len(y[start:start + chunk])
    ledger.spend("trial judging", len(y))
    return total / len(y)


def run_trial(at_b: Setup, warm: dict, peak: float, ramp: int, hold: int, ledger: Ledger,
              classes: int, seed_offset: int, sample, start_loss: float):
    """One held-peak trial at `at_b`'s batch from the base state `warm`: the recipe's warmup
    ramp (from its base rate) compressed to `ramp` steps up to `peak`, then `hold` steps at it;
    stops early at a non-finite loss or an exploded window. Returns the judgement and the
    per-step (lr, loss, accuracy)."""
    load_state(at_b, warm)
    stream = batches_of(at_b, seed_offset)
    batch = at_b.cfg.batch_size
    rates = trial_rates(at_b.cfg.lr, peak, ramp, hold)
    width = window_steps(batch)
    losses, accs = [], []
    hold_start = None
    for step, lr in enumerate(rates):
        if step == ramp and ramp > 0:  # the peak is reached: the second progress reference
            hold_start = sample_loss(at_b, sample, ledger)
        set_lr(at_b.optimizer, lr)
        images, labels = next(stream)
        loss, logits = train_step(at_b, prepare_input(at_b, images), labels)
        ledger.spend(f"trials B={batch}", batch)
        losses.append(loss.item())
        accs.append((logits.argmax(1) == labels.to(logits.device)).float().mean().item())
        if not math.isfinite(losses[-1]):
            break
        if len(losses) >= width and exploded(losses[-width:], accs[-width:], batch, classes):
            break
    end_loss = sample_loss(at_b, sample, ledger) if math.isfinite(losses[-1]) else math.inf
    judgement = judge_trial(losses, accs, batch, classes, start_loss, end_loss, hold_start)
    judgement.hold_start_loss = hold_start
    return judgement, rates[:len(losses)], losses, accs


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


def check_out(out: Path, overwrite: bool) -> None:
    """Every output path is checked before anything is computed: `out` is a folder or can be
    made one, and no advice file in it is replaced without --overwrite."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    for name in OUTPUTS:
        target = out / name
        if target.exists() and not overwrite:
            raise UserError(f"{target} exists; pass --overwrite to replace it")
        if target.exists() and not target.is_file():
            raise UserError(f"{target} exists and is not a file")
    ancestor = out
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"--out {out}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {ancestor} is not writable")


def probe(setup: Setup, batches: list[int], budget_images: int = 0, say=None) -> dict:
    """The probe on a built base setup (`setup.cfg` is the recipe at its base batch; its model
    is trained in place): the record advise.json holds, without writing anything."""
    say = say or (lambda *_: None)
    started = time.perf_counter()
    cfg = setup.cfg
    train_images = len(setup.train)
    too_big = [b for b in batches if b > train_images]
    if too_big:
        raise UserError(f"--batches: {too_big[0]} exceeds the {train_images} training images")
    full_run = train_images * cfg.epochs
    plan = plan_probe(cfg, batches, train_images)
    fixed, needed = plan.fixed_images(cfg.base_batch_size), plan.needed(cfg.base_batch_size)
    budget = budget_images or default_budget(plan, cfg.base_batch_size, full_run, cfg.epochs)
    if budget < fixed:
        raise UserError(f"--budget-images {budget} is too small: timing, the base warmup, the "
                        f"noise scale and the Hessian take {fixed} images; {needed} give every "
                        f"batch its first trial")
    ledger = Ledger(budget)
    classes = getattr(setup, "classes", None) or int(setup.train.labels.max().item()) + 1
    share = budget / full_run
    say(f"advise: budget {budget} images ({share:.1%} of a full run at B = "
        f"{cfg.base_batch_size}{'; over 10% because the trials need it' if share > 0.1 else ''}"
        f"{'; more than a run: every batch gets its first trial' if share > 1 else ''})"
        f"; base warmup {plan.base_steps} steps")
    recipe_groups(setup)
    init = state_of(setup)
    base = warm_up_base(setup, plan.base_steps, ledger)
    noise = noise_at(setup, plan.noise_measurements, ledger)
    curvature = top_curvature(setup, plan.hessian_images, plan.hessian_iters, ledger)
    warm = state_of(setup) if plan.base_steps else init
    sample = fixed_sample(setup, plan.judge_images)
    start_loss = sample_loss(setup, sample, ledger)
    at = {b: setup_at(setup, b) for b in batches}
    timing = {}
    for batch in batches:
        load_state(at[batch], warm)
        timing[batch] = time_steps(at[batch], batches_of(at[batch], 3), ledger)
    brackets = {b: Bracket(at[b].cfg.peak_lr) for b in batches}
    curves = {b: [] for b in batches}
    # round 1: every batch its first trial (smallest first); then one bisection step per batch
    # per round while the budget holds it
    progress = True
    while progress:
        progress = False
        for batch in batches:
            candidate = brackets[batch].next_candidate()
            if candidate is None or not timing[batch]["fits"]:
                continue
            if plan.trial_images(batch) > ledger.left():
                continue
            judgement, rates, losses, accs = run_trial(
                at[batch], warm, candidate, plan.ramp[batch], plan.hold[batch], ledger, classes,
                TRIAL_STREAM, sample, start_loss)
            brackets[batch].record(candidate, judgement, len(losses), len(losses) * batch)
            curves[batch].append({"lr": candidate, "rates": rates, "losses": losses,
                                  "accs": accs, "failed": judgement.failed})
            progress = True
    rows = []
    beta = momentum_of(cfg)
    lam = curvature["lambda_max"]
    bound_lr = 2 * (1 + beta) / lam if beta is not None and lam is not None and lam > 0 else None
    for batch in batches:
        row = brackets[batch]
        peak = at[batch].cfg.peak_lr
        state, margin, reason = verdict(peak, row.low, row.high)
        if not row.trials:
            why = ("does not fit in memory" if not timing[batch]["fits"] else
                   f"the budget could not hold its first trial ({plan.trial_images(batch)} "
                   f"images); --budget-images {needed} gives every batch its first")
            reason = f"no trial at B = {batch}: {why}"
        rows.append({"batch": batch, **timing[batch], "peak_lr": peak,
                     "warmup_steps": at[batch].plan.warmup_steps,
                     "recipe_steps": at[batch].plan.total_steps,
                     "trial_ramp_steps": plan.ramp[batch], "trial_hold_steps": plan.hold[batch],
                     "trial_images": plan.trial_images(batch),
                     "bracket_low": row.low, "bracket_high": row.high, "trials": row.trials,
                     "curves": curves[batch],
                     "curvature_product": None if bound_lr is None else peak * lam,
                     "curvature_bound_lr": bound_lr, "verdict": state, "margin": margin,
                     "reason": reason})
        say(f"  B = {batch}: {state} ({reason})")
    return {
        "config": cfg.to_dict(), "batches": batches, "base_batch": cfg.base_batch_size,
        "train_images": train_images, "full_run_images": full_run,
        "budget_images": budget, "budget_default": not budget_images,
        "budget_needed_first_trials": needed, "probe_images": ledger.spent,
        "probe_fraction": ledger.spent / full_run, "probe_pieces": ledger.pieces,
        "probe_wall_s": time.perf_counter() - started, "device": str(setup.device),
        "plan": dataclasses.asdict(plan), "base": base, "noise": noise, "curvature": curvature,
        "momentum": beta,
        "rules": {"start": START, "trial_stream": "the same batches for every trial at a B",
                  "ramp_steps": RAMP_STEPS, "hold_epochs": HOLD_EPOCHS,
                  "hold_min": HOLD_MIN, "hold_max": HOLD_MAX, "safety": SAFETY,
                  "judge": "failed: a non-finite loss; the last window exploded by "
                           "engine/collapse.py (at chance, loss ≥ 1.25 ln C); or the fixed "
                           "sample's loss more than half way back to chance from both the "
                           "trial's start and the peak's start. window = max(3, 256/B) steps"},
        "rows": rows, "advice": advice_for(rows, cfg), "cannot_know": CANNOT_KNOW,
    }


def advise(cfg: TrainConfig, batches: list[int], out: Path, budget_images: int = 0,
           overwrite: bool = False, quiet: bool = False, user: dict | None = None) -> dict:
    """Run the probe for `cfg`'s recipe at `batches`; write advice.json/.md/.png into `out`
    (checked before anything is computed). `user`: a user's pieces for `setup.build` (data,
    model_factory, make_optimizer, loss_fn; batchscale.advise) and under "described" what the
    record's config says of them in place of the config's own fields."""
    out = Path(out)
    check_out(out, overwrite)
    if budget_images < 0:
        raise UserError(f"--budget-images must be positive, got {budget_images}")
    say = (lambda *_: None) if quiet else (lambda text: print(text, flush=True))
    pieces = dict(user or {})
    described = pieces.pop("described", {})
    setup = build(config_at(cfg, cfg.base_batch_size), progress=not quiet, **pieces)
    custom = pieces.get("make_optimizer") is not None
    beta = sgd_momentum(setup.optimizer) if custom else None
    record = probe(setup, batches, budget_images, say)
    record["config"].update(described)
    if custom:  # the heavy-ball bound from the user's optimizer (plain SGD only), not the config
        lam = record["curvature"]["lambda_max"]
        bound = 2 * (1 + beta) / lam if beta is not None and lam is not None and lam > 0 else None
        record["momentum"] = beta
        for row in record["rows"]:
            row["curvature_bound_lr"] = bound
            row["curvature_product"] = None if bound is None else row["peak_lr"] * lam
    write_outputs(record, out)
    return record

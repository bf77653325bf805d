"""The pieces `batchscale advise` measures with, on a built setup: the setup at another batch, the
saved and restored training state, throughput and memory, the base warmup, the noise scale, the
curvature, the fixed sample's loss and one held-peak trial. advise.py runs them within the budget
(advise_budget.py) and decides by the rules (advise_rules.py).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time

import torch

from batchscale.analysis import hessian
from batchscale.analysis.advise_budget import HESSIAN_TOL, NOISE_SMALL_BATCHES, TIMED_STEPS, Ledger
from batchscale.analysis.advise_rules import (
    config_at,
    exploded,
    input_share,
    judge_trial,
    stop_after,
    trial_rates,
    window_steps,
)
from batchscale.engine import noise as noise_scale
from batchscale.engine import noise_hook
from batchscale.engine.data import EpochLoader
from batchscale.engine.norm import set_group_size
from batchscale.engine.optim import set_lr
from batchscale.engine.schedule import plan_from_config
from batchscale.engine.setup import Setup
from batchscale.engine.step import forward_loss, prepare_input, train_step


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
    with (noise_hook.batch_norm_buffers_kept(setup.model),
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
    with noise_hook.batch_norm_buffers_kept(setup.model):
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


def sample_stats(setup: Setup, sample, ledger: Ledger) -> tuple[float, float]:
    """(loss, input share) of the training-mode outputs (batch norm over the recipe's groups, or
    over the whole sample without groups; its running statistics restored) on a fixed sample:
    deterministic functions of the weights. The input share is advise_rules.input_share of the
    logits: near 0 when the network gives every input the same output (a dead network)."""
    x, y = sample
    chunk = min(setup.cfg.bn_group or len(y), len(y))
    total, outputs = 0.0, []
    with torch.no_grad(), noise_hook.batch_norm_buffers_kept(setup.model):
        for start in range(0, len(y), chunk):
            loss, logits = forward_loss(setup, x[start:start + chunk], y[start:start + chunk])
            total += loss.item() * len(y[start:start + chunk])
            outputs.append(logits.detach().float().reshape(len(y[start:start + chunk]), -1))
    ledger.spend("trial judging", len(y))
    return total / len(y), input_share(torch.cat(outputs))


def sample_loss(setup: Setup, sample, ledger: Ledger) -> float:
    """The fixed sample's training-mode loss (sample_stats)."""
    return sample_stats(setup, sample, ledger)[0]


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
    width, first_stop = window_steps(batch), stop_after(batch, ramp)
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
        if len(losses) >= first_stop and exploded(losses[-width:], accs[-width:], batch, classes):
            break
    end_loss, end_share = (sample_stats(at_b, sample, ledger) if math.isfinite(losses[-1])
                           else (math.inf, None))
    judgement = judge_trial(losses, accs, batch, classes, start_loss, end_loss, hold_start,
                            end_share)
    judgement.hold_start_loss = hold_start
    return judgement, rates[:len(losses)], losses, accs

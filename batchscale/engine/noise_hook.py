"""The engine's noise-scale hook (`batchscale train --track-noise-scale`): the tracker of a run,
the extra pass for the small batch in one process, the local-vs-averaged gradients under
torchrun, and batch norm's running statistics kept across measurements. The estimator itself
(NoiseScaleTracker, BackwardNorms, the public NoiseScale) is engine/noise.py; its docstring says
what is measured and why.
"""

from __future__ import annotations

import contextlib
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from batchscale.engine.noise import BackwardNorms, NoiseScaleTracker, fast_squared_norm
from batchscale.engine.noise_stats import MIN_SMALL_BATCH, measured_batches, squared_norm


# ---------------------------------------------------------------------- the training hook
def attach(setup, position) -> NoiseScaleTracker | None:
    """The tracker of a run (None unless cfg.track_noise_scale), its state kept in `position`
    so that checkpoints carry it. The moving averages span about one epoch of steps."""
    cfg = setup.cfg
    if not cfg.track_noise_scale:
        return None
    workers = setup.world_size
    # under torchrun the small batch is each worker's own, read before the all-reduce
    small, big, every_group = ((cfg.batch_size // workers, cfg.batch_size, False) if workers > 1
                               else measured_batches(cfg.group_size, cfg.batch_size))
    if small < MIN_SMALL_BATCH:
        if setup.rank == 0:
            print(f"batchscale: noise scale not tracked: its small batch would be {small} "
                  f"image(s) of {cfg.batch_size}, fewer than {MIN_SMALL_BATCH}", file=sys.stderr)
        return None
    observed_per_epoch = -(-setup.plan.steps_per_epoch // cfg.noise_scale_every)
    decay = 1.0 - 2.0 / (max(observed_per_epoch, 1) + 1)
    if position.noise_state is None:
        position.noise_state = NoiseScaleTracker.fresh_state()
    tracker = NoiseScaleTracker(small, big, decay, position.noise_state, cfg.noise_scale_every,
                                every_group).to(setup.device)
    if workers > 1:
        tracker.hook = BackwardNorms(setup.model.parameters())
    return tracker


@contextlib.contextmanager
def batch_norm_buffers_kept(model: nn.Module):
    """Restore every batch-norm buffer (running statistics, counters) on exit."""
    saved = [(m, {k: b.clone() for k, b in m.named_buffers(recurse=False)})
             for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        yield
    finally:
        with torch.no_grad():
            for module, buffers in saved:
                for name, value in buffers.items():
                    getattr(module, name).copy_(value)


def after_backward(tracker: NoiseScaleTracker, model: nn.Module, images: torch.Tensor,
                   labels: torch.Tensor, loss_of=None) -> None:
    """The training step's hook, between backward and the optimizer step. Under torchrun the
    small gradients are the workers' own (summed up by the DDP hook; their squared norms are
    averaged over the workers, one scalar all-reduce); in one process one group is recomputed."""
    due = tracker.due()
    if tracker.hook is not None:
        local_sq, _ = tracker.hook.take()  # taken every step, so the next one starts from zero
        if due:
            observe_reduced(tracker, local_sq, model.parameters())
    elif due:
        observe_step(tracker, model, images, labels, loss_of)


def observe_reduced(tracker: NoiseScaleTracker, local_sq: torch.Tensor, parameters,
                    scale: torch.Tensor | float = 1.0, big_scale: torch.Tensor | float = 1.0,
                    valid: torch.Tensor | None = None) -> None:
    """Under DDP, after the all-reduce: the workers' local squared norms averaged (one scalar
    all-reduce) are the small batch, the reduced `p.grad` the big one. Both are divided by their
    squares of `scale` (`big_scale`): AMP's loss scale, 1 without it."""
    dist.all_reduce(local_sq)
    local_sq /= dist.get_world_size()
    big_sq = fast_squared_norm([p.grad for p in parameters if p.requires_grad]).to(local_sq)
    if valid is not None:  # an overflowed AMP step (on any worker): left out
        valid = valid & torch.isfinite(local_sq) & torch.isfinite(big_sq)
    tracker.observe(local_sq / scale ** 2, big_sq / big_scale ** 2, valid)


def observe_step(tracker: NoiseScaleTracker, model: nn.Module, images: torch.Tensor,
                 labels: torch.Tensor, loss_of=None) -> None:
    """After the step's backward (p.grad = the big-batch gradient) and before the optimizer
    step: recompute one small group's gradient and feed both squared norms to the tracker; with
    `tracker.every_group` (whole-batch BN) recompute every quarter's gradient instead and take
    the big gradient from them. `loss_of(images, labels)` is the training loss (default: mean
    cross-entropy)."""
    loss_of = loss_of or (lambda x, y: F.cross_entropy(model(x).float(), y))
    small = tracker.small_batch
    if tracker.every_group:
        tracker.observe(*parts_squared_norms(model, loss_of, images, labels, small))
        return
    params = [p for p in model.parameters() if p.requires_grad]
    big_sq = squared_norm([p.grad for p in params]).to(images.device)
    group = tracker.state["count"] % (len(labels) // small)
    part = slice(group * small, (group + 1) * small)
    small_sq = squared_norm(part_gradient(model, loss_of, images[part], labels[part]))
    tracker.observe(small_sq.to(images.device), big_sq)


def part_gradient(model: nn.Module, loss_of, images, labels) -> list[torch.Tensor]:
    """The gradient of `loss_of(images, labels)` (zeros for unused parameters), the model's
    batch-norm buffers left as they were."""
    params = [p for p in model.parameters() if p.requires_grad]
    with batch_norm_buffers_kept(model):
        grads = torch.autograd.grad(loss_of(images, labels), params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def parts_squared_norms(model: nn.Module, loss_of, images, labels, small: int):
    """The batch cut into consecutive parts of `small` images, each part's gradient computed
    with batch norm over that part alone: (the mean over parts of |g_part|², |mean g_part|²),
    float64 tensors on the images' device."""
    small_sq, total = torch.zeros((), dtype=torch.float64, device=images.device), None
    parts = len(labels) // small
    for x, y in zip(images[:parts * small].split(small), labels[:parts * small].split(small),
                    strict=True):
        grads = part_gradient(model, loss_of, x, y)
        small_sq += squared_norm(grads).to(small_sq)
        total = ([g.double() for g in grads] if total is None
                 else [t.add_(g) for t, g in zip(total, grads, strict=True)])
    return small_sq / parts, squared_norm([t / parts for t in total]).to(small_sq)

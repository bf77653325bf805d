"""Local SGD and post-local SGD (Lin et al. 2020, "Don't use large mini-batches, use local SGD").

    batchscale train --workers 16 --batch-size 2048 --local-steps 16 --local-start-epoch -1 ...
    batchscale train --local-workers 16 --batch-size 64 --local-steps 8 --local-start-epoch -1 ...

W workers each take a B/W share of every global batch. Before `local_start_epoch` they train
synchronously (gradients averaged every step); from it on each worker steps on its own gradient,
with its own optimizer state, and every H = `local_steps` steps the workers average their models:
the parameters AND the batch-norm running statistics (each worker's BN normalizes its own share,
as the study's per-worker BN). Momentum buffers stay each worker's own, as in Lin et al.'s code
(epfml/LocalSGD-Code): averaging them would double the bytes of a sync. `local_start_epoch -1`
is post-local SGD: local steps from the step schedule's first decay. The period runs on across
epoch boundaries: a sync follows global step s when (s - s0 + 1) is a multiple of H, s0 being the
first local step, so the position inside a period is a function of the global step.

Real (torchrun, `--workers`): between syncs DDP's `no_sync()` skips the gradient all-reduce; a sync
is one all-reduce of the flattened parameters and BN buffers. Simulated (`--local-workers W`, one
process): W model replicas, replica 0 being the run's model (evaluated and checkpointed as rank 0's
is under torchrun), each stepping on its own share; synchronous steps average the replicas'
gradients, as DDP does. The two are the same computation (tests/test_localsgd.py, float64).

Evaluation uses worker 0's model: at a sync point that is the average, mid-period worker 0's own.
The checkpoint holds worker 0's model and optimizer as usual and, in `position.local_state`, the
other workers' (rank 0 gathers them), so a run resumes exactly mid-period.

Every metrics row counts `syncs` (model-sized all-reduces: one per synchronous step, one per
average) and `sync_bytes` (their payload: gradients, or parameters + BN buffers) of the epoch.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch import nn

from batchscale.config import local_start
from batchscale.engine import distributed
from batchscale.engine import step as engine_step
from batchscale.engine.optim import build_optimizer


@dataclass
class LocalSGD:
    """The workers of a local-SGD run, as this process sees them."""

    workers: int  # W
    local_steps: int  # H
    start_step: int | None  # the first local step (global), None: synchronous throughout
    simulated: bool
    replicas: list = field(default_factory=list)  # simulated: (model, optimizer) of workers 1..W-1

    def is_local(self, global_step: int) -> bool:
        return self.start_step is not None and global_step >= self.start_step

    def syncs_after(self, global_step: int) -> bool:
        """Whether the workers average their models after local step `global_step`."""
        return (self.is_local(global_step)
                and (global_step - self.start_step + 1) % self.local_steps == 0)


def enabled(cfg) -> bool:
    return cfg.local_steps > 1 or cfg.local_workers > 0


def first_local_step(cfg, plan) -> int | None:
    return plan.epoch_start(local_start(cfg)) if cfg.local_steps > 1 else None


def attach(setup, position) -> LocalSGD | None:
    """The run's local-SGD state (None when off); replicas restored from `position.local_state`.
    Call after the DDP wrap: DDP's construction broadcasts rank 0's model to every worker."""
    cfg = setup.cfg
    if not enabled(cfg):
        return None
    simulated = cfg.local_workers > 0
    local = LocalSGD(cfg.local_workers if simulated else setup.world_size, cfg.local_steps,
                     first_local_step(cfg, setup.plan), simulated)
    if simulated:
        for _ in range(local.workers - 1):
            model = copy.deepcopy(setup.model)
            local.replicas.append((model, build_optimizer(cfg, model)))
    saved = (position.local_state or {}).get("workers")
    if saved:
        if len(saved) != local.workers - 1:
            raise RuntimeError(f"the checkpoint holds {len(saved) + 1} workers, not "
                               f"{local.workers}")
        if simulated:
            for (model, optimizer), state in zip(local.replicas, saved, strict=True):
                load_worker(model, optimizer, state)
        elif setup.rank > 0:
            load_worker(setup.model, setup.optimizer, saved[setup.rank - 1])
    position.local_state = None
    return local


# ---------------------------------------------------------------------- one step
def train_step(setup, images, labels, global_step: int):
    """The training step of any run: the usual one, or local SGD's (then a sync on period ends).
    `images`/`labels` are this process's batch: the global one when simulated."""
    local = setup.local
    if local is None:
        return engine_step.train_step(setup, images, labels)
    is_local = local.is_local(global_step)
    if local.simulated:
        loss, logits = simulated_step(setup, local, images, labels, is_local)
    else:
        skip = setup.train_model.no_sync() if is_local and distributed.active() else None
        with skip or contextlib.nullcontext():
            loss, logits = engine_step.train_step(setup, images, labels)
    if local.syncs_after(global_step):
        average_models(setup, local)
    return loss, logits


def workers_of(setup, local: LocalSGD) -> list[tuple[nn.Module, torch.optim.Optimizer]]:
    return [(setup.model, setup.optimizer), *local.replicas]


def simulated_step(setup, local: LocalSGD, images, labels, is_local: bool):
    """Each replica's forward and backward on its contiguous B/W share (as EpochLoader gives
    rank r), then the gradients averaged (synchronous steps only), then every replica's step."""
    workers = workers_of(setup, local)
    share = len(labels) // len(workers)
    for _, optimizer in local.replicas:  # the loop set worker 0's rate
        for group, lead in zip(optimizer.param_groups, setup.optimizer.param_groups, strict=True):
            group["lr"] = lead["lr"]
    losses, outputs = [], []
    for r, (model, optimizer) in enumerate(workers):
        optimizer.zero_grad(set_to_none=True)
        part = slice(r * share, (r + 1) * share)
        view = SimpleNamespace(cfg=setup.cfg, device=setup.device, model=model,
                               train_model=None, world_size=1)
        loss, logits = engine_step.forward_loss(view, images[part], labels[part])
        loss.backward()
        losses.append(loss.detach())
        outputs.append(logits.detach())
    if not is_local:
        with torch.no_grad():
            for grads in zip(*([p.grad for p in m.parameters() if p.requires_grad]
                               for m, _ in workers), strict=True):
                mean = torch.stack(grads).sum(0) / len(grads)
                for grad in grads:
                    grad.copy_(mean)
    for _, optimizer in workers:
        optimizer.step()
    return torch.stack(losses).mean(), torch.cat(outputs)


# ---------------------------------------------------------------------- averaging
def averaged_tensors(model: nn.Module) -> list[torch.Tensor]:
    """What a sync averages: every parameter and every floating-point buffer (BN running mean
    and variance; the step counters are the same on every worker)."""
    return [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]


@torch.no_grad()
def average_models(setup, local: LocalSGD) -> None:
    """Average the workers' parameters and BN buffers (one all-reduce under torchrun)."""
    if local.simulated:
        for group in zip(*(averaged_tensors(m) for m, _ in workers_of(setup, local)),
                         strict=True):
            mean = torch.stack(group).sum(0) / len(group)
            for tensor in group:
                tensor.copy_(mean)
        return
    if not distributed.active():
        return
    tensors = averaged_tensors(setup.model)
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for tensor, part in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
        tensor.copy_(part.view_as(tensor))


# ---------------------------------------------------------------------- counting
def payload_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes of one gradient all-reduce, bytes of one model average)."""
    grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    models = sum(t.numel() * t.element_size() for t in averaged_tensors(model))
    return grads, models


def epoch_row(setup, epoch: int) -> dict:
    """The epoch's communication for the metrics row: model-sized all-reduces (`syncs`) and
    their bytes; with batch growth also the epoch's batch size."""
    cfg, plan = setup.cfg, setup.plan
    start, steps = plan.epoch_start(epoch), plan.steps_in(epoch)
    local = LocalSGD(0, cfg.local_steps, first_local_step(cfg, plan), False)
    averages = sum(local.syncs_after(s) for s in range(start, start + steps))
    gradient_syncs = sum(not local.is_local(s) for s in range(start, start + steps))
    grad_bytes, model_bytes = payload_bytes(setup.model)
    row = {"syncs": gradient_syncs + averages,
           "sync_bytes": gradient_syncs * grad_bytes + averages * model_bytes}
    if plan.epoch_batches:
        row["batch_size"] = plan.batch_in(epoch, cfg.batch_size)
    return row


# ---------------------------------------------------------------------- checkpoints
def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_cpu(v) for v in value]
    return value


def worker_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """One worker's model and optimizer state, on the CPU (tensors, numbers, lists, dicts)."""
    return {"model": _to_cpu(model.state_dict()), "optimizer": _to_cpu(optimizer.state_dict())}


def load_worker(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])


def keep_state(setup, position) -> None:
    """Put workers 1..W-1's state into `position.local_state` for the next checkpoint. Under
    torchrun every worker calls it (rank 0 gathers); the others keep None."""
    local = setup.local
    if local is None:
        return
    if local.simulated:
        others = [worker_state(m, o) for m, o in local.replicas]
    else:
        others = distributed.gather_to_rank0(worker_state(setup.model, setup.optimizer))
        others = others[1:] if others is not None else None
    position.local_state = None if others is None else {
        "workers": others, "local_steps": local.local_steps, "start_step": local.start_step}

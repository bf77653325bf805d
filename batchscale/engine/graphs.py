"""The whole training step replayed from one CUDA graph: no kernel launches from Python per step.

A small batch (the study's B = 32) is launch-bound on a GPU: its few milliseconds of arithmetic
hide behind hundreds of kernel launches. `GraphedStep` records one step once — the forward
passes over the batch-norm groups, the backward pass, the optimizer update with the learning
rate read from a device tensor, and the epoch's metric sums — and then replays it. Python's
share of a step is: copy the loader's batch into the static input buffers, fill the rate and
step number, replay.

    batchscale train --device cuda --cuda-graphs auto   # the default: on where supported

The first WARMUP_STEPS steps run the same step function eagerly on a side stream (they are real
steps of the run; cuDNN and the allocator settle), the next one is captured, and every later
one replays the capture. Supported: optimizers sgd and rmsprop, one process, no noise-scale
tracking, no torch.compile; elsewhere `auto` trains eagerly with a one-line note and `on` is a
user error.
"""

from __future__ import annotations

import contextlib
import sys

import torch

from batchscale.engine.optim import set_lr
from batchscale.engine.setup import Setup
from batchscale.engine.step import Meter, forward_loss
from batchscale.errors import UserError

SUPPORTED_OPTIMIZERS = ("sgd", "rmsprop")
WARMUP_STEPS = 3


# ---------------------------------------------------------------------- where graphs apply
def unsupported_reason(cfg, world_size: int = 1) -> str | None:
    """Why a run's step cannot be captured (None: it can), whatever the device."""
    if cfg.optimizer not in SUPPORTED_OPTIMIZERS:
        return f"optimizer {cfg.optimizer}"
    if cfg.track_noise_scale:
        return "track_noise_scale"
    if world_size > 1 or cfg.workers > 1:
        return "several workers (DDP)"
    if cfg.compile:
        return "compile"
    if cfg.local_steps > 1 or cfg.local_workers:
        return "local SGD"
    if cfg.batch_growth > 1:
        return "batch growth (the batch changes shape)"
    return None


def use_graphs(cfg, device: torch.device, world_size: int = 1, note=None) -> bool:
    """Whether the run replays its step from a CUDA graph. `on` where it cannot is a UserError;
    `auto` on CUDA where it cannot calls `note` with one line and trains eagerly."""
    if cfg.cuda_graphs == "off":
        return False
    if device.type != "cuda":
        if cfg.cuda_graphs == "on":
            raise UserError(f"cuda_graphs on needs a CUDA device, the run is on {device.type}; "
                            "use --cuda-graphs auto or off")
        return False
    reason = unsupported_reason(cfg, world_size)
    if reason is None:
        return True
    if cfg.cuda_graphs == "on":
        raise UserError(f"cuda_graphs on does not support {reason}; use --cuda-graphs off "
                        "(or auto: eager where unsupported)")
    if note is not None:
        note(f"note: CUDA graphs off ({reason} is not supported); the step runs eagerly")
    return False


def attach(setup: Setup, quiet: bool = False) -> GraphedStep | None:
    """The run's GraphedStep, or None where the step runs eagerly."""
    def note(line: str) -> None:
        if not quiet and setup.rank == 0:
            print(line, file=sys.stderr, flush=True)

    if use_graphs(setup.cfg, setup.device, setup.world_size, note):
        return GraphedStep(setup)
    return None


# ---------------------------------------------------------------------- the optimizer update
@torch.no_grad()
def tensor_lr_update(optimizer: torch.optim.Optimizer, lr: torch.Tensor,
                     count_steps: bool = True) -> None:
    """`optimizer.step()` of torch's SGD or RMSprop with the planned rate a 0-dim device tensor
    (each group's `lr_scale` multiplied in), on the optimizer's own state, so that checkpoints
    and eager steps read and continue it. Only device work: it can be captured. RMSprop's
    `step` counters live on the host; `count_steps=False` leaves them to `count_optimizer_steps`
    (inside a capture they would move only once)."""
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        grads = [p.grad for p in params]
        if group.get("maximize", False):
            grads = torch._foreach_neg(grads)
        if group["weight_decay"]:
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        neg_lr = lr * -group.get("lr_scale", 1.0)
        if isinstance(optimizer, torch.optim.SGD):
            _sgd_update(optimizer, group, params, grads, neg_lr)
        elif isinstance(optimizer, torch.optim.RMSprop):
            _rmsprop_update(optimizer, group, params, grads, neg_lr, count_steps)
        else:
            raise TypeError(f"no tensor-lr update for {type(optimizer).__name__}")


def _sgd_update(optimizer, group, params, grads, neg_lr) -> None:
    momentum = group["momentum"]
    if momentum:
        states = [optimizer.state[p] for p in params]
        if all(s.get("momentum_buffer") is not None for s in states):
            buffers = [s["momentum_buffer"] for s in states]
            torch._foreach_mul_(buffers, momentum)
            torch._foreach_add_(buffers, grads, alpha=1 - group["dampening"])
        else:  # the first step: torch starts each buffer as a copy of the gradient
            buffers = []
            for state, grad in zip(states, grads, strict=True):
                if state.get("momentum_buffer") is None:
                    state["momentum_buffer"] = grad.detach().clone()
                else:
                    state["momentum_buffer"].mul_(momentum).add_(grad,
                                                                alpha=1 - group["dampening"])
                buffers.append(state["momentum_buffer"])
        if group["nesterov"]:
            grads = torch._foreach_add(grads, buffers, alpha=momentum)
        else:
            grads = buffers
    torch._foreach_add_(params, torch._foreach_mul(grads, neg_lr))


def _rmsprop_update(optimizer, group, params, grads, neg_lr, count_steps: bool) -> None:
    alpha, momentum, centered = group["alpha"], group["momentum"], group["centered"]
    states = [optimizer.state[p] for p in params]
    for state, p in zip(states, params, strict=True):
        if not state:  # as torch's RMSprop creates it
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if momentum > 0:
                state["momentum_buffer"] = torch.zeros_like(p,
                                                            memory_format=torch.preserve_format)
            if centered:
                state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    if count_steps:
        count_optimizer_steps(optimizer, states)
    square_avgs = [s["square_avg"] for s in states]
    torch._foreach_mul_(square_avgs, alpha)
    torch._foreach_addcmul_(square_avgs, grads, grads, value=1 - alpha)
    if centered:
        grad_avgs = [s["grad_avg"] for s in states]
        torch._foreach_lerp_(grad_avgs, grads, 1 - alpha)
        averages = torch._foreach_addcmul(square_avgs, grad_avgs, grad_avgs, value=-1)
        torch._foreach_sqrt_(averages)
    else:
        averages = torch._foreach_sqrt(square_avgs)
    torch._foreach_add_(averages, group["eps"])
    if momentum > 0:
        buffers = [s["momentum_buffer"] for s in states]
        torch._foreach_mul_(buffers, momentum)
        torch._foreach_addcdiv_(buffers, grads, averages)
        torch._foreach_add_(params, torch._foreach_mul(buffers, neg_lr))
    else:
        torch._foreach_add_(params, torch._foreach_mul(torch._foreach_div(grads, averages),
                                                       neg_lr))


def count_optimizer_steps(optimizer: torch.optim.Optimizer, states=None) -> None:
    """Advance the host-side `step` counters (RMSprop keeps one per parameter)."""
    for state in states if states is not None else optimizer.state.values():
        if "step" in state:
            state["step"] += 1


# ---------------------------------------------------------------------- the captured step
@contextlib.contextmanager
def autocast_cache_off():
    """Autocast without its weight-cast cache: a cache filled inside a capture would be freed
    at the capture's end (PyTorch's CUDA-graph notes ask for cache_enabled=False)."""
    before = torch.is_autocast_cache_enabled()
    torch.set_autocast_cache_enabled(False)
    try:
        yield
    finally:
        torch.set_autocast_cache_enabled(before)


class GraphedStep:
    """One training step read from static buffers, run eagerly WARMUP_STEPS times, then captured
    into a CUDA graph and replayed. `static_step` is device-independent (tests call it on CPU)."""

    def __init__(self, setup: Setup, warmup_steps: int = WARMUP_STEPS):
        self.setup = setup
        self.warmup_steps = warmup_steps
        self.images: torch.Tensor | None = None  # allocated from the first batch
        self.labels: torch.Tensor | None = None
        self.lr = torch.zeros((), dtype=torch.float32, device=setup.device)
        self.step = torch.zeros((), dtype=torch.int64, device=setup.device)
        self.meter = Meter.zeros(setup.device)
        self.graph = None
        self.eager_steps = 0

    def static_step(self, count_steps: bool = True) -> None:
        """zero_grad, forward over the BN groups, backward, the tensor-lr update and the metric
        sums, all from and into the static tensors."""
        setup = self.setup
        setup.optimizer.zero_grad(set_to_none=True)
        loss, logits = forward_loss(setup, self.images, self.labels)
        loss.backward()
        tensor_lr_update(setup.optimizer, self.lr, count_steps)
        self.meter.add(loss.detach(), logits.detach(), self.labels, self.step)

    def load(self, meter: Meter, images, labels, global_step: int, lr: float) -> None:
        """Fill the static inputs; from here on `meter`'s device sums are the static ones."""
        if self.images is None:
            self.images, self.labels = torch.empty_like(images), torch.empty_like(labels)
        self.images.copy_(images)
        self.labels.copy_(labels)
        self.lr.fill_(lr)
        self.step.fill_(global_step)
        set_lr(self.setup.optimizer, lr)  # the groups' float rate, as an eager step leaves it
        if meter.loss_sum is not self.meter.loss_sum:  # a new epoch's (or a resumed) meter
            for name in ("loss_sum", "correct", "first_bad_step"):
                getattr(self.meter, name).copy_(getattr(meter, name))
                setattr(meter, name, getattr(self.meter, name))

    def __call__(self, meter: Meter, images, labels, global_step: int, lr: float) -> None:
        """One training step of the run, its sums added to `meter`."""
        self.load(meter, images, labels, global_step, lr)
        if self.graph is not None:
            self.graph.replay()
            count_optimizer_steps(self.setup.optimizer)
        elif self.eager_steps < self.warmup_steps:
            self._eager_on_side_stream()
        else:
            self._capture()
            self.graph.replay()
            count_optimizer_steps(self.setup.optimizer)
        meter.count += len(labels)

    def _eager_on_side_stream(self) -> None:
        side = torch.cuda.Stream(self.setup.device)
        side.wait_stream(torch.cuda.current_stream(self.setup.device))
        with torch.cuda.stream(side), autocast_cache_off():
            self.static_step()
        torch.cuda.current_stream(self.setup.device).wait_stream(side)
        self.eager_steps += 1

    def _capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(self.setup.device)
        with autocast_cache_off(), torch.cuda.graph(graph):
            self.static_step(count_steps=False)
        self.graph = graph

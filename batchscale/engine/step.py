"""One training step: the forward pass (whole batch, Algorithm 1's pseudo-batches, or CPU-sized
passes of whole BN groups), the backward pass and the update; the device-side metric sums; and
the evaluation of a whole split.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from batchscale.engine import noise_hook, noise_stats
from batchscale.engine.data import Split, eval_batches
from batchscale.engine.norm import set_group_size
from batchscale.engine.optim import set_lr
from batchscale.engine.setup import Setup


def autocast(setup: Setup):
    if setup.cfg.amp == "bf16":
        return torch.autocast(setup.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# On CPU, one process, a ghost batch runs in forward passes of whole BN groups, about
# this many samples each: B = 1024 activations overflow the caches (a B = 1024 step ran 2x slower
# per image than B = 128). Same groups, same statistics, same order of running-stat updates.
CPU_GHOST_CHUNK = 128


def forward_chunk(setup: Setup, images: torch.Tensor) -> int:
    """Samples per forward pass: a BN group for `loop`; for `ghost` on CPU, the most whole
    groups that fit CPU_GHOST_CHUNK and divide the batch evenly (equal passes, equal weights)."""
    group = min(setup.cfg.bn_group or len(images), len(images))  # the batch may grow
    groups = len(images) // group
    if setup.cfg.bn_impl == "loop":
        return group
    if images.device.type == "cpu" and getattr(setup, "world_size", 1) == 1 and groups > 1:
        per_pass = max([m for m in range(1, groups + 1)
                        if groups % m == 0 and m * group <= CPU_GHOST_CHUNK] or [1])
        return group * per_pass
    return len(images)


def forward_loss(setup: Setup, images: torch.Tensor, labels: torch.Tensor):
    """Mean loss (cross-entropy, or the setup's `loss_fn`) and logits; `loop` runs Algorithm 1
    (a forward per pseudo-batch)."""
    chunk = forward_chunk(setup, images)
    with autocast(setup):
        if chunk < len(labels):
            logits = [training_module(setup)(part) for part in images.split(chunk)]
            losses = [loss_of(setup, out, y)
                      for out, y in zip(logits, labels.split(chunk), strict=True)]
            return torch.stack(losses).mean(), torch.cat(logits)
        logits = training_module(setup)(images)
        return loss_of(setup, logits, labels), logits


def loss_of(setup: Setup, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The training loss of a forward's output: the setup's `loss_fn` (a user's, given the
    output as the model returned it, in float32 under AMP) or the mean cross-entropy."""
    user = getattr(setup, "loss_fn", None)  # test doubles may lack the field
    if user is not None:
        low = output.dtype in (torch.float16, torch.bfloat16)
        return user(output.float() if low else output, labels)
    return F.cross_entropy(output.float(), labels, label_smoothing=setup.cfg.label_smoothing)


def training_module(setup: Setup) -> torch.nn.Module:
    """The model, or with several workers its DDP wrapper (which averages the gradients)."""
    wrapped = getattr(setup, "train_model", None)  # test doubles may lack the field
    return setup.model if wrapped is None else wrapped


def compile_model(setup: Setup) -> None:
    """With cfg.compile, train through torch.compile of the training module. The
    parameters are shared, so checkpoints and evaluation keep using the eager `setup.model`."""
    if setup.cfg.compile:
        setup.train_model = torch.compile(training_module(setup))


def use_batch(setup: Setup, batch: int) -> None:
    """Make batch norm and the noise-scale tracker follow a grown batch of `batch` samples: BN
    groups stay bn_group samples (or the whole batch), and the tracker's small batch is one group
    (a quarter of the batch without groups; each worker's share under torchrun)."""
    cfg = setup.cfg
    set_group_size(setup.model, cfg.bn_group if cfg.bn_impl == "ghost" else 0)
    if setup.noise is not None:
        workers = setup.world_size
        noise = setup.noise
        noise.small_batch, noise.big_batch, noise.every_group = (
            (batch // workers, batch, False) if workers > 1
            else noise_stats.measured_batches(cfg.bn_group or batch, batch))


def train_step(setup: Setup, images, labels):
    setup.optimizer.zero_grad(set_to_none=True)
    loss, logits = forward_loss(setup, images, labels)
    loss.backward()
    if setup.noise is not None:  # a small batch's gradient, before the step
        noise_hook.after_backward(setup.noise, setup.model, images, labels,
                                   lambda x, y: forward_loss(setup, x, y)[0])
    setup.optimizer.step()
    return loss.detach(), logits.detach()


def run_step(setup: Setup, meter: Meter, images, labels, global_step: int, lr: float) -> None:
    """One training step at rate `lr`, its sums added to `meter`: replayed from the run's CUDA
    graph where one is attached (engine/graphs.py), else eagerly."""
    if getattr(setup, "graph", None) is not None:  # test doubles may lack the field
        setup.graph(meter, images, labels, global_step, lr)
        return
    set_lr(setup.optimizer, lr)
    loss, logits = train_step(setup, images, labels)
    meter.add(loss, logits, labels, global_step)


@dataclass
class Meter:
    """Sums of one epoch's training metrics, kept on the device (no per-step host sync)."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    count: int = 0
    first_bad_step: torch.Tensor = field(default=None)

    @classmethod
    def zeros(cls, device) -> Meter:
        return cls(torch.zeros((), dtype=torch.float64, device=device),
                   torch.zeros((), dtype=torch.int64, device=device), 0,
                   torch.full((), -1, dtype=torch.int64, device=device))

    def add(self, loss, logits, labels, step: int) -> None:
        self.loss_sum += loss.double() * len(labels)
        self.correct += (logits.argmax(1) == labels).sum()
        self.count += len(labels)
        bad = ~torch.isfinite(loss) & (self.first_bad_step < 0)
        self.first_bad_step.copy_(torch.where(bad, step, self.first_bad_step))

    def state(self) -> dict:
        return {"loss_sum": self.loss_sum.cpu(), "correct": self.correct.cpu(),
                "count": self.count, "first_bad_step": self.first_bad_step.cpu()}

    @classmethod
    def from_state(cls, state: dict, device) -> Meter:
        return cls(state["loss_sum"].to(device), state["correct"].to(device), state["count"],
                   state["first_bad_step"].to(device))


@torch.no_grad()
def evaluate(setup: Setup, split: Split) -> tuple[float, float]:
    """Mean loss and accuracy over a whole split, BN in eval mode, no augmentation."""
    return evaluate_model(setup.model, split, setup.cfg.eval_batch_size,
                          lambda images: prepare_input(setup, images), lambda: autocast(setup))


def evaluate_model(model: torch.nn.Module, split: Split, batch_size: int,
                   prepare=torch.Tensor.contiguous, precision=contextlib.nullcontext
                   ) -> tuple[float, float]:
    """Mean loss and accuracy of `model` over a split, in eval mode (restored afterwards), each
    batch `prepare`d and run under `precision()`; sums on the device, one read at the end."""
    training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for images, labels in eval_batches(split, batch_size):
        with precision():
            logits = model(prepare(images)).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        correct += (logits.argmax(1) == labels).sum()
    model.train(training)
    return loss_sum.item() / len(split), correct.item() / len(split)


def prepare_input(setup: Setup, images: torch.Tensor) -> torch.Tensor:
    return images if setup.channels_last else images.contiguous()

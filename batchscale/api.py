"""The Python API: batchscale's diagnostics for any PyTorch model, in any training loop.

    from batchscale import NoiseScale, CollapseMonitor

`NoiseScale` estimates the gradient noise scale B_simple = tr(Σ) / |G|² (McCandlish et al. 2018,
App. A) from gradients the loop computes anyway: under DDP each worker's local gradient before the
all-reduce is the small batch and the averaged one the big batch (no extra backward pass); in one
process the micro-batches of gradient accumulation are the small batches (`NoiseScale.backward`
splits a batch into them). The estimator is the engine's own (`batchscale.engine.noise`), so
`batchscale train --track-noise-scale` and this class compute the same numbers from the same
norms. `CollapseMonitor` is the engine's collapse rule (`batchscale.engine.collapse`) for any
classifier, or for any loss given the loss of the best constant predictor. docs/api.md has the
details.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from batchscale.analysis import advise as advise_probe
from batchscale.config import from_dict
from batchscale.engine import collapse
from batchscale.engine.noise import (
    BackwardNorms,
    Estimate,
    NoiseScaleTracker,
    fast_squared_norm,
)

__all__ = ["CollapseMonitor", "Estimate", "NoiseScale", "advise"]


class NoiseScale:
    """The gradient noise scale of a model trained by your loop.

    Attach it to the model (the DDP wrapper under DDP). Every backward pass's own gradient is a
    small-batch gradient of `batch_size` samples (read by hooks before autograd adds it into
    `p.grad`); `step()`, called after the step's last backward and before the optimizer step,
    takes `p.grad` as the big-batch gradient. So a step needs at least two small batches: DDP
    workers, micro-batches of gradient accumulation, or a batch split by `backward()`.

    - Losses are means over their samples, and accumulated micro-batch losses are divided by
      their number (the usual `loss / accumulation_steps`); B_simple does not depend on that
      scaling, the reported |G|² and tr(Σ) do.
    - With AMP pass `scaler=`: norms are divided by the loss scale (whether or not you called
      `scaler.unscale_(optimizer)` before `step()`: pass `optimizer=` so that it can tell), and a
      step whose gradients overflowed is left out.
    - Parameters without `requires_grad` are left out; one a pass does not use counts as zero.
    - `every=N` measures only every N-th step; `span` is the moving averages' span in measured
      steps. Nothing synchronizes the host but `estimate()`.
    - Under DDP nothing is communicated per step: each worker averages its own local norms, and
      `estimate()` averages the workers' averages (one all-reduce: call it on every worker).
      With batch norm the small batches must compute the same function as the big one
      (per-worker BN under DDP is; a split batch with BN over the whole batch is not: see
      docs/analysis.md).

    Example (one process, the batch split in two)::

        noise = NoiseScale(model)
        for x, y in loader:
            optimizer.zero_grad()
            noise.backward(lambda x, y: F.cross_entropy(model(x), y), x, y)  # was loss.backward()
            noise.step()
            optimizer.step()
        print(noise.estimate())  # B_simple = 412 ± 31 (b_small 32, b_big 64, 500 observations)
    """

    def __init__(self, model: nn.Module, batch_size: int | None = None, *,
                 optimizer: torch.optim.Optimizer | None = None,
                 scaler: torch.amp.GradScaler | None = None, span: float = 100.0,
                 every: int = 1):
        if not span >= 1 or math.isinf(span):
            raise ValueError(f"span must be a finite number of steps >= 1, got {span}")
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.model, self.batch_size = model, batch_size
        self.optimizer, self.scaler, self.every = optimizer, scaler, every
        self.decay = 1.0 - 2.0 / (span + 1.0)
        self.distributed = isinstance(model, DistributedDataParallel)
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.hooks = BackwardNorms(self.parameters)
        self.tracker: NoiseScaleTracker | None = None
        self.steps = 0
        self._split: int | None = None  # samples per pass of the last backward()

    # ------------------------------------------------------------------ the loop's calls
    def backward(self, loss_fn: Callable[..., torch.Tensor], *batch: torch.Tensor,
                 parts: int = 2) -> torch.Tensor:
        """Backward over `batch` (tensors sharing their first dimension) in `parts` equal
        micro-batches, each `loss_fn(*part) / parts`: `p.grad` ends as the whole batch's mean
        gradient and each part is a small batch. Returns the batch's mean loss (detached). Under
        DDP all but the last part run in `no_sync()`. On steps that `every` skips, one pass.

        Example::

            loss = noise.backward(lambda x, y: F.mse_loss(model(x), y), x, y, parts=4)
        """
        samples = len(batch[0])
        if not self.hooks.active:
            parts = 1
        elif parts < 2 or samples % parts:
            raise ValueError(f"cannot split a batch of {samples} into {parts} equal parts "
                             "(parts >= 2 dividing the batch)")
        self._split = samples // parts
        total = None
        for i, part in enumerate(zip(*(t.split(samples // parts) for t in batch), strict=True)):
            last = i == parts - 1
            sync = (self.model.no_sync() if self.distributed and not last
                    else contextlib.nullcontext())
            with sync:
                loss = loss_fn(*part) / parts
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        return total

    def step(self) -> None:
        """After the step's last backward pass, before the optimizer (or scaler) step and before
        any gradient clipping: one observation from this step's passes and `p.grad`.

        Example::

            loss.backward(); noise.step(); optimizer.step()
        """
        local_sq, passes = self.hooks.take()
        due = self.hooks.active
        self.steps += 1
        self.hooks.active = self.steps % self.every == 0
        split, self._split = self._split, None
        if not due or local_sq is None:
            return
        small = split or self.batch_size
        if small is None:
            raise ValueError("NoiseScale needs batch_size (samples per backward pass on this "
                             "process) unless the batch goes through noise.backward(...)")
        workers = dist.get_world_size() if self.distributed else 1
        big = small * passes * workers
        if big <= small:
            raise ValueError("one backward pass in one process gives no small batch: split the "
                             "batch with noise.backward(loss_fn, *batch), accumulate "
                             "micro-batches, or train under DDP")
        if self.tracker is None:
            self.tracker = NoiseScaleTracker(small, big, self.decay).to(local_sq.device)
        self.tracker.small_batch, self.tracker.big_batch = small, big
        # each pass's loss was divided by `passes`: a small-batch gradient is passes x the pass's
        small_sq = local_sq * passes
        scale, big_scale, valid = self._scales()
        # under DDP small_sq is this worker's own: estimate() averages the workers' averages
        big_sq = fast_squared_norm([p.grad for p in self.parameters]).to(small_sq)
        if valid is not None:  # an overflowed AMP step: left out
            valid = torch.isfinite(small_sq) & torch.isfinite(big_sq)
        self.tracker.observe(small_sq / scale ** 2, big_sq / big_scale ** 2, valid)

    def _scales(self):
        """(the loss scale the passes ran at, the one `p.grad` is at now, a validity flag or
        None): 1, 1, None without an enabled scaler."""
        scaler = self.scaler
        if scaler is None or not scaler.is_enabled() or getattr(scaler, "_scale", None) is None:
            return 1.0, 1.0, None  # no scaler, or one that has not scaled a loss yet
        scale = scaler._scale.double()  # a tensor: reading it does not synchronize
        states = getattr(scaler, "_per_optimizer_states", {})
        stage = states.get(id(self.optimizer), {}).get("stage") if self.optimizer else None
        unscaled = getattr(stage, "name", "") == "UNSCALED"
        return scale, (1.0 if unscaled else scale), torch.ones((), dtype=torch.bool,
                                                                device=scale.device)

    # ------------------------------------------------------------------ reading
    def estimate(self) -> Estimate:
        """The current estimate (synchronizes the host once; under DDP a collective, to call on
        every worker): `.b_simple` (None when undefined:
        |G|² ≤ 0), `.error`, `.grad_sq`, `.trace_sigma`, `.small_batch`, `.big_batch`,
        `.observations`; `str()` says it in a line.

        Example::

            e = noise.estimate()
            if e.defined: print(f"{e.b_simple:.0f} ± {e.error}")
        """
        if self.tracker is None:
            return Estimate(None, None, None, None, self.batch_size or 0, 0, 0)
        return self.tracker.estimate(average_workers=self.distributed)

    def close(self) -> None:
        """Remove the hooks (also on leaving a `with NoiseScale(...) as noise:` block)."""
        self.hooks.remove()

    def __enter__(self) -> NoiseScale:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class CollapseMonitor:
    """Whether a run has collapsed: it trains on with finite numbers but has stopped learning
    (`batchscale.engine.collapse`, docs/collapse.md). Feed it each epoch's training mean loss.

    - A classifier (`classes=C`, plus each epoch's training accuracy and number of samples): the
      engine's rule exactly. An epoch is stalled at accuracy ≤ 1/C + margin and loss ≥ ln C −
      0.02, exploded when also loss ≥ 1.25 ln C.
    - Any other loss (`baseline_loss=L0`, the loss of the best constant predictor, e.g. the
      targets' variance for MSE): stalled at loss ≥ L0 − margin (default 1% of L0), exploded at
      loss ≥ 1.25 L0.

    Collapsed after 3 exploded epochs in a row, or after max(3, epochs / 2) stalled ones in a row
    (only with `epochs`, the planned budget). Epochs up to `warmup_epochs` are not judged. A
    non-finite loss is a collapse at once (reason "nonfinite").

    Example::

        monitor = CollapseMonitor(classes=10, epochs=30, warmup_epochs=2)
        for epoch in range(30):
            loss, acc, n = train_one_epoch()
            if monitor.update(loss, acc, n):
                print(monitor.reason); break
    """

    def __init__(self, classes: int | None = None, *, baseline_loss: float | None = None,
                 epochs: int | None = None, warmup_epochs: float = 0.0,
                 margin: float | None = None):
        if (classes is None) == (baseline_loss is None):
            raise ValueError("give classes (a classifier) or baseline_loss (any other loss)")
        if classes is not None and classes < 2:
            raise ValueError(f"classes must be at least 2, got {classes}")
        if baseline_loss is not None and not baseline_loss > 0:
            raise ValueError(f"baseline_loss must be positive, got {baseline_loss}")
        self.classes, self.epochs = classes, epochs
        self.baseline = math.log(classes) if classes is not None else float(baseline_loss)
        self.margin = (margin if margin is not None else
                       collapse.LOSS_MARGIN if classes is not None else 0.01 * self.baseline)
        self.first_epoch = collapse.first_judged_epoch(warmup_epochs)
        self.streaks = collapse.Streaks(collapse.stalled_needed(epochs) if epochs
                                        else math.inf)
        self.epoch = 0
        self.collapsed_epoch: int | None = None
        self.reason: str | None = None

    @property
    def collapsed(self) -> bool:
        return self.collapsed_epoch is not None

    def stalled(self, loss: float, accuracy: float | None = None,
                samples: int | None = None) -> bool:
        """Whether one epoch is at the level of a constant predictor (see the class)."""
        if self.classes is None:
            return loss >= self.baseline - self.margin
        if accuracy is None or samples is None:
            raise ValueError("a classifier's epoch needs its accuracy and number of samples")
        return (accuracy <= 1.0 / self.classes + collapse.accuracy_margin(samples, self.classes)
                and loss >= self.baseline - self.margin)

    def update(self, loss: float, accuracy: float | None = None,
               samples: int | None = None) -> bool:
        """Add one epoch (its training mean loss; for a classifier also its training accuracy
        and the number of samples it is over); True once the run has collapsed.

        Example::

            stop = monitor.update(2.31, 0.1, 50_000)
        """
        self.epoch += 1
        if self.collapsed:
            return True
        if not math.isfinite(loss):
            self.collapsed_epoch, self.reason = self.epoch, collapse.NONFINITE
            return True
        judged = self.epoch >= self.first_epoch
        is_stalled = judged and self.stalled(loss, accuracy, samples)
        if self.streaks.add(is_stalled, is_stalled and loss >= collapse.EXPLODED * self.baseline):
            self.collapsed_epoch, self.reason = self.epoch, collapse.REASON
        return self.collapsed


def factory_spec(model: str | Callable[[int], nn.Module]) -> str:
    """"MODULE:FACTORY" for a factory given as a string or as a module-level callable."""
    if isinstance(model, str):
        return model
    name = getattr(model, "__qualname__", "")
    if not callable(model) or not name or "<" in name:
        raise ValueError("model must be 'MODULE:FACTORY' or a module-level function (not a "
                         f"lambda or a local function), got {model!r}")
    return f"{model.__module__}:{name}"


def advise(batches: Sequence[int], out: str | Path, *,
           model: str | Callable[[int], nn.Module] | None = None, budget_images: int = 0,
           overwrite: bool = False, quiet: bool = True, **recipe) -> dict:
    """`batchscale advise` from Python: the probe of `recipe` (TrainConfig fields: dataset, lr,
    base_batch_size, optimizer, scale_rule, warmup_epochs, schedule, epochs, ...) at `batches`,
    on batchscale's ResNet-18 or on `model` (a factory `f(num_classes) -> nn.Module`, by
    "MODULE:FACTORY" or as a module-level function). Writes advice.json/.md/.png into `out`
    and returns the advice.json record. A thin wrapper: the data are batchscale's datasets
    (`dataset`: sample, cifar10 or an image folder) and the loss is cross-entropy.

    Example::

        record = advise([32, 128, 512], "advice/", model="mynets:make", lr=0.1,
                        base_batch_size=32, scale_rule="linear", warmup_epochs=2, epochs=30)
        print(record["advice"]["batch"])
    """
    fields = dict(recipe)
    if model is not None:
        fields["model"] = factory_spec(model)
    cfg = from_dict(fields)
    chosen = advise_probe.check_batches(",".join(str(b) for b in batches), cfg)
    return advise_probe.advise(cfg, chosen, Path(out), budget_images=budget_images,
                               overwrite=overwrite, quiet=quiet)

"""Gradient noise scale B_simple = tr(Σ) / |G|² (McCandlish et al. 2018, Appendix A), from the
squared norms of two gradient estimates of one step at two batch sizes (the unbiased estimates:
engine/noise_stats.py), each smoothed over steps before the ratio is taken.

    batchscale train ... --track-noise-scale        # adds noise_* fields to metrics.jsonl

In one process the two gradients must be gradients of one function, and with batch norm the
function depends on how many images share its statistics. With per-worker batch norm (groups of
cfg.bn_group images) the big gradient is the step's own (already computed) gradient, the mean of
its groups' gradients, and the small one is one group's, cycling through the groups step by
step, recomputed by an extra forward and backward pass over that group alone: about
b_small / b_big of a step's cost. With batch norm over the whole batch no small batch computes
the same function: BN over a quarter of the batch is not BN over all of it, and comparing the
two biased |G|² downwards (it came out negative in most epochs of the `mini` study). There the
noise scale is defined for batch norm over b_small = B / 4 images -- the function per-worker BN
with four workers would train: each quarter's gradient is computed with BN over that quarter,
the small squared norm is the mean of the four, and the big gradient is their mean
(b_big = 4 b_small). That costs one extra step's computation, and it measures the noise of the
quarter-batch function, not of the whole-batch function that trains (docs/analysis.md).
With noise_scale_every = N only every N-th step pays that pass (the moving averages then span
an epoch's N-th steps). A small batch of fewer than MIN_SMALL_BATCH images is not measured: batch
norm over one to three images computes a different function from the big batch's, so its
gradient is no sample of the same gradient (at B = 4 without groups the small batch would be one
image); such a run trains without the noise fields and says so once.
Batch-norm running statistics are restored afterwards and no random numbers are drawn, so the
training trajectory is the same as without tracking. Under torchrun the small gradient is each
worker's local gradient before the all-reduce: `BackwardNorms` (tensor hooks on the parameters)
reads it, with no extra pass, and the workers' squared norms are averaged (b_small = B / workers,
b_big = B); each worker's batch norm is over its own images, so both are gradients of one
function.

The estimator (`NoiseScaleTracker`: moving averages, the ratio, its error bar, "undefined" when
|G|² ≤ 0) and the hooks are the one implementation behind both the engine's tracking and the
public `batchscale.NoiseScale` (batchscale/api.py, docs/api.md).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from batchscale.engine.noise_stats import (
    ERROR_WINDOW,
    NORM_DTYPE,
    Estimate,
    effective_count,
    jackknife_ratio_error,
    span_of,
    squared_norm,
    unbiased_estimates,
)


class NoiseScaleTracker:
    """The noise-scale estimator: EMA-smoothed |G|² and tr(Σ) from pairs of squared gradient
    norms, their ratio B_simple, and its error bar. The engine (`attach`) and the public API
    (`batchscale.NoiseScale`) both feed this one class.

    Its state is a dict of tensors updated in place (no host synchronization per step), so that
    the dict kept in the training position (and its checkpoint) is always current; `recent`
    holds the last observations for the error bar."""

    def __init__(self, small_batch: int, big_batch: int, decay: float, state: dict | None = None,
                 every: int = 1, every_group: bool = False):
        self.small_batch, self.big_batch, self.decay = small_batch, big_batch, decay
        self.every_group = every_group  # whole-batch BN: measure each quarter (see the top)
        self.state = state if state is not None else self.fresh_state()
        span = span_of(decay)
        window = ERROR_WINDOW if math.isinf(span) else int(min(ERROR_WINDOW, max(2, round(span))))
        recent = self.state.get("recent")  # absent from checkpoints older than the error bar
        if recent is None or len(recent) != window:
            self.state["recent"] = torch.full((window, 2), math.nan, dtype=torch.float64,
                                              device=self.state["grad_sq"].device)
        self.every = every
        self.hook: BackwardNorms | None = None  # under torchrun: the workers' local norms

    def due(self) -> bool:
        """Count a training step; True on the first and then on every `every`-th."""
        seen = self.state.get("steps", 0)  # absent from checkpoints older than the field
        self.state["steps"] = seen + 1
        return seen % self.every == 0

    @staticmethod
    def fresh_state() -> dict:
        zero = torch.zeros((), dtype=torch.float64)
        return {"grad_sq": zero.clone(), "trace_sigma": zero.clone(), "weight": zero.clone(),
                "count": 0, "steps": 0}

    def to(self, device) -> NoiseScaleTracker:
        for key in ("grad_sq", "trace_sigma", "weight", "recent"):
            self.state[key] = self.state[key].to(device)
        return self

    def observe(self, small_sq, big_sq, valid: torch.Tensor | None = None) -> None:
        """One step's squared norms (float64 tensors; no host synchronization). With `valid` (a
        boolean tensor) an observation whose `valid` is False leaves the averages as they were
        (an AMP step whose gradients overflowed)."""
        grad_sq, trace_sigma = unbiased_estimates(small_sq, self.small_batch, big_sq,
                                                  self.big_batch)
        keep = self.decay
        fresh = 1 - keep if keep < 1 else 1.0  # decay 1: sums, the plain mean of all of them
        if valid is None:
            for key, value in (("grad_sq", grad_sq), ("trace_sigma", trace_sigma)):
                self.state[key].mul_(keep).add_(fresh * value)
            self.state["weight"].mul_(keep).add_(fresh)  # bias correction, as in Adam
        else:
            for key, value in (("grad_sq", grad_sq), ("trace_sigma", trace_sigma),
                               ("weight", None)):
                moved = self.state[key] * keep + fresh * (1.0 if value is None else value)
                self.state[key].copy_(torch.where(valid, moved, self.state[key]))
            grad_sq = torch.where(valid, grad_sq, math.nan)
        recent = self.state["recent"]
        recent[self.state["count"] % len(recent)] = torch.stack(
            [torch.as_tensor(grad_sq, dtype=torch.float64),
             torch.as_tensor(trace_sigma, dtype=torch.float64)]).to(recent.device)
        self.state["count"] += 1

    def estimate(self, average_workers: bool = False) -> Estimate:
        """The smoothed estimates, their ratio and its error (one host synchronization).

        `average_workers`: each worker observed its own local small-batch norm (the big one is
        the same everywhere); the estimates are linear in it, so averaging the workers' moving
        averages here (one all-reduce, a collective: every worker must call it) equals averaging
        the norms step by step, without a collective per step."""
        count = self.state["count"]
        sums, recent = self.state["grad_sq"], self.state["recent"]
        packed = torch.cat([sums.view(1), self.state["trace_sigma"].view(1), recent.flatten()])
        if average_workers:
            dist.all_reduce(packed)
            packed /= dist.get_world_size()
        weight = self.state["weight"].item()
        if weight == 0:
            return Estimate(None, None, None, None, self.small_batch, self.big_batch, count)
        grad_sq = packed[0].item() / weight
        trace_sigma = packed[1].item() / weight
        if not grad_sq > 0:
            return Estimate(None, None, grad_sq, trace_sigma, self.small_batch, self.big_batch,
                            count)
        rows = packed[2:].view_as(recent)[:min(count, len(recent))]
        rows = rows[torch.isfinite(rows).all(1)].tolist()
        error = jackknife_ratio_error([t for _, t in rows], [g for g, _ in rows])
        if error is not None:  # the error of a mean of len(rows), scaled to the average's
            error *= math.sqrt(len(rows) / effective_count(self.decay, count))
        return Estimate(trace_sigma / grad_sq, error, grad_sq, trace_sigma, self.small_batch,
                        self.big_batch, count)

    def values(self) -> dict:
        """The smoothed estimates and their ratio (None before the first step, and the ratio
        None where |G|² ≤ 0)."""
        e = self.estimate()
        return {"noise_grad_sq": e.grad_sq, "noise_trace_sigma": e.trace_sigma,
                "noise_b_simple": e.b_simple}

    def row(self) -> dict:
        """The fields a metrics.jsonl row carries."""
        e = self.estimate()
        error = {} if e.error is None else {"noise_b_simple_error": e.error}  # only a number
        return {"noise_grad_sq": e.grad_sq, "noise_trace_sigma": e.trace_sigma,
                "noise_b_simple": e.b_simple, **error,
                "noise_small_batch": self.small_batch, "noise_big_batch": self.big_batch}


# ---------------------------------------------------------------------- each backward's own
class BackwardNorms:
    """The squared norm of each backward pass's own gradient, read by tensor hooks on the
    parameters before autograd adds it into `p.grad`: under DDP that is the worker's local
    gradient before the all-reduce (the small batch, at no extra pass), and with gradient
    accumulation each micro-batch's gradient. `take()` returns (Σ over the passes since the last
    take of |g_pass|², float64, the number of passes) and starts again from zero.

    Each hook computes one norm (one kernel in the gradient's precision, no host
    synchronization) and adds its square in place into the parameter's float64 slot of a buffer
    made once (a tensor kept alive per hook call instead cost ~4x the norms' own time in a
    4-micro-batch step: benchmarks/api_noise_overhead.py); `take()` sums the buffer. Parameters
    without `requires_grad` are not hooked; one that a pass does not use contributes zero.
    `active` False makes the hooks ignore passes (steps that are not measured)."""

    def __init__(self, parameters):
        self.parameters = [p for p in parameters if p.requires_grad]
        devices = list(dict.fromkeys(p.device for p in self.parameters))
        self.buffers = {d: torch.zeros(sum(p.device == d for p in self.parameters),
                                       dtype=torch.float64, device=d) for d in devices}
        places = {d: iter(buffer.unbind()) for d, buffer in self.buffers.items()}
        self.slots = [next(places[p.device]) for p in self.parameters]  # views, made once
        self.calls = [0] * len(self.parameters)
        self.active = True
        self.handles = [p.register_hook(self._hook(i)) for i, p in enumerate(self.parameters)]

    def _hook(self, index: int):
        slot = self.slots[index]

        def hook(gradient: torch.Tensor) -> None:
            if self.active:
                norm = torch.linalg.vector_norm(gradient.detach(),
                                                dtype=NORM_DTYPE.get(gradient.dtype))
                slot.addcmul_(norm, norm)
                self.calls[index] += 1
        return hook

    def take(self) -> tuple[torch.Tensor | None, int]:
        passes = max(self.calls, default=0)
        self.calls = [0] * len(self.parameters)
        if not passes:
            return None, 0
        buffers = list(self.buffers.values())
        total = buffers[0].sum()
        for buffer in buffers[1:]:
            total = total + buffer.sum().to(total.device)
        for buffer in buffers:
            buffer.zero_()
        return total, passes

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def fast_squared_norm(tensors) -> torch.Tensor:
    """Σ |t|² in float64 (None entries skipped), from one fused per-tensor norm
    (`torch._foreach_norm`, each in its tensor's own precision, float32 for half types; their
    squares summed in float64) where this torch has it, else `squared_norm`."""
    present = [t.detach() for t in tensors if t is not None]
    if not present:
        return torch.zeros((), dtype=torch.float64)
    present = [t.float() if t.dtype in NORM_DTYPE else t for t in present]
    try:
        norms = torch._foreach_norm(present, 2)
    except (AttributeError, TypeError, RuntimeError):
        return squared_norm(present)
    return torch.stack(norms).double().square().sum()


# ---------------------------------------------------------------------- the public estimator
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
      steps (`math.inf`: the plain mean of all). Nothing synchronizes the host but `estimate()`.
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
        if not span >= 1:  # math.inf: the plain mean of every observation
            raise ValueError(f"span must be a number of steps >= 1 (or math.inf), got {span}")
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.model, self.batch_size = model, batch_size
        self.optimizer, self.scaler, self.every = optimizer, scaler, every
        self.decay = 1.0 - 2.0 / (span + 1.0) if math.isfinite(span) else 1.0
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

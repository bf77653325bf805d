"""The gradient noise scale's statistics (McCandlish et al. 2018, Appendix A). From the squared
norms of two gradient estimates of the same step, one over b_small samples and one over b_big
samples, the unbiased estimates of the true gradient's squared norm |G|² and of the trace of the
per-sample gradient covariance tr(Σ) are

    |G|²  = (b_big |G_big|² - b_small |G_small|²) / (b_big - b_small)
    tr(Σ) = (|G_small|² - |G_big|²) / (1 / b_small - 1 / b_big)

(E|G_b|² = |G|² + tr(Σ) / b for each). Each is smoothed by an exponential moving average over
steps before the ratio is taken, since the ratio of two noisy estimates is biased. Here: those
estimates, the batch sizes a single process measures, the moving average's span and effective
count, the jackknife error of a ratio, and one reading (`Estimate`). Pure arithmetic; the
estimator and the hooks that feed it are in engine/noise.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MIN_SMALL_BATCH = 4
# A gradient's norm is computed in its own precision (float32 or float64: half the cost of
# converting it to float64 first; the relative error of a float32 norm, ~1e-7, is far below a
# noise-scale estimate's), half types in float32; the squares are summed in float64.
NORM_DTYPE = {torch.float16: torch.float32, torch.bfloat16: torch.float32}


def unbiased_estimates(small_sq, small_batch: int, big_sq, big_batch: int):
    """(|G|², tr(Σ)) from the squared gradient norms at two batch sizes (App. A, eqs. A.2)."""
    if not 0 < small_batch < big_batch:
        raise ValueError(f"need 0 < small batch {small_batch} < big batch {big_batch}")
    grad_sq = (big_batch * big_sq - small_batch * small_sq) / (big_batch - small_batch)
    trace_sigma = (small_sq - big_sq) / (1.0 / small_batch - 1.0 / big_batch)
    return grad_sq, trace_sigma


def squared_norm(tensors) -> torch.Tensor:
    """Σ |t|² over a list of tensors (None entries skipped), in float64."""
    return sum((t.detach().double().square().sum() for t in tensors if t is not None),
               torch.zeros((), dtype=torch.float64))


def small_batch_size(group_size: int, batch_size: int) -> int:
    """The small batch: one batch-norm group, or a quarter of the batch when there is none."""
    return group_size if group_size < batch_size else max(1, batch_size // 4)


def measured_batches(group_size: int, batch_size: int) -> tuple[int, int, bool]:
    """(b_small, b_big, every_group) of the single-process measurement: with BN groups the big
    batch is the step's own; with whole-batch BN it is the four quarters measured separately."""
    small = small_batch_size(group_size, batch_size)
    if group_size < batch_size:
        return small, batch_size, False
    return small, small * (batch_size // small), True


ERROR_WINDOW = 256  # the error bar's observations: the last min(span, this) of them


def span_of(decay: float) -> float:
    """The number of observations an exponential moving average with this decay spans:
    decay = 1 - 2 / (span + 1), and its variance is that of a mean of `span` observations."""
    return 2.0 / (1.0 - decay) - 1.0 if decay < 1 else math.inf


def effective_count(decay: float, count: int) -> float:
    """How many independent observations the bias-corrected moving average of `count` equally
    noisy ones is worth: (sum of its weights)² / (sum of their squares)."""
    if count <= 0:
        return 0.0
    if decay >= 1:
        return float(count)
    total = 1.0 - decay ** count
    squares = (1.0 - decay) * (1.0 - decay ** (2 * count)) / (1.0 + decay)
    return total * total / squares


def jackknife_ratio_error(numerator, denominator) -> float | None:
    """The delete-one jackknife standard error of sum(numerator) / sum(denominator) (float
    sequences of equal length); None with fewer than two values or a leave-one-out sum ≤ 0."""
    n = len(numerator)
    if n < 2:
        return None
    total_n, total_d = math.fsum(numerator), math.fsum(denominator)
    ratios = []
    for a, b in zip(numerator, denominator, strict=True):
        if not total_d - b > 0:
            return None
        ratios.append((total_n - a) / (total_d - b))
    mean = math.fsum(ratios) / n
    return math.sqrt((n - 1) / n * math.fsum((r - mean) ** 2 for r in ratios))


@dataclass(frozen=True)
class Estimate:
    """One reading of the noise scale. `b_simple` is None when it is undefined (the smoothed
    |G|² ≤ 0: the gradient is not resolved above its noise, and no number would mean anything)
    or before the first observation; `error` is a standard error (jackknife over the recent
    observations, scaled to the moving average's effective number of them), None with fewer
    than two observations or where the jackknife is itself undefined."""

    b_simple: float | None
    error: float | None
    grad_sq: float | None
    trace_sigma: float | None
    small_batch: int
    big_batch: int
    observations: int

    @property
    def defined(self) -> bool:
        return self.b_simple is not None

    def __str__(self) -> str:
        if self.observations == 0:
            return "B_simple: not measured yet"
        if self.b_simple is None:
            return (f"B_simple undefined: |G|² = {self.grad_sq:.3g} <= 0 after "
                    f"{self.observations} observations (the gradient is not resolved above its "
                    f"noise at b_small {self.small_batch} / b_big {self.big_batch})")
        error = "" if self.error is None else f" ± {self.error:.2g}"
        return (f"B_simple = {self.b_simple:.4g}{error} (b_small {self.small_batch}, b_big "
                f"{self.big_batch}, {self.observations} observations)")

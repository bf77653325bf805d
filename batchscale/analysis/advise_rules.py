"""The rules `batchscale advise` decides by, apart from the probe that measures: when a probe
has diverged, the lr range test, the noise scale's step and image counts (McCandlish et al.
2018), each batch's verdict and the advice. Plain functions of numbers, tested by hand in
tests/test_advise.py; the probe is in advise.py, the files it writes in advise_report.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from batchscale.config import TrainConfig, from_dict

# The per-step divergence criterion of a probe (see `step_diverged`).
DIVERGE_FACTOR, DIVERGE_PATIENCE = 2.0, 3
# A batch is "stable" when its peak lr is at most the range test's stable lr / SAFETY: the short
# test holds each rate for one step, a run holds the peak for thousands.
SAFETY = 1.5
RAMP_SPAN = 10.0  # the range test at B ramps from peak(B) / SPAN to peak(B) × SPAN


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


# ---------------------------------------------------------------------- verdicts and advice
def config_at(cfg: TrainConfig, batch: int) -> TrainConfig:
    return from_dict({**cfg.to_dict(), "batch_size": batch, "track_noise_scale": False})


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



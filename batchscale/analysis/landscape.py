"""Loss landscape of trained runs (Li et al. 2018): 1-D filter-normalized slices, and the linear
path between two runs.

    batchscale analyze landscape runs/mini/trivial/b8/seed0 runs/mini/trivial/b128/seed0
    batchscale analyze landscape RUN_A RUN_B --interpolate

Slice: θ(α) = θ + α d, α ∈ [-1, 1], where d is a Gaussian direction whose every filter (slice
along the first dimension of a weight with ≥ 2 dimensions) is rescaled to the norm of the same
filter of θ; one-dimensional parameters (BN scales and shifts, biases) get d = 0 unless
`include_1d`. The direction comes from a seed, so every run of one architecture is cut by the
same random direction, rescaled to its own filters. Interpolation: θ(α) = (1 - α) θ_A + α θ_B for
α ∈ [-0.5, 1.5], batch-norm running means and variances interpolated too (variances clamped at 0
when extrapolating). Both evaluate the loss and accuracy on a fixed class-balanced sample of the
run's training images (no augmentation) and on the test split, batch norm in eval mode.

Sharpness of a run: the mean rise of the training loss at α = ±0.5 over its value at α = 0.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from batchscale import files
from batchscale.config import TrainConfig, load_yaml
from batchscale.engine import checkpoint, rundir
from batchscale.engine.data import Split, balanced_subset, eval_batches, load_dataset
from batchscale.engine.models import build_model
from batchscale.engine.setup import resolve_device
from batchscale.engine.step import evaluate_model
from batchscale.errors import UserError

RESULT_FILE = "landscape.json"
SHARPNESS_ALPHA = 0.5


# ---------------------------------------------------------------------- runs
@dataclass
class LoadedRun:
    directory: Path
    cfg: TrainConfig
    model: torch.nn.Module
    train: Split  # the images the run trained on
    test: Split
    device: torch.device

    def train_sample(self, images: int, seed: int = 0) -> Split:
        """A fixed class-balanced sample of the run's training images (all when 0)."""
        return balanced_subset(self.train, images, seed)


def check_run_dir(run_dir: Path) -> None:
    """One-line user errors for a path that is not a finished-enough run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"no run directory {run_dir}")
    if not (run_dir / rundir.CONFIG).exists():
        raise UserError(f"{run_dir} holds no run (no {rundir.CONFIG})")
    if not (run_dir / checkpoint.NAME).exists():
        raise UserError(f"{run_dir} has no {checkpoint.NAME} to analyze")


def load_run(run_dir: Path, device: str = "auto", data_cache: dict | None = None) -> LoadedRun:
    """A run's final (checkpointed) model in eval mode, with its training and test splits."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    cfg = load_yaml(run_dir / rundir.CONFIG)
    state = checkpoint.load(run_dir / checkpoint.NAME)
    target = resolve_device(device)
    key = (cfg.dataset, cfg.data_dir)
    cache = data_cache if data_cache is not None else {}
    if key not in cache:
        cache[key] = load_dataset(cfg.dataset, cfg.data_dir, progress=False)
    train, test, classes = cache[key]
    model = build_model(cfg.model, cfg.width, len(classes), cfg.bn_momentum)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as err:
        raise UserError(f"{run_dir}/{checkpoint.NAME} does not fit its config: "
                        f"{str(err).splitlines()[0]}") from None
    train = balanced_subset(train, cfg.train_subset, cfg.seed)
    return LoadedRun(run_dir, cfg, model.to(target).eval(), train.to(target), test.to(target),
                     target)


def stacked(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.cat([x for x, _ in eval_batches(split, 10_000)]).contiguous()
    return images, split.labels


# ---------------------------------------------------------------------- directions
def filter_normalized_direction(model: torch.nn.Module, seed: int = 0,
                                include_1d: bool = False) -> dict[str, torch.Tensor]:
    """A seeded Gaussian direction over the parameters, filter-normalized (Li et al. Sec. 4)."""
    generator = torch.Generator().manual_seed(seed)
    direction = {}
    for name, weight in model.named_parameters():
        d = torch.randn(weight.shape, generator=generator, dtype=torch.float64)
        w = weight.detach().cpu().double()
        if weight.ndim >= 2:
            d_norm = d.flatten(1).norm(dim=1).clamp_min(1e-12)
            d *= (w.flatten(1).norm(dim=1) / d_norm).view(-1, *[1] * (d.ndim - 1))
        elif include_1d:
            d *= w.norm() / d.norm().clamp_min(1e-12)
        else:
            d.zero_()
        direction[name] = d.to(weight)
    return direction


# ---------------------------------------------------------------------- evaluation
@torch.no_grad()
def _curve(model, set_point, alphas, splits: dict[str, Split], batch_size: int) -> dict:
    values = {f"{name}_{kind}": [] for name in splits for kind in ("loss", "acc")}
    for alpha in alphas:
        set_point(alpha)
        for name, split in splits.items():
            loss, acc = evaluate_model(model, split, batch_size)
            values[f"{name}_loss"].append(loss)
            values[f"{name}_acc"].append(acc)
    return {"alpha": list(alphas), **values}


def alpha_grid(low: float, high: float, points: int, extra: tuple[float, ...] = ()) -> list[float]:
    grid = {round(low + (high - low) * i / (points - 1), 10) for i in range(points)}
    return sorted(grid | {a for a in extra if low <= a <= high})


def sharpness(curve: dict, key: str = "train_loss", alpha: float = SHARPNESS_ALPHA) -> float:
    """Mean rise of `key` at ±alpha over its value at 0 (all three must be grid points)."""
    at = dict(zip(curve["alpha"], curve[key], strict=True))
    return (at[alpha] + at[-alpha]) / 2 - at[0.0]


def slice_run(run: LoadedRun, points: int = 51, direction_seed: int = 0, train_images: int = 1000,
              test_images: int = 0, include_1d: bool = False, sample_seed: int = 0) -> dict:
    """The 1-D filter-normalized slice of one run; also written to RUN_DIR/landscape.json."""
    model = run.model
    origin = {name: p.detach().clone() for name, p in model.named_parameters()}
    direction = filter_normalized_direction(model, direction_seed, include_1d)
    params = dict(model.named_parameters())

    @torch.no_grad()
    def set_point(alpha):
        for name, p in params.items():
            p.copy_(origin[name] + alpha * direction[name])

    splits = {"train": run.train_sample(train_images, sample_seed),
              "test": balanced_subset(run.test, test_images, sample_seed)}
    alphas = alpha_grid(-1.0, 1.0, points, (-SHARPNESS_ALPHA, 0.0, SHARPNESS_ALPHA))
    curve = _curve(model, set_point, alphas, splits, run.cfg.eval_batch_size)
    set_point(0.0)
    record = {"run": str(run.directory), "batch_size": run.cfg.batch_size,
              "bn_group": run.cfg.bn_group, "direction_seed": direction_seed,
              "include_1d": include_1d, "train_images": len(splits["train"]),
              "test_images": len(splits["test"]), "sample_seed": sample_seed,
              "sharpness_alpha": SHARPNESS_ALPHA, "sharpness": sharpness(curve),
              "test_sharpness": sharpness(curve, "test_loss"), **curve}
    files.write_text(run.directory / RESULT_FILE, json.dumps(record, indent=2) + "\n")
    return record


def interpolate_runs(first: LoadedRun, second: LoadedRun, points: int = 41,
                     train_images: int = 1000, test_images: int = 0,
                     sample_seed: int = 0) -> dict:
    """Loss along (1 - α) θ_A + α θ_B, α ∈ [-0.5, 1.5], BN running statistics included."""
    state_a, state_b = first.model.state_dict(), second.model.state_dict()
    if state_a.keys() != state_b.keys() or any(state_a[k].shape != state_b[k].shape
                                               for k in state_a):
        raise UserError(f"{first.directory} and {second.directory} have different "
                        "architectures; interpolation needs the same model and width")
    # both cloned: the model's own tensors change as points are loaded (and `second` may be
    # the same loaded run as `first`)
    state_a = {k: v.clone() for k, v in state_a.items()}
    state_b = {k: v.clone() for k, v in state_b.items()}
    model = first.model

    def set_point(alpha):
        mixed = {}
        for key, a in state_a.items():
            if not a.is_floating_point():
                mixed[key] = a  # num_batches_tracked
                continue
            value = (1 - alpha) * a + alpha * state_b[key]
            mixed[key] = value.clamp_min(0) if key.endswith("running_var") else value
        model.load_state_dict(mixed)

    splits = {"train": first.train_sample(train_images, sample_seed),
              "test": balanced_subset(first.test, test_images, sample_seed)}
    curve = _curve(model, set_point, alpha_grid(-0.5, 1.5, points, (0.0, 1.0)), splits,
                   first.cfg.eval_batch_size)
    set_point(0.0)
    return {"run_a": str(first.directory), "run_b": str(second.directory),
            "batch_size_a": first.cfg.batch_size, "batch_size_b": second.cfg.batch_size,
            "train_images": len(splits["train"]), "test_images": len(splits["test"]), **curve}


# ---------------------------------------------------------------------- figures
def label_of(record: dict) -> str:
    group = record.get("bn_group") or 0
    return f"B = {record['batch_size']}" + (f", BN group {group}" if group else "")


def loss_ceiling(curves: list[tuple[list[float], list[float]]], within: float = 0.5) -> float:
    """Top of a loss axis: far along a direction the loss explodes (to 10-100) and would flatten
    every curve near the minimum, so cap the axis at 1.1 x the largest loss at |α| <= `within`,
    and never below 1.1 x chance level ln(10); curves that stay lower keep their own maximum."""
    near = [loss for alphas, losses in curves for a, loss in zip(alphas, losses, strict=True)
            if abs(a) <= within + 1e-9]
    highest = max(loss for _, losses in curves for loss in losses)
    return min(highest * 1.05, 1.1 * max(max(near, default=0.0), math.log(10)))


def plot_slices(records: list[dict], path: Path, title: str = "") -> None:
    """Training and test loss along the slice, a curve per run (as the study's Fig. 1b)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for record in sorted(records, key=lambda r: (r["batch_size"], r.get("bn_group") or 0)):
        label = f"{label_of(record)} (sharpness {record['sharpness']:.3g})"
        line, = axes[0].plot(record["alpha"], record["train_loss"], label=label)
        axes[1].plot(record["alpha"], record["test_loss"], color=line.get_color())
    for ax, split in zip(axes, ("training sample", "test split"), strict=True):
        ax.set_xlabel("α (filter-normalized direction)")
        ax.set_title(f"{split} loss" + (f" — {title}" if title else ""))
        ax.grid(alpha=0.3)
    curves = [(r["alpha"], r[key]) for r in records for key in ("train_loss", "test_loss")]
    axes[0].set_ylim(0, loss_ceiling(curves))  # shared y: sets both panels
    axes[0].set_ylabel("cross-entropy (axis capped near |α| = 0.5)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    files.save_figure(fig, path, 110)
    plt.close(fig)


def plot_interpolation(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(record["alpha"], record["train_loss"], label="training sample loss")
    ax.plot(record["alpha"], record["test_loss"], label="test loss")
    ax2 = ax.twinx()
    ax2.plot(record["alpha"], record["test_acc"], "--", color="gray", label="test accuracy")
    ax2.set_ylabel("test accuracy")
    ax.set_xlabel(f"α: 0 = B {record['batch_size_a']}, 1 = B {record['batch_size_b']}")
    ax.set_ylabel("cross-entropy")
    ax.legend(fontsize=8, loc="upper center")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    files.save_figure(fig, path, 110)
    plt.close(fig)

"""The report's figures (matplotlib, Agg backend), drawn from run directories' metrics.

    batchscale report runs/demo     # calls write_figures; see batchscale.results.report

curves.png            test and train accuracy vs epoch, a line per batch size, a panel per recipe
                      (as the study's Figs. 2-4)
final_vs_batch.png    final test accuracy vs batch size per recipe, the study's numbers dashed
comparison.png        the recipes side by side at the two largest batch sizes (Fig. 5)
steps_to_target.png   steps to a target test accuracy vs batch size, log-log, with the
                      perfect-scaling line steps ∝ 1/B (as Shallue et al. 2018 plot it)
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import matplotlib
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from batchscale import files
from batchscale.engine import rundir  # noqa: E402
from batchscale.results.collect import mean_std, published_row  # noqa: E402

DPI = 110


def mean_curve(runs, key: str) -> tuple[list[int], list[float]]:
    """Mean over runs of `key` per epoch, over the epochs every run has."""
    rows = [r.metrics for r in runs if r.metrics]
    if not rows:
        return [], []
    length = min(len(m) for m in rows)
    epochs = [rows[0][i]["epoch"] for i in range(length)]
    return epochs, [statistics.fmean(m[i][key] for m in rows) for i in range(length)]


def steps_to(run, target: float) -> int | None:
    """The step at the end of the first epoch whose test accuracy reaches `target`."""
    return next((row["step"] for row in run.metrics if row["test_acc"] >= target), None)


def default_target(grouped) -> float | None:
    """0.8 × the mean final test accuracy at the smallest batch size, rounded down to 0.01."""
    smallest = min(c.batch_size for cells in grouped.values() for c in cells)
    values = [v for cells in grouped.values() for c in cells if c.batch_size == smallest
              for v in c.values("test_acc")]
    return math.floor(80 * statistics.fmean(values)) / 100 if values else None


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    files.save_figure(fig, path, DPI)
    plt.close(fig)


def plot_curves(grouped, path: Path) -> None:
    recipes = list(grouped)
    fig, axes = plt.subplots(2, len(recipes), figsize=(4.2 * len(recipes), 6.4), squeeze=False,
                             sharey="row")
    for col, recipe in enumerate(recipes):
        for cell in grouped[recipe]:
            for row, key in enumerate(("test_acc", "train_acc")):
                epochs, values = mean_curve(cell.runs, key)
                axes[row][col].plot(epochs, values, label=f"B={cell.batch_size}")
        axes[0][col].set_title(recipe)
        for row, label in enumerate(("test accuracy", "train accuracy")):
            axes[row][col].set_xlabel("epoch")
            axes[row][col].set_ylabel(label)
            axes[row][col].grid(alpha=0.3)
        axes[0][col].legend(fontsize=8)
    _save(fig, path)


def plot_final_vs_batch(grouped, plan, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for recipe, cells in grouped.items():
        points = [(c.batch_size, *mean_std(c.values("test_acc"))) for c in cells if c.completed]
        if points:
            line = ax.errorbar([p[0] for p in points], [p[1] for p in points],
                               yerr=[p[2] or 0 for p in points], marker="o", capsize=3,
                               label=recipe)
            study = [(c.batch_size, published_row(plan, c)) for c in cells]
            study = [(b, row.test_acc) for b, row in study if row]
            if study:
                ax.plot(*zip(*study, strict=True), linestyle="--", marker="x",
                        color=line[0].get_color(), alpha=0.6, label=f"{recipe} (study)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size B")
    ax.set_ylabel("final test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_comparison(grouped, path: Path) -> None:
    sizes = sorted({c.batch_size for cells in grouped.values() for c in cells})[-2:]
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.2 * len(sizes), 4.0), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        for recipe, cells in grouped.items():
            for cell in (c for c in cells if c.batch_size == size):
                ax.plot(*mean_curve(cell.runs, "test_acc"), label=recipe)
        ax.set_title(f"B = {size}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)


def plot_steps_to_target(grouped, target: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    anchor = None
    for recipe, cells in grouped.items():
        points = []
        for cell in cells:
            steps = [s for s in (steps_to(r, target) for r in cell.runs) if s is not None]
            if steps:
                points.append((cell.batch_size, statistics.fmean(steps)))
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=recipe)
            anchor = anchor if anchor and anchor[0] <= points[0][0] else points[0]
    if anchor:
        sizes = sorted({c.batch_size for cells in grouped.values() for c in cells})
        ax.plot(sizes, [anchor[1] * anchor[0] / b for b in sizes], color="gray",
                linestyle=":", label="perfect scaling (steps ∝ 1/B)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size B")
    ax.set_ylabel(f"steps to test accuracy ≥ {target:.2f}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    _save(fig, path)


def write_figures(out: Path, grouped, target: float | None):
    """Draw every figure into `out`; return ([(file name, caption)], the target used)."""
    plan_path = out / rundir.STUDY_PLAN
    plan = yaml.safe_load(plan_path.read_text()) if plan_path.exists() else {}
    target = target if target is not None else default_target(grouped)
    figures = [("curves.png", "Test (top) and train (bottom) accuracy vs epoch, mean over "
                              "seeds, one line per batch size, one panel per recipe."),
               ("final_vs_batch.png", "Final test accuracy vs batch size (mean ± std over "
                                      "seeds); dashed: the study's published numbers."),
               ("comparison.png", "Test accuracy vs epoch of each recipe at the two largest "
                                  "batch sizes.")]
    plot_curves(grouped, out / figures[0][0])
    plot_final_vs_batch(grouped, plan, out / figures[1][0])
    plot_comparison(grouped, out / figures[2][0])
    if target is not None:
        plot_steps_to_target(grouped, target, out / "steps_to_target.png")
        figures.append(("steps_to_target.png", f"Steps (at epoch ends) to reach test accuracy "
                        f"≥ {target:.2f} vs batch size, mean over the seeds that reach it; "
                        f"dotted: perfect scaling from the smallest batch."))
    return figures, target

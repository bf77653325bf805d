"""The report section "Why couldn't we scale further?", from files in the run directories:
RUN_DIR/landscape.json and RUN_DIR/hessian.json (`batchscale analyze ...`) and the noise_*
fields of metrics.jsonl (`--track-noise-scale`). `batchscale.results.report.write_report` calls
`scaling_section`; it returns no lines when none of these was measured and no run diverged.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from batchscale import files
from batchscale.analysis.landscape import loss_ceiling
from batchscale.results.collect import collect, fmt_interval, mean_interval

DROP = 0.01  # "accuracy starts to drop": mean final test accuracy this far below the smallest B's


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _share(pair: tuple[int, int]) -> str:
    count, total = pair
    return "—" if not total else f"{count}/{total} ({count / total:.0%})"


def _fmt(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def measurements(out: Path, cell) -> dict:
    """Seed means of a cell's landscape sharpness, top eigenvalue and noise scale."""
    landscapes = [_read(out / r.directory / "landscape.json") for r in cell.completed]
    hessians = [_read(out / r.directory / "hessian.json") for r in cell.completed]
    # per epoch, None where undefined: epochs stay aligned across seeds
    noise = [[m.get("noise_b_simple") for m in r.metrics] for r in cell.completed]
    late = [late_b_simple(r.metrics) for r in cell.completed]
    tracked = [m for r in cell.completed for m in r.metrics if "noise_grad_sq" in m]
    return {
        "test_acc": _mean(cell.values("test_acc")),
        "sharpness": _mean([x["sharpness"] for x in landscapes if x]),
        # how well the weights fit their training data: accuracy at α = 0, BN in eval mode, no
        # augmentation (the metrics' train_acc is taken in train mode, on augmented batches,
        # with batch statistics of each BN group -- noisy for groups of a few images)
        "fit_acc": _mean([x["train_acc"][x["alpha"].index(0.0)] for x in landscapes if x]),
        "eigenvalue": _mean([x["eigenvalue"] for x in hessians if x]),
        # ratio of the last LATE epochs' mean tr(Σ) to their mean |G|², per run; seed mean
        "b_simple_final": mean_interval([v for v in late if v is not None])[0],
        "b_simple_late": [v for v in late if v is not None],
        "b_simple_runs": (sum(v is not None for v in late), len(late)),
        # epochs whose smoothed |G|² estimate is ≤ 0 (B_simple undefined), of all tracked
        "undefined": (sum(not (m["noise_grad_sq"] or 0) > 0 for m in tracked), len(tracked)),
        "landscapes": [x for x in landscapes if x],
        "noise": [s for s in noise if any(v is not None for v in s)],
    }


LATE = 5  # epochs at the end of a run that the noise-scale estimate is taken over


def epoch_mean(values) -> float:
    """The mean of one epoch's defined values over seeds; NaN (a gap in the plot) if none."""
    defined = [v for v in values if v is not None]
    return statistics.fmean(defined) if defined else math.nan


def late_b_simple(metrics: list[dict], epochs: int = LATE) -> float | None:
    """mean tr(Σ) / mean |G|² over the last `epochs` tracked epochs (None when untracked or
    when the mean |G|² is ≤ 0: the estimate is undefined there, not skipped to a positive
    epoch)."""
    rows = [m for m in metrics if m.get("noise_grad_sq") is not None][-epochs:]
    if not rows:
        return None
    grad_sq = statistics.fmean(m["noise_grad_sq"] for m in rows)
    trace = statistics.fmean(m["noise_trace_sigma"] for m in rows)
    return trace / grad_sq if grad_sq > 0 else None


def _noise_cell(m: dict) -> str:
    """B_simple over the last epochs with its 95% interval over seeds, or why there is none."""
    defined, runs = m["b_simple_runs"]
    if not runs or not m["undefined"][1]:
        return "—"
    if not defined:
        return f"undefined (mean G² ≤ 0) in {runs}/{runs} runs"
    shown = fmt_interval(m["b_simple_late"]).replace(" (1 seed)", "")
    number = shown.split(" ")[0]
    shown = shown.replace(number, f"{float(number):.3g}", 1)
    if " ± " in shown:
        mean, half = shown.split(" ± ")
        shown = f"{mean} ± {float(half):.2g}"
    seeds = f"{defined} seed" + ("s" if defined > 1 else "")
    missing = f"; undefined in {runs - defined}" if defined < runs else ""
    return f"{shown} ({seeds}{missing})"


def drop_batch(cells: list, table: dict) -> int | None:
    """The smallest batch size whose mean final test accuracy is DROP below the smallest B's."""
    accs = [(c.batch_size, table[c.batch_size]["test_acc"]) for c in cells
            if table[c.batch_size]["test_acc"] is not None]
    if len(accs) < 2:
        return None
    reference = accs[0][1]
    return next((b for b, acc in accs[1:] if acc < reference - DROP), None)


def _trend(pairs: list[tuple[int, float]]) -> str:
    values = [v for _, v in pairs]
    if len(values) < 2:
        return "one batch size only"
    if all(a < b for a, b in zip(values[:-1], values[1:], strict=True)):
        return "rises with B"
    if all(a > b for a, b in zip(values[:-1], values[1:], strict=True)):
        return "falls with B"
    return "is not monotone in B"


def divergences(out: Path, grouped, compare_with: list[str]) -> list[str]:
    """Runs that did not train, here and in the sibling studies the preset names
    (`compare_with:`, e.g. the study's B = 4096 run beside its Table III)."""
    lines = []
    runs = {r.directory: r for cells in grouped.values() for c in cells for r in c.runs}
    for name in compare_with:
        sibling = out.parent / name
        if not sibling.is_dir() or sibling.resolve() == out.resolve():
            continue
        try:
            runs.update({f"../{name}/{r.directory}": r for r in collect(sibling)[1]})
        except Exception:  # an unreadable sibling study is not this report's failure
            pass
    for name, r in runs.items():
        lr = r.summary.get("peak_lr")
        lr_text = f", peak lr {lr:.4g}" if lr is not None else ""
        if r.collapsed_epoch is not None:
            lines.append(f"- `{name}` (B = {r.batch_size}{lr_text}) collapsed at epoch "
                         f"{r.collapsed_epoch}: training accuracy at chance with a loss no "
                         f"better than ln(classes) (docs/collapse.md); it does not train.")
        elif r.status == "diverged":
            step = r.summary.get("diverged_at_step")
            per_epoch = r.summary.get("steps_per_epoch") or 0
            epoch = f", epoch {step // per_epoch + 1}" if step is not None and per_epoch else ""
            lines.append(f"- `{name}` (B = {r.batch_size}{lr_text}) diverged at step "
                         f"{step}{epoch} (non-finite loss).")
    return lines


# ---------------------------------------------------------------------- figures
def _plot(out: Path, grouped, tables: dict, drops: dict) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    recipes = list(grouped)
    for name, key in (("scaling_landscape.png", "landscapes"), ("noise_scale.png", "noise")):
        if not any(tables[r][c.batch_size][key] for r in recipes for c in grouped[r]):
            continue
        fig, axes = plt.subplots(1, len(recipes), figsize=(4.2 * len(recipes), 3.6),
                                 squeeze=False)
        for ax, recipe in zip(axes[0], recipes, strict=True):
            for cell in grouped[recipe]:
                found = tables[recipe][cell.batch_size][key]
                if key == "landscapes" and found:
                    alphas = found[0]["alpha"]
                    same = [x["train_loss"] for x in found if x["alpha"] == alphas]
                    ax.plot(alphas, [statistics.fmean(v) for v in zip(*same, strict=True)],
                            label=f"B = {cell.batch_size}")
                elif key == "noise" and found:
                    length = min(len(s) for s in found)
                    ax.plot(range(1, length + 1), [epoch_mean(s[i] for s in found)
                                                   for i in range(length)],
                            label=f"B = {cell.batch_size}")
            if key == "landscapes":

                curves = [(line.get_xdata(), line.get_ydata()) for line in ax.get_lines()]
                if curves:
                    ax.set_ylim(0, loss_ceiling(curves))
            if key == "noise":
                ax.set_yscale("log")
                ax.set_xlabel("epoch")
                if drops.get(recipe):
                    ax.axhline(drops[recipe], ls="--", color="gray",
                               label=f"accuracy drops at B = {drops[recipe]}")
            else:
                ax.set_xlabel("α (filter-normalized direction)")
            ax.set_title(recipe)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:  # a recipe without measurements has none
                ax.legend(fontsize=7)
        axes[0][0].set_ylabel("training loss" if key == "landscapes" else "B_simple")
        fig.tight_layout()
        files.save_figure(fig, out / name, 110)
        plt.close(fig)
        figures.append((name, "Training loss along one filter-normalized random direction, "
                        "mean over seeds (Li et al. 2018; the study's Fig. 1b)"
                        if key == "landscapes" else "Gradient noise scale B_simple per epoch "
                        "(McCandlish et al. 2018), mean over the seeds where it is defined, "
                        "gaps where none is; dashed: the batch size "
                        "where mean test accuracy first falls more than "
                        f"{DROP:g} below the smallest batch's"))
    return figures


# ---------------------------------------------------------------------- the section
def scaling_section(out: Path, grouped, compare_with: list[str] = ()) -> list[str]:
    """Markdown lines of the section (and its figures written into `out`), or []."""
    out = Path(out)
    tables = {recipe: {c.batch_size: measurements(out, c) for c in cells}
              for recipe, cells in grouped.items()}
    measured = any(m["sharpness"] is not None or m["eigenvalue"] is not None
                   or m["b_simple_final"] is not None
                   for t in tables.values() for m in t.values())
    diverged = divergences(out, grouped, list(compare_with))
    if not measured and not diverged:
        return []
    drops = {recipe: drop_batch(cells, tables[recipe]) for recipe, cells in grouped.items()}
    lines = ["## Why couldn't we scale further?", "",
             "Sharpness: training-loss rise at |α| = 0.5 along a filter-normalized random "
             "direction (`batchscale analyze landscape`). λ_max: top eigenvalue of the "
             "training-loss Hessian (`batchscale analyze hessian`). B_simple = tr(Σ)/|G|², the "
             f"gradient noise scale (`--track-noise-scale`): per run the ratio of the mean "
             f"tr(Σ) to the mean |G|² over its last {LATE} epochs, then the mean over seeds ± "
             "its 95% t-interval (undefined where the mean |G|² is ≤ 0: such runs are counted, "
             "not replaced by an earlier positive epoch); *undefined epochs*: the share of "
             "epochs whose smoothed |G|² estimate is ≤ 0 (docs/statistics.md). Under batch "
             "norm over the whole batch, B_simple is that of batch norm over a quarter of the "
             "batch, each quarter's gradient measured (docs/analysis.md). "
             "*Fit*: accuracy on the landscape's fixed training sample at α = 0, "
             "BN in eval mode, no augmentation. Means over completed seeds; — where not "
             "measured.", "",
             f"| recipe | B | test acc | fit | sharpness | λ_max | B_simple (last {LATE} ep.) | "
             "undefined epochs |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for recipe, cells in grouped.items():
        for c in cells:
            m = tables[recipe][c.batch_size]
            lines.append(f"| {recipe} | {c.batch_size} | {_fmt(m['test_acc'])} | "
                         f"{_fmt(m['fit_acc'])} | {_fmt(m['sharpness'])} | "
                         f"{_fmt(m['eigenvalue'])} | "
                         f"{_noise_cell(m)} | {_share(m['undefined'])} |")
    lines += [""] + reading(grouped, tables, drops)
    if diverged:
        lines += ["", "Runs that do not train (diverged or collapsed):", ""] + diverged
    lines += [""] + [f"![{name}]({name})\n\n*{caption}*\n"
                     for name, caption in _plot(out, grouped, tables, drops)]
    return lines


def reading(grouped, tables: dict, drops: dict) -> list[str]:
    """One factual sentence per recipe, from the numbers above."""
    lines = []
    for recipe, cells in grouped.items():
        t = tables[recipe]
        parts = []
        for key, label in (("sharpness", "sharpness"), ("eigenvalue", "λ_max")):
            pairs = [(c.batch_size, t[c.batch_size][key]) for c in cells
                     if t[c.batch_size][key] is not None]
            if pairs:
                parts.append(f"{label} {_trend(pairs)} ("
                             + ", ".join(f"{b}: {v:.3g}" for b, v in pairs) + ")")
        finals = [t[c.batch_size]["b_simple_final"] for c in cells
                  if t[c.batch_size]["b_simple_final"] is not None]
        drop = drops[recipe]
        drop_text = (f"mean test accuracy first falls more than {DROP:g} below the smallest "
                     f"batch's at B = {drop}" if drop else "mean test accuracy never falls "
                     f"more than {DROP:g} below the smallest batch's")
        if finals:
            parts.append(f"B_simple over the last {LATE} epochs spans {min(finals):.3g}–"
                         f"{max(finals):.3g}, while {drop_text}")
        else:
            parts.append(drop_text)
        lines.append(f"- **{recipe}**: " + "; ".join(parts) + ".")
    return lines

"""The report of a study, built from its run directories only: report.md plus PNG figures.

    batchscale report runs/demo                 # writes runs/demo/report.md and runs/demo/*.png
    batchscale report runs/mini --target 0.5    # steps-to-target at test accuracy 0.5

Tables follow the study's Appendix C/D: final test and train accuracy per batch size per recipe,
the mean over seeds with its 95% t-interval (docs/statistics.md), the mean of the last 5 epochs
beside it, the study's published number (from `batchscale.results.published`) and the
difference. Diverged runs are marked with the step where they diverged, collapsed runs
(batchscale/engine/collapse.py) with the epoch; neither counts in the means. A closing sentence
says whether the study's ordering at the largest batch holds, claimed only where the intervals
separate.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

from batchscale import files
from batchscale.errors import UserError, one_line
from batchscale.results.collect import (
    Cell,
    RunResult,
    cells,
    collect,
    fmt_interval,
    mean_interval,
    mean_std,
    peak_lr,
    published_row,
    separated,
)
from batchscale.results.figures import write_figures
from batchscale.results.limits import limit_lines
from batchscale.results.scaling import scaling_section


def _diff(values: list[float], reference: float | None) -> str:
    mean, _ = mean_std(values)
    if mean is None or reference is None:
        return "—"
    return f"{mean - reference:+.4f}"


def failure(r: RunResult) -> str:
    """"collapsed at epoch E", "diverged at step S", or "" for a run that trains."""
    if r.collapsed_epoch is not None:
        return f"collapsed at epoch {r.collapsed_epoch}"
    if r.status == "diverged":
        return f"diverged at step {r.summary.get('diverged_at_step')}"
    return ""


def notes(cell: Cell) -> str:
    parts = []
    for r in cell.runs:
        if failure(r):
            parts.append(f"seed {r.seed} {failure(r)}")
        elif r.status != "completed":
            parts.append(f"seed {r.seed} {r.status}")
    shared = sorted({r.directory for r in cell.runs if not r.directory.startswith(cell.recipe)})
    if shared:
        parts.append("same run as " + ", ".join(d.rsplit("/", 1)[0] for d in shared[:1]))
    return "; ".join(parts)


# ---------------------------------------------------------------------- markdown
def recipe_table(plan: dict, recipe: str, row_cells: list[Cell]) -> list[str]:
    table = plan.get("recipes", {}).get(recipe, {}).get("published")
    factor = plan.get("published_batch_factor", 1)
    study_b = f" at B × {factor:g}" if factor != 1 else ""
    lines = [f"### {recipe}" + (f" (study: Table {table}{study_b})" if table else ""), "",
             "| B | peak lr | seeds | test acc | last 5 ep. | study | Δ | train acc | study | Δ "
             "| notes |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for cell in row_cells:
        row = published_row(plan, cell)
        test, train = cell.values("test_acc"), cell.values("train_acc")
        study_test = row.test_acc if row else None
        study_train = row.train_acc if row else None
        lr = peak_lr(cell.runs[0].config)
        lines.append(
            f"| {cell.batch_size} | {lr:.4g} | {len(cell.completed)}/{len(cell.runs)} | "
            f"{fmt_interval(test)} | {fmt_interval(cell.late_values('test_acc'))} | "
            f"{_num(study_test)} | {_diff(test, study_test)} | "
            f"{fmt_interval(train)} | {_num(study_train)} | {_diff(train, study_train)} | "
            f"{notes(cell)} |")
    return lines + [""]


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def runs_table(results: list[RunResult]) -> list[str]:
    lines = ["| run | status | epochs | final train acc | final test acc | best test acc | "
             "wall s |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in {r.directory: r for r in results}.values():
        final = r.final
        lines.append(f"| {r.directory} | {failure(r) or r.status}"
                     + f" | {len(r.metrics)} | {_num(final.get('train_acc'))} | "
                     f"{_num(final.get('test_acc'))} | "
                     f"{_num(max((m['test_acc'] for m in r.metrics), default=None))} | "
                     f"{r.summary.get('wall_s', 0):.0f} |")
    return lines + [""]


def ordering_sentence(grouped: dict[str, list[Cell]], ordering: list[str]) -> str:
    """Whether the preset's `ordering:` (recipes worst first; the study's trivial <
    linear+warmup < per-worker-bn) holds at the largest batch they all share, claimed only
    where the 95% intervals of neighbouring recipes separate."""
    if len(ordering) < 2 or not all(name in grouped for name in ordering):
        return ""
    sizes = set.intersection(*({c.batch_size for c in grouped[n] if c.completed}
                               for n in ordering))
    if not sizes:
        return ("The study's ordering cannot be checked: no batch size has completed runs of "
                "all three SGD recipes.")
    b = max(sizes)
    found = [next(c for c in grouped[n] if c.batch_size == b) for n in ordering]
    values = [c.values("test_acc") for c in found]
    shown = ", ".join(f"{name} {fmt_interval(v)}" for name, v in
                      zip(ordering, values, strict=True))
    text = f"At the largest batch, B = {b}, final test accuracy (95% interval over seeds): {shown}."
    if any(mean_interval(v)[1] is None for v in values):
        return (text + " With one seed in a cell there is no interval, so no ordering is "
                "claimed; the point values alone cannot separate the recipes from seed noise.")
    pairs = [separated(low, high) for low, high in zip(values, values[1:], strict=False)]
    if all(p is True for p in pairs):
        verdict = f"The study's ordering {' < '.join(ordering)} **holds**"
    elif any(p is False for p in pairs):
        verdict = ("The study's ordering **does not hold**: at least one later recipe is "
                   "below an earlier one with separated intervals")
    else:
        verdict = ("The study's ordering is **not resolved**: the intervals of at least one "
                   "neighbouring pair overlap")
    names = [f"{low} vs {high}" for low, high in zip(ordering, ordering[1:], strict=False)]
    detail = "; ".join(f"{n}: {'separated' if p is not None else 'overlapping'}"
                       for n, p in zip(names, pairs, strict=True))
    return f"{text} {verdict} ({detail})."


SETTING_FIELDS = ("dataset", "train_subset", "model", "width", "optimizer", "lr",
                  "base_batch_size", "momentum", "weight_decay", "schedule", "decay_every",
                  "decay_factor", "epochs", "bn_impl")


def settings_lines(results: list[RunResult]) -> list[str]:
    """The config fields every run shares, and how the per-run schedule came out."""
    shared = [f"{k}={results[0].config.get(k)}" for k in SETTING_FIELDS
              if k in results[0].config and len({str(r.config.get(k)) for r in results}) == 1]
    lines = ["## Settings", "", "Shared by every run: " + ", ".join(shared) + ".", ""]
    seen = {}
    for r in results:
        s = r.summary
        if s.get("steps_per_epoch") and (r.recipe, r.batch_size) not in seen:
            seen[(r.recipe, r.batch_size)] = (
                f"{r.recipe} B={r.batch_size}: {s['train_images']} training images, "
                f"{s['steps_per_epoch']} steps/epoch, peak lr {s['peak_lr']:.4g}, "
                f"{s['warmup_steps']} warmup steps, BN group {r.config.get('bn_group') or 'B'}")
    return lines + [f"- {line}" for line in seen.values()] + [""]


def communication_lines(grouped: dict[str, list[Cell]]) -> list[str]:
    """Local SGD / batch growth: steps and model-sized all-reduces ("syncs", metrics.jsonl) per
    recipe and batch size, beside the final test accuracy; nothing for runs without the field."""
    lines = ["## Steps and syncs", "",
             "syncs/epoch: model-sized all-reduces that the workers make (one per synchronous "
             "step, one per local-SGD model average), mean over epochs (first → last epoch).", "",
             "| recipe | B | test acc | steps | syncs/epoch | first → last | MB/epoch |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for recipe, row_cells in grouped.items():
        for cell in row_cells:
            runs = [r for r in cell.completed if "syncs" in r.final]
            if not runs:
                continue
            syncs = [m["syncs"] for m in runs[0].metrics]
            megabytes = statistics.fmean(m["sync_bytes"] for m in runs[0].metrics) / 2**20
            accuracy = fmt_interval(cell.values("test_acc"))
            lines.append(f"| {recipe} | {cell.batch_size} | {accuracy}"
                         f" | {runs[0].final['step']} | {statistics.fmean(syncs):.2f} | "
                         f"{syncs[0]} → {syncs[-1]} | {megabytes:.2f} |")
    return lines + [""] if len(lines) > 6 else []


def write_report(out: Path, target: float | None = None) -> Path:
    """Write report.md and the figures into `out`; return the report's path."""

    out = Path(out)
    plan, results = collect(out)
    grouped = cells(results)
    figures, target = write_figures(out, grouped, target)
    title = plan.get("preset", out.name)
    lines = [f"# Study report: {title}", "", plan.get("description", ""), ""]
    if plan.get("missing"):
        lines += [f"**Missing runs** ({len(plan['missing'])}; planned but not in this report, so "
                  f"not counted in any mean or sentence below): "
                  + ", ".join(plan["missing"]) + ".", ""]
    lines += ["Generated by `batchscale report` from the run directories below; every number is "
              "read from their metrics.jsonl (final epoch) and summary.json.", "",
              "## Final accuracy per recipe and batch size", "",
              "Mean over seeds of the final epoch's accuracies ± the half-width of its 95% "
              "t-interval (n − 1 degrees of freedom; \"1 seed\": no interval); *last 5 ep.*: "
              "the same for each run's mean over its last 5 epochs. *study* is the published "
              "number, Δ = ours − study. Diverged and collapsed runs are not in the means; the "
              "*seeds* column counts the runs that are.", ""]
    for recipe, row_cells in grouped.items():
        lines += recipe_table(plan, recipe, row_cells)
    lines += communication_lines(grouped)  # local SGD and batch growth
    lines += settings_lines(results)
    sentence = ordering_sentence(grouped, plan.get("ordering", []))
    if sentence:
        lines += ["## The study's ordering at the largest batch", "", sentence, ""]
    lines += limit_lines(plan, grouped)
    if plan.get("notes"):
        lines += ["## Notes from the preset", "", plan["notes"].strip(), ""]
    lines += scaling_section(out, grouped, plan.get("compare_with", []))
    lines += ["## Every run", ""] + runs_table(results) + ["## Figures", ""]
    lines += [f"![{name}]({name})\n\n*{caption}*\n" for name, caption in figures]
    path = out / "report.md"
    files.write_text(path, "\n".join(lines).rstrip() + "\n")
    return path


# ---------------------------------------------------------------------- command line
def add_report_parser(commands) -> None:
    report = commands.add_parser("report", help="write report.md and figures for a study")
    report.add_argument("dir", help="a study directory (as written by `batchscale study`)")
    report.add_argument("--target", type=float,
                        help="test accuracy for the steps-to-target figure (default: 0.8 × the "
                             "mean final test accuracy at the smallest batch)")


def report_command(args) -> int:
    """`batchscale report DIR`: its folder checked before anything is read or drawn."""
    out = Path(args.dir)
    if out.is_dir() and not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"cannot write the report into {out}: the folder is not writable")
    try:
        path = write_report(out, args.target)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError,
            ZeroDivisionError) as err:  # a value of the study's files that the checks missed
        raise UserError(f"cannot report {out}: its files hold an unexpected value "
                        f"({type(err).__name__}: {one_line(err)[:200]}); --debug shows "
                        "where") from None
    print(f"report: {path}")
    return 0

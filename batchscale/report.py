"""The report of a study, built from its run directories only: report.md plus PNG figures.

    batchscale report runs/demo                 # writes runs/demo/report.md and runs/demo/*.png
    batchscale report runs/mini --target 0.5    # steps-to-target at test accuracy 0.5

Tables follow the study's Appendix C/D: final test and train accuracy per batch size per recipe,
mean ± std over seeds, the study's published number beside each (from `batchscale.published`)
and the difference. Diverged runs are marked with the step where they diverged. A closing
sentence says, from the numbers, whether the study's ordering at the largest batch holds.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import yaml

from batchscale import published, rundir
from batchscale.errors import UserError

SGD_ORDER = ("trivial", "linear+warmup", "per-worker-bn")  # the study's ordering, worst first


@dataclass
class RunResult:
    recipe: str
    batch_size: int
    seed: int
    directory: str
    config: dict
    summary: dict
    metrics: list[dict]

    @property
    def status(self) -> str:
        return self.summary.get("status", "unfinished")

    @property
    def final(self) -> dict:
        """The last epoch's metrics row (the study reports the final epoch)."""
        return self.metrics[-1] if self.metrics else {}


@dataclass
class Cell:
    """The runs of one recipe at one batch size."""

    recipe: str
    batch_size: int
    runs: list[RunResult]

    @property
    def completed(self) -> list[RunResult]:
        return [r for r in self.runs if r.status == "completed" and r.metrics]

    def values(self, key: str) -> list[float]:
        return [r.final[key] for r in self.completed]


# ---------------------------------------------------------------------- reading
def _load_run(out: Path, recipe: str, directory: str, seed: int | None = None) -> RunResult:
    path = out / directory
    config = yaml.safe_load((path / rundir.CONFIG).read_text()) or {}
    summary_path = path / rundir.SUMMARY
    summary = rundir.read_json(summary_path) if summary_path.exists() else {}
    return RunResult(recipe, int(config["batch_size"]),
                     int(config["seed"]) if seed is None else seed, directory, config,
                     summary, rundir.read_metrics(path))


def collect(out: Path) -> tuple[dict, list[RunResult]]:
    """The sweep's plan (study.yaml, if any) and every run directory that has a config."""
    out = Path(out)
    if not out.is_dir():
        raise UserError(f"no study directory {out}")
    plan_path = out / "study.yaml"
    if plan_path.exists():
        plan = yaml.safe_load(plan_path.read_text()) or {}
        results = [_load_run(out, r["recipe"], r["directory"], r["seed"])
                   for r in plan.get("runs", []) if (out / r["directory"] / rundir.CONFIG).exists()]
    else:
        plan = {}
        found = [p.parent.relative_to(out) for p in sorted(out.rglob(rundir.CONFIG))]
        results = [_load_run(out, rel.parts[0], rel.as_posix()) for rel in found]
    if not results:
        raise UserError(f"{out} holds no run directories (no {rundir.CONFIG} below it)")
    return plan, results


def cells(results: list[RunResult]) -> dict[str, list[Cell]]:
    """Results grouped by recipe (in order of appearance), then by batch size."""
    grouped: dict[str, dict[int, list[RunResult]]] = {}
    for r in results:
        grouped.setdefault(r.recipe, {}).setdefault(r.batch_size, []).append(r)
    return {recipe: [Cell(recipe, b, runs) for b, runs in sorted(by_batch.items())]
            for recipe, by_batch in grouped.items()}


# ---------------------------------------------------------------------- numbers
def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def fmt_mean_std(values: list[float]) -> str:
    mean, std = mean_std(values)
    if mean is None:
        return "—"
    return f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")


def published_row(plan: dict, cell: Cell):
    table = plan.get("recipes", {}).get(cell.recipe, {}).get("published")
    if not table:
        return None
    factor = plan.get("published_batch_factor", 1)
    first = cell.runs[0].config
    lr = first["lr"] * _scale(first) if factor == 1 else None
    return published.lookup(table, int(cell.batch_size * factor), lr, first["weight_decay"])


def _scale(config: dict) -> float:
    k = config["batch_size"] / config["base_batch_size"]
    return {"none": 1.0, "linear": k, "sqrt": math.sqrt(k)}[config["scale_rule"]]


def _diff(values: list[float], reference: float | None) -> str:
    mean, _ = mean_std(values)
    if mean is None or reference is None:
        return "—"
    return f"{mean - reference:+.4f}"


def notes(cell: Cell) -> str:
    parts = []
    for r in cell.runs:
        if r.status == "diverged":
            parts.append(f"seed {r.seed} diverged at step {r.summary.get('diverged_at_step')}")
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
             "| B | peak lr | seeds | test acc | study | Δ | train acc | study | Δ | notes |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for cell in row_cells:
        row = published_row(plan, cell)
        test, train = cell.values("test_acc"), cell.values("train_acc")
        study_test = row.test_acc if row else None
        study_train = row.train_acc if row else None
        lr = cell.runs[0].config["lr"] * _scale(cell.runs[0].config)
        lines.append(
            f"| {cell.batch_size} | {lr:.4g} | {len(cell.completed)}/{len(cell.runs)} | "
            f"{fmt_mean_std(test)} | {_num(study_test)} | {_diff(test, study_test)} | "
            f"{fmt_mean_std(train)} | {_num(study_train)} | {_diff(train, study_train)} | "
            f"{notes(cell)} |")
    return lines + [""]


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def runs_table(results: list[RunResult]) -> list[str]:
    lines = ["| run | status | epochs | final train acc | final test acc | best test acc | "
             "wall s |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in {r.directory: r for r in results}.values():
        final = r.final
        lines.append(f"| {r.directory} | {r.status}"
                     + (f" at step {r.summary.get('diverged_at_step')}"
                        if r.status == "diverged" else "")
                     + f" | {len(r.metrics)} | {_num(final.get('train_acc'))} | "
                     f"{_num(final.get('test_acc'))} | "
                     f"{_num(max((m['test_acc'] for m in r.metrics), default=None))} | "
                     f"{r.summary.get('wall_s', 0):.0f} |")
    return lines + [""]


def ordering_sentence(grouped: dict[str, list[Cell]]) -> str:
    """Whether trivial < linear+warmup < per-worker-bn at the largest batch all three share."""
    if not all(name in grouped for name in SGD_ORDER):
        return ""
    sizes = set.intersection(*({c.batch_size for c in grouped[n] if c.completed}
                               for n in SGD_ORDER))
    if not sizes:
        return ("The study's ordering cannot be checked: no batch size has completed runs of "
                "all three SGD recipes.")
    b = max(sizes)
    found = [next(c for c in grouped[n] if c.batch_size == b) for n in SGD_ORDER]
    means = [mean_std(c.values("test_acc"))[0] for c in found]
    variances = [statistics.variance(v) for v in (c.values("test_acc") for c in found)
                 if len(v) > 1]
    spread = math.sqrt(statistics.fmean(variances)) if variances else None
    holds = means[0] < means[1] < means[2]
    gaps = [means[1] - means[0], means[2] - means[1]]
    text = (f"At the largest batch, B = {b}, the study's ordering trivial < linear+warmup < "
            f"per-worker BN **{'holds' if holds else 'does not hold'}** in final test accuracy: "
            f"trivial {means[0]:.4f}, linear+warmup {means[1]:.4f} ({gaps[0]:+.4f}), "
            f"per-worker BN {means[2]:.4f} ({gaps[1]:+.4f}).")
    if spread is None or spread == 0:
        return text + " With one seed per run there is no seed-to-seed spread to compare with."
    text += (f" The seed-to-seed standard deviation there (pooled over the recipes with ≥ 2 "
             f"completed seeds) is {spread:.4f}, so the gaps are {gaps[0] / spread:+.1f} and "
             f"{gaps[1] / spread:+.1f} standard deviations.")
    if holds and min(gaps) < 2 * spread:
        text += " At least one gap is under two standard deviations: the order is not resolved."
    return text


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


def write_report(out: Path, target: float | None = None) -> Path:
    """Write report.md and the figures into `out`; return the report's path."""
    from batchscale.analysis.report_section import scaling_section  # issue 5
    from batchscale.figures import write_figures
    from batchscale.limit import limit_lines

    out = Path(out)
    plan, results = collect(out)
    grouped = cells(results)
    figures, target = write_figures(out, grouped, target)
    title = plan.get("preset", out.name)
    lines = [f"# Study report: {title}", "", plan.get("description", ""), "",
             "Generated by `batchscale report` from the run directories below; every number is "
             "read from their metrics.jsonl (final epoch) and summary.json.", "",
             "## Final accuracy per recipe and batch size", "",
             "Mean ± std over seeds of the final epoch's accuracies; *study* is the published "
             "number, Δ = ours − study.", ""]
    for recipe, row_cells in grouped.items():
        lines += recipe_table(plan, recipe, row_cells)
    lines += settings_lines(results)
    sentence = ordering_sentence(grouped)
    if sentence:
        lines += ["## The study's ordering at the largest batch", "", sentence, ""]
    lines += limit_lines(plan, grouped)  # issue 7
    if plan.get("notes"):
        lines += ["## Notes from the preset", "", plan["notes"].strip(), ""]
    lines += scaling_section(out, grouped)  # issue 5: "Why couldn't we scale further?"
    lines += ["## Every run", ""] + runs_table(results) + ["## Figures", ""]
    lines += [f"![{name}]({name})\n\n*{caption}*\n" for name, caption in figures]
    path = out / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


# ---------------------------------------------------------------------- command line
def add_report_parser(commands) -> None:
    report = commands.add_parser("report", help="write report.md and figures for a study")
    report.add_argument("dir", help="a study directory (as written by `batchscale study`)")
    report.add_argument("--target", type=float,
                        help="test accuracy for the steps-to-target figure (default: 0.8 × the "
                             "mean final test accuracy at the smallest batch)")


def report_command(args) -> int:
    print(f"report: {write_report(Path(args.dir), args.target)}")
    return 0

"""Run directories read back into numbers: each run's config, summary and metrics, grouped by
recipe and batch size, and the mean of a cell with its 95% t-interval over seeds
(docs/statistics.md). Every table and figure starts here."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import yaml

from batchscale.config import from_dict
from batchscale.engine import collapse, rundir
from batchscale.errors import UserError, reading
from batchscale.results import published


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

    @property
    def collapsed_epoch(self) -> int | None:
        """The epoch the collapse rule fired at (summary.json, else computed from the rows)."""
        if self.summary.get("reason") == collapse.REASON:
            return self.summary.get("collapsed_at_epoch")
        if self.status == "completed" and self.metrics and "warmup_epochs" in self.config:
            return collapse.collapsed_at(self.metrics, self.config)  # runs from before the rule
        return None

    @property
    def trains(self) -> bool:
        """Completed with metrics and not collapsed: a data point for the means."""
        return self.status == "completed" and bool(self.metrics) and self.collapsed_epoch is None

    def last_epochs_mean(self, key: str, epochs: int = 5) -> float:
        """The mean of `key` over the last `epochs` epochs (fewer when the run has fewer)."""
        return statistics.fmean(m[key] for m in self.metrics[-epochs:])


@dataclass
class Cell:
    """The runs of one recipe at one batch size."""

    recipe: str
    batch_size: int
    runs: list[RunResult]

    @property
    def completed(self) -> list[RunResult]:
        """The runs that count: completed, with metrics, not collapsed."""
        return [r for r in self.runs if r.trains]

    @property
    def failed_to_train(self) -> list[RunResult]:
        """Runs that diverged (non-finite loss) or collapsed."""
        return [r for r in self.runs if r.status == "diverged" or r.collapsed_epoch is not None]

    def values(self, key: str) -> list[float]:
        return [r.final[key] for r in self.completed]

    def late_values(self, key: str, epochs: int = 5) -> list[float]:
        """Each counted run's mean of `key` over its last `epochs` epochs."""
        return [r.last_epochs_mean(key, epochs) for r in self.completed]


# ---------------------------------------------------------------------- reading
def _load_run(out: Path, recipe: str, directory: str, seed: int | None = None) -> RunResult:
    path = out / directory
    config_path = path / rundir.CONFIG
    with reading(config_path, "the run config"):
        values = yaml.safe_load(config_path.read_text()) or {}
        if not isinstance(values, dict):
            raise UserError(f"{config_path} is not a mapping of config fields")
        try:
            config = from_dict(values).to_dict()
        except UserError as err:
            raise UserError(f"{config_path}: {err}") from None
    summary_path = path / rundir.SUMMARY
    summary = rundir.read_json(summary_path) if summary_path.exists() else {}
    metrics = rundir.read_metrics(path)
    check_metrics(path, metrics, summary)
    return RunResult(recipe, int(config["batch_size"]),
                     int(config["seed"]) if seed is None else seed, directory, config,
                     summary, metrics)


# The numbers of a metrics row that the report reads: each must be a finite number.
ROW_NUMBERS = ("epoch", "step", "train_loss", "train_acc", "test_loss", "test_acc")


def _number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def check_metrics(run_dir: Path, rows: list[dict], summary: dict) -> None:
    """Every row holds the numbers the report reads, its epochs are 1, 2, ...; and a finished
    run's rows are as many as its summary.json's epochs_completed (a cut metrics.jsonl would
    otherwise show an earlier epoch as the final one)."""
    path = run_dir / rundir.METRICS
    for index, row in enumerate(rows, 1):
        bad = next((k for k in ROW_NUMBERS if not _number(row.get(k))), None)
        if bad is not None:
            raise UserError(f"{path}: row {index} has {bad} = {row.get(bad)!r}, not a finite "
                            f"number"[:300])
        if row["epoch"] != index:
            raise UserError(f"{path}: row {index} is epoch {row['epoch']}, expected {index}")
    completed = summary.get("epochs_completed")
    if summary.get("status") in rundir.FINAL_STATUSES and completed is not None and (
            not isinstance(completed, int) or completed != len(rows)):
        raise UserError(f"run {run_dir}: {rundir.METRICS} holds {len(rows)} epoch rows but "
                        f"{rundir.SUMMARY} says {completed!r} epochs completed (a file was cut "
                        f"or edited); train the run again with --overwrite, or remove it")


def collect(out: Path) -> tuple[dict, list[RunResult]]:
    """The sweep's plan (study.yaml, if any) and every run directory that has a config and
    metrics (or diverged before its first epoch ended). Planned runs that are not there, or have
    no metrics, are listed in plan["missing"] ("<recipe>/b<B>/seed<S> (why)"), never dropped
    silently; a run without metrics is not counted as a seed."""
    out = Path(out)
    if not out.is_dir():
        raise UserError(f"no study directory {out}")
    if (out / rundir.CONFIG).exists():
        raise UserError(f"{out} is a run directory; report reads a study folder (the --out of "
                        f"`batchscale study`); a run's numbers are in its {rundir.SUMMARY} and "
                        f"{rundir.METRICS}")
    plan_path = out / rundir.STUDY_PLAN
    try:
        plan = (yaml.safe_load(plan_path.read_text()) or {}) if plan_path.exists() else {}
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"cannot read {plan_path}: {err}".splitlines()[0]) from None
    if not isinstance(plan, dict):
        raise UserError(f"cannot read {plan_path}: not a mapping")
    check_plan(plan_path, plan)
    if plan_path.exists():
        planned = [(r["recipe"], r["directory"], r["seed"],
                    f"{r['recipe']}/b{r['batch_size']}/seed{r['seed']}")
                   for r in planned_runs(plan_path, plan)]
    else:
        found = [p.parent.relative_to(out) for p in sorted(out.rglob(rundir.CONFIG))]
        planned = [(rel.parts[0], rel.as_posix(), None, rel.as_posix()) for rel in found]
    results, missing = [], []
    for recipe, directory, seed, name in planned:
        if not (out / directory / rundir.CONFIG).exists():
            missing.append(f"{name} (no run directory)")
            continue
        try:
            result = _load_run(out, recipe, directory, seed)
        except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as err:
            raise UserError(f"cannot read the run in {out / directory}: "
                            f"{type(err).__name__}: {err}".splitlines()[0]) from None
        if not result.metrics and result.status != "diverged":
            missing.append(f"{name} (no metrics; {result.status})")
            continue
        results.append(result)
    plan["missing"] = missing
    if not results:
        raise UserError(f"{out} holds no run directories with metrics (no {rundir.CONFIG} and "
                        f"{rundir.METRICS} below it)")
    return plan, results


def check_plan(plan_path: Path, plan: dict) -> None:
    """The types of study.yaml's keys that the report reads."""
    kinds = {"preset": str, "description": str, "notes": str, "recipes": dict,
             "ordering": list, "compare_with": list, "published_batch_factor": (int, float)}
    for key, kind in kinds.items():
        value = plan.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise UserError(f"{plan_path}: {key} has the wrong type ({value!r})"[:300])
    for key in ("ordering", "compare_with"):
        if not all(isinstance(v, str) for v in plan.get(key) or []):
            raise UserError(f"{plan_path}: {key} must be a list of names")
    for name, recipe in (plan.get("recipes") or {}).items():
        if not isinstance(recipe, dict):
            raise UserError(f"{plan_path}: recipe {name} must be a mapping")
    factor = plan.get("published_batch_factor", 1)
    if not (isinstance(factor, (int, float)) and factor > 0 and math.isfinite(factor)):
        raise UserError(f"{plan_path}: published_batch_factor must be a positive number")


PLAN_RUN_KEYS = {"recipe": str, "directory": str, "seed": int, "batch_size": int}


def planned_runs(plan_path: Path, plan: dict) -> list[dict]:
    """study.yaml's runs: mappings of recipe, directory (inside the study folder), seed and
    batch size; anything else is a UserError naming the file."""
    runs = plan.get("runs", [])
    if not isinstance(runs, list):
        raise UserError(f"{plan_path}: runs must be a list of runs, got {runs!r}"[:300])
    for index, run in enumerate(runs, 1):
        wrong = next((k for k, kind in PLAN_RUN_KEYS.items() if not isinstance(run, dict)
                      or not isinstance(run.get(k), kind) or isinstance(run.get(k), bool)),
                     None)
        if wrong is not None:
            raise UserError(f"{plan_path}: run {index} is not a mapping with a "
                            f"{wrong} ({PLAN_RUN_KEYS[wrong].__name__}): {run!r}"[:300])
        parts = Path(run["directory"]).parts
        if Path(run["directory"]).is_absolute() or ".." in parts or not parts:
            raise UserError(f"{plan_path}: run {index}'s directory {run['directory']!r} is not "
                            "inside the study folder")
    return runs


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


def t_quantile(p: float, dof: int) -> float:
    """The p-quantile (p > 0.5) of Student's t with `dof` degrees of freedom: bisection on its
    CDF, which is integrated with Simpson's rule (no SciPy)."""
    log_c = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)

    def density(x: float) -> float:
        return math.exp(log_c - (dof + 1) / 2 * math.log1p(x * x / dof))

    def cdf(x: float, n: int = 2000) -> float:  # 0.5 + the integral from 0 to x
        h = x / n
        inner = sum((4 if i % 2 else 2) * density(i * h) for i in range(1, n))
        return 0.5 + h / 3 * (density(0.0) + inner + density(x))

    low, high = 0.0, 1.0
    while cdf(high) < p:
        high *= 2
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) < p else (low, middle)
    return (low + high) / 2


CONFIDENCE = 0.95


def mean_interval(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, half-width of its 95% t-interval over n−1 degrees of freedom); the half-width is
    None for fewer than two values."""
    mean, std = mean_std(values)
    if std is None:
        return mean, None
    n = len(values)
    return mean, t_quantile(0.5 + CONFIDENCE / 2, n - 1) * std / math.sqrt(n)


def fmt_interval(values: list[float]) -> str:
    """"0.8123 ± 0.0120" (95% t-interval half-width), "0.8123 (1 seed)", or "—"."""
    mean, half = mean_interval(values)
    if mean is None:
        return "—"
    if half is None:
        return f"{mean:.4f} (1 seed)"
    return f"{mean:.4f} ± {half:.4f}"


def separated(a: list[float], b: list[float]) -> bool | None:
    """True when a's 95% interval lies wholly below b's, False when wholly above, None when
    they overlap or either has fewer than two values (no claim can be made)."""
    (mean_a, half_a), (mean_b, half_b) = mean_interval(a), mean_interval(b)
    if half_a is None or half_b is None:
        return None
    if mean_a + half_a < mean_b - half_b:
        return True
    if mean_a - half_a > mean_b + half_b:
        return False
    return None


def published_row(plan: dict, cell: Cell):
    table = plan.get("recipes", {}).get(cell.recipe, {}).get("published")
    if not table:
        return None
    factor = plan.get("published_batch_factor", 1)
    first = cell.runs[0].config
    lr = peak_lr(first) if factor == 1 else None
    return published.lookup(table, int(cell.batch_size * factor), lr, first["weight_decay"])


def peak_lr(config: dict) -> float:
    """The peak learning rate of a run, from its saved config (the config's own rule)."""
    return from_dict(config).peak_lr

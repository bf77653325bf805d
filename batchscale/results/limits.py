"""The scaling limit of each recipe: the largest batch whose accuracy stays within 1% of the
small-batch accuracy, ours beside the study's.

The small-batch accuracy is the mean final test accuracy of the first recipe of the study (its
baseline) at the smallest batch size; for the study it is its baseline, Table I at B = 32. "Within
1%" is absolute: mean test accuracy at least reference − 0.01. Batch sizes are also given as the
factor over the smallest batch, the number that compares across scales. A batch size whose runs
all diverged or collapsed (batchscale/engine/collapse.py) "does not train": it has no accuracy
and is never within 1%.

"Largest B within 1%" compares means, as the study (one run per batch size) could only do. Beside
it, what the seeds' 95% intervals support at each batch size, by the rule the report's ordering
sentence uses (docs/statistics.md): within 1% (✓) when the cell's interval lies wholly at or above
the reference's interval shifted down by 1%, more than 1% below (✗) when wholly below it, not
resolved (?) otherwise or with fewer than two seeds in either. The reference's own runs are
within by definition; a batch size that does not train is ✗.
"""

from __future__ import annotations

from batchscale.results import published
from batchscale.results.collect import mean_interval, mean_std

TOLERANCE = 0.01


def _mean_test(cell) -> float | None:
    return mean_std(cell.values("test_acc"))[0]


def _shown(cell, accuracy: float | None) -> str:
    """A cell's mean accuracy, "does not train" when all its runs diverged or collapsed, or —."""
    if accuracy is None:
        return "does not train" if cell.runs and cell.failed_to_train == cell.runs else "—"
    failed = len(cell.failed_to_train)
    return f"{accuracy:.4f}" + (f" ({failed}/{len(cell.runs)} seeds do not train)"
                                if failed else "")


def largest_within(points: list[tuple[int, float | None]], reference: float) -> int | None:
    """The largest batch size whose accuracy is at least reference − TOLERANCE."""
    ok = [b for b, acc in points if acc is not None and acc >= reference - TOLERANCE - 1e-12]
    return max(ok) if ok else None


def interval_claim(values: list[float], reference: list[float]) -> str:
    """✓ (within 1% of the reference), ✗ (more than 1% below) or ? (the intervals cannot say)."""
    (mean, half), (ref_mean, ref_half) = mean_interval(values), mean_interval(reference)
    if half is None or ref_half is None:
        return "?"
    if mean - half >= ref_mean + ref_half - TOLERANCE - 1e-12:
        return "✓"
    if mean + half < ref_mean - ref_half - TOLERANCE:
        return "✗"
    return "?"


def study_limit(table: str) -> tuple[int | None, float]:
    """(largest batch within 1% of the study's baseline, the baseline) for a published table."""
    reference = study_reference()
    rows = published.rows(table)
    return largest_within([(r.batch_size, r.test_acc) for r in rows], reference), reference


def study_reference() -> float:
    return published.lookup(*published.BASELINE).test_acc


def claim(cell, reference_cell) -> str:
    same_runs = [r.directory for r in cell.runs] == [r.directory for r in reference_cell.runs]
    if same_runs:  # the reference itself, or another recipe's name for the same runs
        return "✓"
    if cell.runs and cell.failed_to_train == cell.runs:
        return "✗"
    return interval_claim(cell.values("test_acc"), reference_cell.values("test_acc"))


def limit_lines(plan: dict, grouped: dict) -> list[str]:
    """Markdown of the section, or [] when no recipe has a completed smallest batch."""
    recipes = list(grouped)
    if not recipes:
        return []
    base_cells = grouped[recipes[0]]
    reference = _mean_test(base_cells[0]) if base_cells else None
    if reference is None:
        return []
    smallest = base_cells[0].batch_size
    lines = ["## Scaling limit: the largest batch within 1% of small-batch accuracy", "",
             f"Small-batch accuracy: {recipes[0]} at B = {smallest}, mean final test accuracy "
             f"{reference:.4f}; a batch size is within 1% when its recipe's mean is at least "
             f"{reference - TOLERANCE:.4f}. The study's baseline is Table I at B = 32 "
             f"({study_reference():.4f}); its factor is over B = 32.", "",
             "*Largest B within 1%* compares means, as the study (one run per batch size) did. "
             "*Intervals* says what the seeds' 95% intervals support at each B: ✓ within 1% "
             "(the cell's interval lies wholly at or above the small-batch interval shifted down "
             "by 1%), ✗ more than 1% below (wholly below it), ? not resolved (overlapping, or "
             "fewer than 2 seeds); a B that does not train is ✗.", "",
             "| recipe | accuracy per B (mean over seeds) | largest B within 1% | factor | "
             "intervals | study: largest B within 1% | study factor |",
             "|---|---|---:|---:|---|---:|---:|"]
    for recipe, cells in grouped.items():
        points = [(c.batch_size, _mean_test(c)) for c in cells]
        shown = ", ".join(f"{c.batch_size}: {_shown(c, a)}"
                          for c, (_, a) in zip(cells, points, strict=True))
        ours = largest_within(points, reference)
        claims = ", ".join(f"{c.batch_size} {claim(c, base_cells[0])}" for c in cells)
        table = plan.get("recipes", {}).get(recipe, {}).get("published")
        study_b = study_limit(table)[0] if table in ("I", "II", "III") else None
        lines.append(
            f"| {recipe} | {shown} | {ours if ours else 'none'} | "
            f"{f'{ours // smallest}×' if ours else '—'} | {claims} | "
            f"{study_b if study_b else '—'} | "
            f"{f'{study_b // 32}×' if study_b else '—'} |")
    return lines + ["", "The study publishes no LARS or LAMB runs; its Table III recipe "
                    "diverges at B = 4096.", ""]

"""The study's own Appendix C/D tables (I–VII) as data, for side-by-side comparison.

    python -c "from batchscale.results.published import rows; print(rows('III'))"

The numbers live in `published/published-tables.csv` inside the package (a copy of the seed
transcription: one row per published result, accuracies as fractions, empty train_acc where the
study did not publish one). Nothing here is typed in by hand.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

BASELINE = ("I", 32)  # the study's small-batch baseline: Table I (= Table II) at B = 32
CSV_PATH = Path(__file__).parent / "published" / "published-tables.csv"


@dataclass(frozen=True)
class PublishedRow:
    table: str
    optimizer: str
    recipe: str
    batch_size: int
    lr: float
    weight_decay: float
    warmup_epochs: float
    test_acc: float
    train_acc: float | None


def _parse(record: dict) -> PublishedRow:
    return PublishedRow(
        table=record["table"], optimizer=record["optimizer"], recipe=record["recipe"],
        batch_size=int(record["batch_size"]), lr=float(record["lr"]),
        weight_decay=float(record["weight_decay"]),
        warmup_epochs=float(record["warmup_epochs"]), test_acc=float(record["test_acc"]),
        train_acc=float(record["train_acc"]) if record["train_acc"] else None)


@cache
def all_rows() -> tuple[PublishedRow, ...]:
    with open(CSV_PATH, newline="") as handle:
        return tuple(_parse(record) for record in csv.DictReader(handle))


def rows(table: str) -> list[PublishedRow]:
    """The rows of one table ('I' … 'VII')."""
    return [row for row in all_rows() if row.table == table]


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)


def lookup(table: str, batch_size: int, lr: float | None = None,
           weight_decay: float | None = None) -> PublishedRow | None:
    """The row of `table` at `batch_size`; lr and weight decay pick among rows sharing it.

    Returns None when the table has no row there, or when the row is not unique.
    """
    found = [row for row in rows(table) if row.batch_size == batch_size]
    if len(found) > 1 and lr is not None:
        found = [row for row in found if _close(row.lr, lr)] or found
    if len(found) > 1 and weight_decay is not None:
        found = [row for row in found if _close(row.weight_decay, weight_decay)] or found
    return found[0] if len(found) == 1 else None

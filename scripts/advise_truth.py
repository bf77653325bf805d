"""The advise truth set: real runs that can prove `batchscale advise` wrong (issue 23).

    nice -n 10 python scripts/advise_truth.py split          # docs/results/advise-truth/split.json
    nice -n 10 python scripts/advise_truth.py run short --jobs 2
    nice -n 10 python scripts/advise_truth.py run long --jobs 2   # after short (its lr points)
    python scripts/advise_truth.py collect                   # outcomes.json from the run dirs

Four recipes on 1,000 of the embedded sample's training images (class-balanced, seed-chosen),
ResNet-18 width 4, base batch 8, linear scaling, cosine schedule, at B = 8 / 32 / 128, 2 seeds,
at two lengths: `short` (4 epochs) and `long` (30 epochs). The recipes (the base lr is the rate
at B = 8; the peak at B is lr x B/8):

  bn-warmup  SGD momentum 0.9, wd 5e-4, batch norm over the whole batch, 1 warmup epoch
  bn-group   as bn-warmup, batch norm per group of 8 (per-worker BN, the base batch)
  no-warmup  as bn-warmup without warmup
  rmsprop    RMSProp (momentum 0.9, alpha 0.99), wd 5e-4, 1 warmup epoch

The lr grid (factor 2): SGD base lr 0.0125 x 2^k, RMSProp 0.000125 x 2^k, k = 0..5 (`short`).
`long` runs 3 of those points per (recipe, B), chosen from the short sweep before any advise
rule is tuned: the largest base lr whose short runs all trained, one step below and one above
(a run held 30 epochs at its peak collapses at or below the short sweep's boundary, so the
boundary is bracketed where it matters; fewer points than `short` to fit two shared cores).

A cell (recipe, length, B, lr) *trains* when every seed's run ends without the engine's
diverged status (non-finite loss, or collapse by engine/collapse.py); otherwise it *diverges*.

The split (committed before any rule was tuned): recipes are ranked by the SHA-256 hex digest of
their name; the first half of that order is the tuning half, the rest is held out. Both lengths
of a recipe fall in the same half.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "docs" / "results" / "advise-truth"
RUNS = OUT / "runs"
BASE = {"dataset": "sample", "train_subset": 1000, "width": 4, "base_batch_size": 8,
        "momentum": 0.9, "weight_decay": 5e-4, "scale_rule": "linear", "schedule": "cosine",
        "threads": 1, "stop_on_collapse": True, "eval_batch_size": 1000, "log_every": 50}
RECIPES = {
    "bn-warmup": {"optimizer": "sgd", "warmup_epochs": 1, "bn_group": 0},
    "bn-group": {"optimizer": "sgd", "warmup_epochs": 1, "bn_group": 8},
    "no-warmup": {"optimizer": "sgd", "warmup_epochs": 0, "bn_group": 0},
    "rmsprop": {"optimizer": "rmsprop", "warmup_epochs": 1, "bn_group": 0},
}
GRID_BASE = {"sgd": 0.0125, "rmsprop": 0.000125}
GRID_POINTS = 6
LENGTHS = {"short": 4, "long": 30}
BATCHES = [8, 32, 128]
SEEDS = [0, 1]


def grid(recipe: str) -> list[float]:
    base = GRID_BASE[RECIPES[recipe]["optimizer"]]
    return [round(base * 2 ** k, 10) for k in range(GRID_POINTS)]


def split() -> dict:
    ranked = sorted(RECIPES, key=lambda name: hashlib.sha256(name.encode()).hexdigest())
    half = len(ranked) // 2
    return {"rule": "recipes ranked by sha256(name).hexdigest(); the first half tunes, the rest "
                    "is held out; both lengths of a recipe in the same half",
            "digests": {n: hashlib.sha256(n.encode()).hexdigest() for n in ranked},
            "tuning": ranked[:half], "held_out": ranked[half:]}


def run_dir(length: str, recipe: str, batch: int, lr: float, seed: int) -> Path:
    return RUNS / length / recipe / f"b{batch}" / f"lr{lr:g}" / f"seed{seed}"


def config_of(length: str, recipe: str, batch: int, lr: float, seed: int) -> dict:
    return {**BASE, **RECIPES[recipe], "epochs": LENGTHS[length], "batch_size": batch,
            "lr": lr, "seed": seed}


def cell_outcome(length: str, recipe: str, batch: int, lr: float) -> dict | None:
    """trains / diverges over the seeds, or None while a seed has no summary."""
    seeds = []
    for seed in SEEDS:
        path = run_dir(length, recipe, batch, lr, seed) / "summary.json"
        if not path.exists():
            return None
        summary = json.loads(path.read_text())
        seeds.append({"seed": seed, "status": summary["status"], "reason": summary["reason"],
                      "collapsed_at_epoch": summary.get("collapsed_at_epoch"),
                      "final_train_acc": summary.get("final_train_acc"),
                      "epochs_completed": summary.get("epochs_completed"),
                      "wall_s": summary.get("wall_s")})
    diverged = [s for s in seeds if s["status"] == "diverged"]
    return {"outcome": "diverges" if diverged else "trains", "seeds": seeds}


def long_lrs(recipe: str, batch: int) -> list[float] | None:
    """The long sweep's 3 points at (recipe, B): the short sweep's largest training lr, one
    below, one above (None until the short cells are all done)."""
    points = grid(recipe)
    outcomes = [cell_outcome("short", recipe, batch, lr) for lr in points]
    if any(o is None for o in outcomes):
        return None
    trains = [i for i, o in enumerate(outcomes) if o["outcome"] == "trains"]
    top = max(trains) if trains else 0
    top = min(max(top, 1), len(points) - 2)
    return points[top - 1:top + 2]


def cells(length: str) -> list[tuple]:
    out = []
    for recipe in RECIPES:
        for batch in BATCHES:
            lrs = grid(recipe) if length == "short" else long_lrs(recipe, batch)
            if lrs is None:
                raise SystemExit("the short sweep is not complete: run it first")
            for lr in lrs:
                for seed in SEEDS:
                    out.append((length, recipe, batch, lr, seed))
    return out


def train_cell(cell: tuple) -> str:
    import torch

    from batchscale.config import from_dict
    from batchscale.engine.train import train
    torch.set_num_threads(1)
    directory = run_dir(*cell)
    if (directory / "summary.json").exists():
        summary = json.loads((directory / "summary.json").read_text())
        if summary["status"] in ("completed", "diverged"):
            return f"{cell} done before"
    summary = train(from_dict(config_of(*cell)), directory, overwrite=True, quiet=True)
    return f"{cell}: {summary['status']} {summary.get('reason')} acc {summary['final_train_acc']}"


def run(length: str, jobs: int) -> None:
    todo = cells(length)
    # the largest batches first: the cheapest per image and the likeliest to break
    todo.sort(key=lambda c: (-c[2], c[1], c[3], c[4]))
    with ProcessPoolExecutor(jobs) as pool:
        for line in pool.map(train_cell, todo):
            print(line, flush=True)


def collect() -> dict:
    record = {"split": split(), "lengths": LENGTHS, "batches": BATCHES, "seeds": SEEDS,
              "base": BASE, "recipes": RECIPES, "cells": []}
    for length in LENGTHS:
        for recipe in RECIPES:
            for batch in BATCHES:
                for lr in grid(recipe):
                    outcome = cell_outcome(length, recipe, batch, lr)
                    if outcome is None:
                        continue
                    record["cells"].append({"length": length, "recipe": recipe, "batch": batch,
                                            "lr": lr, "peak_lr": lr * batch / BASE[
                                                "base_batch_size"], **outcome})
    from batchscale import files
    files.write_text(OUT / "outcomes.json", json.dumps(record, indent=1) + "\n")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["split", "run", "collect"])
    parser.add_argument("length", nargs="?", choices=list(LENGTHS))
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    if args.what == "split":
        from batchscale import files
        OUT.mkdir(parents=True, exist_ok=True)
        files.write_text(OUT / "split.json", json.dumps(split(), indent=1) + "\n")
        print(json.dumps(split(), indent=1))
    elif args.what == "run":
        if args.length is None:
            parser.error("run needs a length: short or long")
        run(args.length, args.jobs)
    else:
        record = collect()
        print(f"{len(record['cells'])} cells in {OUT / 'outcomes.json'}")


if __name__ == "__main__":
    main()

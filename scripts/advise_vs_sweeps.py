"""Put `batchscale advise` predictions beside what the sweeps measured.

    python scripts/advise_vs_sweeps.py            # writes docs/results/advise-mini/report.md

Reads every advice.json under docs/results/advise-mini/ and every run directory (config.yaml,
metrics.jsonl, summary.json) under the sweeps docs/results/{mini,beyond-mini,diverge-mini}. A run
belongs to an advice when their recipes agree on every field that defines the recipe (all but
the batch size, the epochs, the seed and the fields that change only how a run is computed).
Nothing in the report is typed in: every number comes from those files.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import yaml

from batchscale.config import HOW_FIELDS, from_dict
from batchscale.engine.collapse import collapsed_at
from batchscale.study.expand import equivalence_key

ROOT = Path(__file__).resolve().parents[1]
ADVICE_DIR = ROOT / "docs" / "results" / "advise-mini"
SWEEPS = ["mini", "beyond-mini", "diverge-mini"]
# fields that may differ between an advice's recipe and a sweep run of the same recipe
NOT_RECIPE = {"batch_size", "epochs", "seed", "threads", "device", "channels_last", "compile",
              "eval_batch_size", "log_every", "dist_timeout", "track_noise_scale",
              "noise_scale_every", "data_dir"}


def recipe_key(config: dict) -> tuple:
    """The recipe's fields, defaults filled in (runs written before a field existed lack it),
    without the fields that change only how a run is computed."""
    values = from_dict(config).to_dict()
    return tuple(sorted((k, v) for k, v in values.items()
                        if k not in NOT_RECIPE and k not in HOW_FIELDS))


def computation_key(config: dict, batch: int) -> tuple:
    """The study's equivalence key of a recipe at a batch, epochs and seed aside: a recipe at
    its base batch is the same computation as another recipe's base run (mini's trivial/b4)."""
    values = {**config, "batch_size": batch, "epochs": 1, "seed": 0, "track_noise_scale": False,
              "noise_scale_every": 1, "warmup_epochs": min(config["warmup_epochs"], 1)}
    return equivalence_key(from_dict(values))


def belongs(run: dict, record: dict) -> bool:
    """Is this sweep run the advice's recipe at the run's batch?"""
    if recipe_key(run["config"]) == recipe_key(record["config"]):
        return True
    return (run["batch"] == record["base_batch"] and
            computation_key(run["config"], run["batch"]) ==
            computation_key(record["config"], run["batch"]))


def load_advice() -> list[dict]:
    records = []
    for path in sorted(ADVICE_DIR.glob("*/advice.json")):
        record = json.loads(path.read_text())
        record["name"] = path.parent.name
        records.append(record)
    return records


def load_runs(sweep: str) -> list[dict]:
    """Every run directory of a sweep with its outcome."""
    runs = []
    for summary_path in sorted((ROOT / "docs" / "results" / sweep).glob("*/b*/seed*/summary.json")):
        directory = summary_path.parent
        config = yaml.safe_load((directory / "config.yaml").read_text())
        summary = json.loads(summary_path.read_text())
        if summary["status"] not in ("completed", "diverged"):
            continue  # an unfinished run says nothing yet
        metrics = [json.loads(line) for line in (directory / "metrics.jsonl").read_text()
                   .splitlines() if line.strip()]
        if summary["status"] == "diverged" and summary.get("reason") != "collapse":
            outcome = "diverged"
        elif collapsed_at(metrics, config) is not None:  # the engine's own rule
            outcome = "does not train"
        else:
            outcome = "trains"
        runs.append({"sweep": sweep, "recipe": directory.parts[-3], "batch": config["batch_size"],
                     "seed": config["seed"], "config": config, "summary": summary,
                     "metrics": metrics, "outcome": outcome, "status": summary["status"]})
    return runs


def judged(prediction: str, fails: bool) -> str:
    if prediction == "at risk":
        return "hedged"
    return "hit" if (prediction == "diverges") == fails else "miss"


def time_to_target(cell_runs: list[dict], target: float) -> tuple[float | None, float | None]:
    """Mean (steps, wall s) at the first epoch end whose train loss ≤ target (None if a seed
    never gets there)."""
    steps, walls = [], []
    for run in cell_runs:
        hit = next((row for row in run["metrics"] if row["train_loss"] <= target), None)
        if hit is None:
            return None, None
        steps.append(hit["step"])
        walls.append(hit["wall_s"])
    return statistics.mean(steps), statistics.mean(walls)


def fmt(value, spec=".3g", none="—") -> str:
    return none if value is None else format(value, spec)


def outcome_text(cell_runs: list[dict]) -> str:
    parts = []
    for run in sorted(cell_runs, key=lambda r: r["seed"]):
        acc = run["summary"].get("final_train_acc")
        parts.append(f"s{run['seed']}: {run['outcome']} ({fmt(acc, '.2f')})")
    return "; ".join(parts)


def report(advice: list[dict], runs: list[dict]) -> str:
    lines = ["# `batchscale advise` against the sweeps", "",
             "Generated by `python scripts/advise_vs_sweeps.py` from the advice.json files in "
             "this folder (`sh docs/results/advise-mini/run_advise.sh`) and the run directories "
             "of docs/results/mini, docs/results/beyond-mini and docs/results/diverge-mini. "
             "A run counts as **does not train** when it diverged (non-finite loss) or "
             "collapsed by the engine's own rule (`batchscale/engine/collapse.py`, the rule "
             "`train` and `report` use: docs/collapse.md). A (recipe, B) cell "
             "*fails* when any of its seeds does not train. A prediction is a **hit** when "
             "*stable* meets a cell that trains or *diverges* meets one that fails, a **miss** "
             "for the other two pairings, and **hedged** when it said *at risk*.", ""]
    totals = {"hit": 0, "miss": 0, "hedged": 0}
    orders = {"same": 0, "different": 0}
    sections = []
    for record in advice:
        mine = [r for r in runs if belongs(r, record)]
        rows = {row["batch"]: row for row in record["rows"]}
        cfg = record["config"]
        section = [f"## {record['name']}: {cfg['optimizer']}, lr {cfg['lr']} at B = "
                   f"{cfg['base_batch_size']}, {cfg['scale_rule']} rule, warmup "
                   f"{cfg['warmup_epochs']} epochs, bn_group {cfg['bn_group']}", ""]
        advice_line = record["advice"]
        section.append(f"Advice: **B = {advice_line['batch']}** (peak lr "
                       f"{advice_line['peak_lr']:.3g}, {advice_line['verdict']}). "
                       f"B_noise = {fmt(record['noise']['b_noise'])} ± "
                       f"{fmt(record['noise']['b_noise_error'], '.2g')}; λ_max = "
                       f"{fmt(record['curvature']['lambda_max'])}. "
                       f"[advice.md]({record['name']}/advice.md), "
                       f"![advice]({record['name']}/advice.png)")
        section += ["", "| sweep | B | peak lr | predicted | margin | measured (seed: outcome "
                    "(final train acc)) | judged | final test acc (not predicted) |",
                    "|---|---:|---:|---|---:|---|---|---:|"]
        sweeps_seen = sorted({r["sweep"] for r in mine}, key=SWEEPS.index)
        for sweep in sweeps_seen:
            for batch in sorted({r["batch"] for r in mine if r["sweep"] == sweep}):
                cell = [r for r in mine if r["sweep"] == sweep and r["batch"] == batch]
                if len({r["recipe"] for r in cell}) > 1:  # the base run, shared by recipes
                    cell = [r for r in cell if r["recipe"] == cell[0]["recipe"]]
                row = rows.get(batch)
                fails = any(r["outcome"] != "trains" for r in cell)
                test_accs = [r["summary"]["final_test_acc"] for r in cell
                             if r["summary"].get("final_test_acc") is not None]
                test = fmt(statistics.mean(test_accs), ".3f") if test_accs else "—"
                if row is None:
                    section.append(f"| {sweep} | {batch} | — | not a candidate | — | "
                                   f"{outcome_text(cell)} | — | {test} |")
                    continue
                verdict = judged(row["verdict"], fails)
                totals[verdict] += 1
                margin = fmt(row["margin"], ".2f")
                if row["range_test"] is not None and not row["range_test"]["diverged"]:
                    margin = "≥ " + margin  # the test never diverged: a lower bound
                section.append(f"| {sweep} | {batch} | {row['peak_lr']:.3g} | {row['verdict']} | "
                               f"{margin} | {outcome_text(cell)} | "
                               f"**{verdict}** | {test} |")
        section += ["", ranking(record, mine, orders), "", cost(record, mine), ""]
        sections.append("\n".join(section))
    lines.append(f"**Stability, over all (recipe, sweep, B) cells: {totals['hit']} hits, "
                 f"{totals['miss']} misses, {totals['hedged']} hedged (at risk).** "
                 f"**Rankings (batches ordered by steps and by wall time to a common training "
                 f"loss, per recipe and sweep): predicted order = measured order {orders['same']} "
                 f"times, different {orders['different']} times.**")
    lines.append("")
    lines += sections
    unprobed = sorted({f"{r['sweep']}/{r['recipe']}" for r in runs
                       if not any(belongs(r, record) for record in advice)})
    lines += ["## Not measured", "",
              "- Sweep recipes without an advise probe (not compared): "
              + (", ".join(unprobed) or "none") + ".",
              "- The study's Table III check on a GPU (ResNet-18 width 64, CIFAR-10: does advise "
              "predict divergence at 4096 and stability at 2048?) was not run: no GPU was lent "
              "to this task. It is unmeasured.",
              "- Test accuracy is not predicted by the probe (it says so in every advice.md); "
              "the measured final test accuracy is shown only beside the predictions.", ""]
    return "\n".join(lines)


def ranking(record: dict, mine: list[dict], orders: dict) -> str:
    """Measured steps/time to a common training loss vs the predicted ones, per sweep."""
    rows = {row["batch"]: row for row in record["rows"]}
    out = []
    for sweep in sorted({r["sweep"] for r in mine}, key=SWEEPS.index):
        trained = {}
        for batch in sorted({r["batch"] for r in mine if r["sweep"] == sweep}):
            cell = [r for r in mine if r["sweep"] == sweep and r["batch"] == batch]
            if all(r["outcome"] == "trains" for r in cell) and batch in rows:
                trained[batch] = cell
        if len(trained) < 2:
            out.append(f"Ranking in {sweep}: fewer than two candidate batches trained; "
                       "nothing to rank.")
            continue
        # the target: a training loss every trained batch reaches (the worst best)
        target = max(min(row["train_loss"] for row in run["metrics"])
                     for cell in trained.values() for run in cell)
        table = [f"Ranking in {sweep}: time to training loss ≤ {target:.3f} (the lowest loss "
                 "every trained batch reaches; steps and wall at epoch ends, mean over seeds; "
                 "the sweep's wall times were measured under another load than the probe's):",
                 "", "| B | measured steps | predicted S(B) | measured wall s | predicted time s "
                 "(full run to the base loss) |", "|---:|---:|---:|---:|---:|"]
        measured = {}
        for batch, cell in trained.items():
            steps, wall = time_to_target(cell, target)
            measured[batch] = (steps, wall)
            table.append(f"| {batch} | {fmt(steps, '.0f')} | "
                         f"{fmt(rows[batch]['predicted_steps'], '.0f')} | {fmt(wall, '.0f')} | "
                         f"{fmt(rows[batch]['predicted_time_s'], '.0f')} |")
        by_wall = sorted(measured, key=lambda b: measured[b][1])
        predicted = [b for b in sorted(measured, key=lambda b: rows[b]["predicted_time_s"]
                                       or float("inf"))]
        by_steps = sorted(measured, key=lambda b: measured[b][0])
        predicted_steps = sorted(measured, key=lambda b: rows[b]["predicted_steps"]
                                 or float("inf"))
        same_time = "the same" if by_wall == predicted else "a different"
        same_steps = "the same" if by_steps == predicted_steps else "a different"
        orders["same" if by_wall == predicted else "different"] += 1
        orders["same" if by_steps == predicted_steps else "different"] += 1
        table += ["", f"Fastest first, measured wall: {by_wall}; predicted time: {predicted} "
                  f"({same_time} order). Fewest steps first, measured: {by_steps}; predicted: "
                  f"{predicted_steps} ({same_steps} order)."]
        out.append("\n".join(table))
    return "\n\n".join(out)


def cost(record: dict, mine: list[dict]) -> str:
    images = sum(r["summary"]["train_images"] * r["summary"]["epochs_completed"] for r in mine)
    wall = sum(r["summary"]["wall_s"] for r in mine)
    return (f"Probe cost: {record['probe_images']} training images "
            f"({record['probe_fraction']:.1%} of one full {record['config']['epochs']}-epoch run "
            f"at B = {record['base_batch']}), {record['probe_wall_s'] / 60:.1f} min wall on "
            f"{record['device']}. The sweeps' runs of this recipe: {len(mine)} runs, {images} "
            f"training images, {wall / 60:.1f} min of run time (summed over runs).")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ADVICE_DIR / "report.md"))
    args = parser.parse_args()
    runs = [run for sweep in SWEEPS for run in load_runs(sweep)]
    text = report(load_advice(), runs)
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

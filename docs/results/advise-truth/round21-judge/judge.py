"""Before round 21's rules were declared (session 17): could the trial's judge (SHARE_MIN,
PROGRESS_SLACK, PROGRESS_SHARE) be the lever? Every recorded trial of the committed held-out
probes of rounds 6-20 is re-judged from what advice.json keeps (the "collapse" and "nonfinite"
judgements as recorded; "dead" and "no progress" recomputed from the trial's end share and fixed-
sample losses), the bracket rebuilt from the re-judged trials (with the credit limit) and every
truth cell scored. No trial is rerun, so a trial that passes only when re-judged has no trial
above it: cells above it become *at risk* (a lower bound on what a rerun search would find).
The second table: where the verdict is *diverges*, how far the cell's peak is above the smallest
failed trial (log2, rounded to 0.5), and whether the cell's runs trained.

    python docs/results/advise-truth/round21-judge/judge.py \
        > docs/results/advise-truth/round21-judge/score.txt
"""

import collections
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT)]

import advise_truth as at  # noqa: E402
from batchscale.analysis import advise_record  # noqa: E402
from batchscale.analysis import advise_rules as R  # noqa: E402

FIRST, LAST = 6, 20


def probes(variant: str, cells: list[dict]):
    for round_ in range(FIRST, LAST + 1):
        for recipe in at.halves(round_)["held_out"]:
            kind = advise_record.kind_of(at.RECIPES[recipe])
            for length in at.LENGTHS:
                path = at.advise_dir("held_out", recipe, length, round_, variant) / "advice.json"
                if not path.exists():
                    continue
                advice = json.loads(path.read_text())
                for row, mine in at.probe_cells(advice, cells, recipe, length):
                    yield kind, advice["config"]["epochs"], row, mine


def judge(share_min: float, slack: float, share: float):
    def failed(t: dict) -> bool:
        if t["why"] in ("nonfinite", "collapse"):
            return True
        if t["end_share"] is not None and t["end_share"] < share_min:
            return True
        refs = [t["start_loss"]] + ([t["hold_start_loss"]] if t["hold_start_loss"] is not None
                                    else [])
        chance = math.log(10)
        return (all(t["end_loss"] >= r + slack * max(chance - r, 0.0) for r in refs)
                and (t["end_share"] is None or t["end_share"] < share))
    return failed


def bracket(row: dict, epochs: int, failed) -> tuple:
    low = high = None
    for t in row["trials"]:
        if failed(t):
            high = t["lr"] if high is None else min(high, t["lr"])
        else:
            low = t["lr"] if low is None else max(low, t["lr"])
    credit = R.credit_limit(row["peak_lr"], epochs)
    return (low if low is None or credit is None else min(low, credit)), high


def score(data, failed) -> str:
    n = right = false_stable = risk = 0
    for _, epochs, row, mine in data:
        low, high = bracket(row, epochs, failed)
        for cell in mine:
            verdict = R.verdict(cell["peak_lr"], low, high)[0]
            n += 1
            right += {"stable": "trains", "diverges": "diverges"}.get(verdict) == cell["outcome"]
            false_stable += verdict == "stable" and cell["outcome"] == "diverges"
            risk += verdict == "at risk"
    return f"{right}/{n} right, {false_stable} false stable, {risk} at risk"


def main() -> None:
    cells = json.loads((at.OUT / "outcomes.json").read_text())["cells"]
    data = {v: list(probes(v, cells)) for v in ("", "-3trials")}
    print(f"rounds {FIRST}-{LAST}, held-out probes re-judged; default budget | 3 trials per batch")
    print(f"as recorded (round 11's rules): "
          f"{score(data[''], lambda t: t['failed'])} | {score(data['-3trials'], lambda t: t['failed'])}")
    for share_min in (0.2, 0.3, 0.35):
        for slack in (0.5, 0.75, 1.0):
            for share in (0.6, 0.7, 0.8):
                f = judge(share_min, slack, share)
                print(f"SHARE_MIN {share_min} PROGRESS_SLACK {slack} PROGRESS_SHARE {share}: "
                      f"{score(data[''], f)} | {score(data['-3trials'], f)}")
    print()
    print("verdict diverges, 3 trials per batch: log2(cell peak / smallest failed peak) -> "
          "cells whose runs trained / diverged")
    table = collections.Counter()
    for kind, _, row, mine in data["-3trials"]:
        for cell in mine:
            if at.cell_verdict(cell, row) != "diverges":
                continue
            step = min(2.0, round(math.log2(cell["peak_lr"] / row["bracket_high"]) * 2) / 2)
            table[(kind, step, cell["outcome"])] += 1
    for kind in ("sgd with warmup", "sgd without warmup", "rmsprop", "all"):
        for step in (0.0, 0.5, 1.0, 1.5, 2.0):
            got = [sum(v for (k, s, o), v in table.items() if (kind in ("all", k)) and s == step
                       and o == outcome) for outcome in ("trains", "diverges")]
            label = "≥ 2" if step == 2.0 else f"{step:g}"
            print(f"  {kind}, {label}: {got[0]} trained / {got[1]} diverged")


if __name__ == "__main__":
    main()

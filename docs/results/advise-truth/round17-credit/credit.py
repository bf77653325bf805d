"""Round 17's candidate, replayed and not taken: no credit limit for RMSProp recipes (a passed
trial counts up to the largest passed peak, as it does for recipes of <= 10 epochs). Verdicts are
recomputed from the committed held-out probes of rounds 6-16 (each batch's largest passed peak and
smallest failed one) and outcomes.json; no trial is rerun:

    python docs/results/advise-truth/round17-credit/credit.py \
        > docs/results/advise-truth/round17-credit/score.txt

The same check on the rounds probed after it was recorded (17-19, then 17-20; it was not chosen
on them):

    python docs/results/advise-truth/round17-credit/credit.py 17 19 \
        > docs/results/advise-truth/round17-credit/score-17-19.txt
    python docs/results/advise-truth/round17-credit/credit.py 17 20 \
        > docs/results/advise-truth/round17-credit/score-17-20.txt
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT)]

import advise_truth as at  # noqa: E402
from batchscale.analysis import advise_record, advise_rules  # noqa: E402


def right(verdict: str, outcome: str) -> bool:
    return {"stable": "trains", "diverges": "diverges"}.get(verdict) == outcome


def main(first: int = 6, last: int = 16) -> None:
    print(f"rounds {first}-{last}")
    cells = json.loads((at.OUT / "outcomes.json").read_text())["cells"]
    for variant in ("", "-3trials"):
        n, score = 0, {"round 11 rules": [0, 0], "no credit limit for RMSProp": [0, 0]}
        for round_ in range(first, last + 1):
            for recipe in at.halves(round_)["held_out"]:
                rmsprop = advise_record.kind_of(at.RECIPES[recipe]) == "rmsprop"
                for length in at.LENGTHS:
                    path = at.advise_dir("held_out", recipe, length, round_, variant)
                    if not (path / "advice.json").exists():
                        continue
                    advice = json.loads((path / "advice.json").read_text())
                    for row, mine in at.probe_cells(advice, cells, recipe, length):
                        lows = {"round 11 rules": row["bracket_low"],
                                "no credit limit for RMSProp":
                                    row.get("largest_passed", row["bracket_low"]) if rmsprop
                                    else row["bracket_low"]}
                        for cell in mine:
                            n += 1
                            for name, low in lows.items():
                                verdict = advise_rules.verdict(cell["peak_lr"], low,
                                                               row["bracket_high"])[0]
                                score[name][0] += right(verdict, cell["outcome"])
                                score[name][1] += (verdict == "stable"
                                                   and cell["outcome"] == "diverges")
        print(f"{'3 trials per batch' if variant else 'default budget'}: {n} cells; " + "; ".join(
            f"{name}: {ok} right, {fs} false stable" for name, (ok, fs) in score.items()))


if __name__ == "__main__":
    main(*map(int, sys.argv[1:3]))

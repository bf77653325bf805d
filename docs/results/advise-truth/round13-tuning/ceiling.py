"""The ceiling of any bracket: per (recipe, length, B) the one threshold, chosen with hindsight,
that calls every peak at or below it *stable* and every peak above it *diverges*, scored on the
larger truth set's held-out rounds (6 to the newest whose sweeps are complete). If that is near
100%, the runs are nearly monotone in the peak and what misses is the trial, not noise in the
truth.

    python docs/results/advise-truth/round13-tuning/ceiling.py   # > ceiling.txt
"""
import json
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3] / "scripts"))
import advise_truth as T  # noqa: E402

cells = json.loads((HERE.parent / "outcomes.json").read_text())["cells"]
groups = defaultdict(list)
for cell in cells:
    if T.round_of(cell["recipe"]) >= 6 and T.round_complete(T.round_of(cell["recipe"]), cells):
        groups[T.round_of(cell["recipe"]), cell["recipe"], cell["length"], cell["batch"]].append(
            cell)
by_round = defaultdict(lambda: [0, 0])
for (round_, *_), mine in groups.items():
    best = max(sum((c["lr"] <= cut) == (c["outcome"] == "trains") for c in mine)
               for cut in [0.0, *(c["lr"] for c in mine)])
    by_round[round_][0] += best
    by_round[round_][1] += len(mine)
for round_, (right, n) in sorted(by_round.items()):
    print(f"round {round_}: {right}/{n}")
right, n = (sum(v[i] for v in by_round.values()) for i in (0, 1))
print(f"rounds {min(by_round)}-{max(by_round)}: {right}/{n} = {right / n:.1%} right at the best "
      f"threshold per (recipe, length, B)")

"""Every false *stable* verdict of the held-out rounds 6-38 with 3 trials per batch (a cell the
probe called stable where a seed collapsed or diverged): its round, recipe, length, batch and the
failed seeds' reason and last-epoch train accuracy. The counts behind CANNOT_KNOW in
batchscale/analysis/advise_rules.py:

    python docs/results/advise-truth/false-stable/count.py \
        > docs/results/advise-truth/false-stable/count.txt
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT)]

import advise_truth as at  # noqa: E402

FIRST, LAST = 6, 38


def main() -> None:
    cells = json.loads((at.OUT / "outcomes.json").read_text())["cells"]
    found = []
    for round_ in range(FIRST, LAST + 1):
        for recipe in at.halves(round_)["held_out"]:
            for length in at.LENGTHS:
                path = at.advise_dir("held_out", recipe, length, round_, "-3trials")
                advice = json.loads((path / "advice.json").read_text())
                largest = max(advice["batches"])
                for row, mine in at.probe_cells(advice, cells, recipe, length):
                    for cell in mine:
                        if at.cell_verdict(cell, row) == "stable" and cell["outcome"] == "diverges":
                            failed = [s for s in cell["seeds"] if s["status"] != "completed"]
                            found.append((round_, recipe, length, cell["batch"],
                                          cell["batch"] == largest, failed))
    for round_, recipe, length, batch, _, failed in found:
        seeds = ", ".join(f"{s['reason']} at train accuracy {s['final_train_acc']:.3f}"
                          for s in failed)
        print(f"round {round_} {recipe} {length} B = {batch}: {seeds}")
    short = [f for f in found if f[2] == "short"]
    accs = [s["final_train_acc"] for f in short for s in f[5]]
    print(f"rounds {FIRST}-{LAST}: {len(found)} false stable; {len(short)} in 4-epoch runs, "
          f"{sum(f[4] for f in short)} of those at the largest B; their failed seeds' last-epoch "
          f"train accuracy {min(accs):.3f}-{max(accs):.3f} (chance 0.100)")


if __name__ == "__main__":
    main()

"""Score hold.py's B = 256 trials on the runs: per hold, the verdicts a 3-trial bracket gives the
B = 256 cells of those recipes (both lengths; the credit limit for 30 epochs), against the truth."""
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))
from batchscale.analysis.advise_rules import CREDIT_EPOCHS, CREDIT_UP, verdict  # noqa: E402

cells = json.loads((HERE.parent / "outcomes.json").read_text())["cells"]
records = {p.stem: json.loads(p.read_text()) for p in sorted((HERE / "trials").glob("*.json"))}
epochs = {"short": 4, "long": 30}
for hold in ("4", "8", "16"):
    n = right = false_stable = under = risk = 0
    for recipe, record in records.items():
        passed = [t["lr"] for t in record[hold] if not t["failed"]]
        failed = [t["lr"] for t in record[hold] if t["failed"]]
        for cell in cells:
            if cell["recipe"] != recipe or cell["batch"] != 256:
                continue
            low = max(passed) if passed else None
            if low is not None and epochs[cell["length"]] > CREDIT_EPOCHS:
                low = min(low, CREDIT_UP * record["peak"])
            state = verdict(cell["peak_lr"], low, min(failed) if failed else None)[0]
            n += 1
            right += {"stable": "trains", "diverges": "diverges"}.get(state) == cell["outcome"]
            false_stable += state == "stable" and cell["outcome"] == "diverges"
            under += state == "diverges" and cell["outcome"] == "trains"
            risk += state == "at risk"
    print(f"hold {hold:>2} steps at B = 256 ({len(records)} recipes, {n} cells): {right} right, "
          f"{false_stable} false stable, {under} diverges where both trained, {risk} at risk")

"""(right, cells, false stable, at risk, per recipe) of probes' advice.json against the tuning
recipes' short cells: python score_probes.py DIR... (see probe_variant.py)."""
import json, sys
from pathlib import Path
ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))
from batchscale.analysis import advise_rules as R
OUT = ROOT / "docs" / "results" / "advise-truth"
o = json.load(open(OUT / "outcomes.json"))
import os
SPLIT = os.environ.get("SPLIT", "split4.json")
TUNING = json.load(open(OUT / SPLIT))["tuning"]
def score(dirs, safety=1.0):
    n = right = fs = risk = 0; per = {}
    for d in dirs:
        for p in sorted(Path(d).glob("*-short/advice.json")):
            recipe = p.parent.name[:-len("-short")]
            if recipe not in TUNING: continue
            adv = json.load(open(p)); r0 = right; n0 = n
            for row in adv["rows"]:
                for c in o["cells"]:
                    if c["recipe"] == recipe and c["length"] == "short" and c["batch"] == row["batch"]:
                        v = R.verdict(c["peak_lr"], row["bracket_low"], row["bracket_high"], safety)[0]
                        ok = {"stable": "trains", "diverges": "diverges"}.get(v) == c["outcome"]
                        n += 1; right += ok; risk += v == "at risk"; fs += v == "stable" and c["outcome"] == "diverges"
            per[recipe] = f"{right - r0}/{n - n0}"
    return right, n, fs, risk, per
if __name__ == "__main__":
    print(score(sys.argv[1:]))

"""Score the round-9 candidate (gate07: the loss-progress test fails a trial only below input
share 0.7) on rounds 1-8's cells (../outcomes.json) against the rules frozen at c1e50bb.

    python docs/results/advise-truth/round9-tuning/score.py   # > score.txt

Rounds 1-7 at 3 trials per batch: ../round8-tuning/probes.json (gate07 and c1e50bb's probes, session
9). Round 8 at 3 trials and rounds 6-8 at the default budget: probes.json here (session 10) against
the committed held-out probes of ../advise/round6-8 (at c1e50bb). A cell is right when the verdict
is stable and every seed trained, or diverges and a seed diverged (at risk counts as not right).
"""
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))
sys.path.insert(0, str(HERE.parents[3] / "scripts"))
import advise_truth as T  # noqa: E402

from batchscale.analysis.advise_rules import verdict  # noqa: E402

CELLS = json.loads((HERE.parent / "outcomes.json").read_text())["cells"]
PROBES = json.loads((HERE / "probes.json").read_text())
PROBES |= json.loads((HERE.parent / "round8-tuning" / "probes.json").read_text())
for rnd in (6, 7, 8):  # the committed held-out probes, at c1e50bb
    for kind, folder in (("3", "held_out-3trials"), ("default", "held_out")):
        for p in sorted((HERE.parent / "advise" / f"round{rnd}" / folder).glob("*/advice.json")):
            PROBES[f"committed/{kind}/{p.parent.name}"] = json.loads(p.read_text())
R15 = [n for r in range(1, 6) for n in T.ROUND_RECIPES[r]]
R67 = [*T.ROUND6, *T.ROUND7]
R8 = T.ROUND_RECIPES[8]


def score(keys):
    n = right = risk = fs = fd = 0
    for key in keys:
        recipe, length = key.split("/")[-1].rsplit("-", 1)
        for row in PROBES[key]["rows"]:
            for c in CELLS:
                if (c["recipe"], c["length"], c["batch"]) != (recipe, length, row["batch"]):
                    continue
                state = verdict(c["peak_lr"], row["bracket_low"], row["bracket_high"])[0]
                n += 1
                right += {"stable": "trains", "diverges": "diverges"}.get(state) == c["outcome"]
                risk += state == "at risk"
                fs += state == "stable" and c["outcome"] == "diverges"
                fd += state == "diverges" and c["outcome"] == "trains"
    return (n, right, risk, fs, fd)


def keys(variant, kind, recipes):
    return [f"{variant}/{kind}/{r}-{L}" for r in recipes for L in ("short", "long")]


def line(name, s):
    n, right, risk, fs, fd = s
    return f"  {name:10s} {right}/{n} right, {risk} at risk, {fs} false stable, {fd} false diverges"


def main():
    COMPARISONS = [
        ("3 trials, rounds 1-5", "3", R15, "base"),
        ("3 trials, rounds 6-7", "3", R67, "committed"),
        ("3 trials, round 8", "3", R8, "committed"),
        ("default budget, rounds 6-7", "default", R67, "committed"),
        ("default budget, round 8", "default", R8, "committed"),
    ]
    total = {}
    for title, kind, recipes, against in COMPARISONS:
        print(title)
        for name, variant in (("gate07", "gate07"), ("c1e50bb", against)):
            s = score(keys(variant, kind, recipes))
            print(line(name, s))
            total.setdefault((kind, name), [0] * 5)
            total[(kind, name)] = [a + b for a, b in zip(total[(kind, name)], s, strict=True)]
    for kind, label in (("3", "3 trials, rounds 1-8"), ("default", "default budget, rounds 6-8")):
        print(f"{label} (total)")
        for name in ("gate07", "c1e50bb"):
            print(line(name, total[(kind, name)]))


if __name__ == "__main__":
    main()

"""Score the round-8 tuning variants (probes.json) on rounds 1-7's cells (../outcomes.json).

    python docs/results/advise-truth/round8-tuning/score.py   # > score.txt

Every variant is compared with the rules frozen at c1e50bb on the same probes' cells: `committed`
(the round-6/7 held-out probes, at c1e50bb) or `base` (rounds 1-5, re-probed this session at
c1e50bb's rules). A cell is right when the verdict is stable and every seed trained, or diverges
and a seed diverged (at risk counts as not right), as in scripts/advise_truth.py's report.
"""
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))
sys.path.insert(0, str(HERE.parents[3] / "scripts"))
import advise_truth as T  # noqa: E402

from batchscale.analysis.advise_rules import verdict  # noqa: E402

PROBES = json.loads((HERE / "probes.json").read_text())
CELLS = json.loads((HERE.parent / "outcomes.json").read_text())["cells"]
R67 = [*T.ROUND6, *T.ROUND7]
R15 = [n for r in range(1, 6) for n in T.ROUND_RECIPES[r]]
NO_WARMUP = ["no-warmup", "no-warmup-ls", "const-nowarmup", "no-warmup-group4"]


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
    return f"{right}/{n} right, {risk} at risk, {fs} false stable, {fd} false diverges"


def keys(variant, kind, recipes, lengths=("short", "long")):
    return [f"{variant}/{kind}/{r}-{L}" for r in recipes for L in lengths]


COMPARISONS = [
    ("nostop (STOP_EXPLODED False), 3 trials, rounds 6-7", "nostop", "committed", "3", R67,
     ("short", "long")),
    ("nostop, 3 trials, rounds 1-5 no-warmup recipes", "nostop", "base", "3", NO_WARMUP,
     ("short", "long")),
    ("lenient (INIT_LENIENT + nostop), 3 trials, rounds 1-5 no-warmup recipes + n4k-no-warmup",
     "lenient", None, "3", [*NO_WARMUP, "no-warmup-m08", "n4k-no-warmup"], ("short", "long")),
    ("t4 (DEFAULT_TRIALS 4), default budget, rounds 6-7 long", "t4", "committed", "default",
     R67, ("long",)),
    ("t4, default budget, rounds 1-5 long", "t4", "base", "default", R15, ("long",)),
    ("h8 (HOLD_MIN 8), 3 trials, rounds 6-7 (long = the short probe: same trials)", "h8",
     "committed", "3", R67, ("short", "long")),
    ("gate07 (gate.py 0.7: no-progress fails only below input share 0.7), 3 trials, rounds 6-7; "
     "a candidate for the next round, chosen after round 8's probes", "gate07", "committed", "3",
     R67, ("short", "long")),
    ("gate07, 3 trials, rounds 1-5 (c1e50bb: `base`, re-probed this session)", "gate07", "base",
     "3", R15, ("short", "long")),
]

for title, variant, against, kind, recipes, lengths in COMPARISONS:
    print(title)
    print(f"  {variant:10s} {score(keys(variant, kind, recipes, lengths))}")
    if against is None:  # c1e50bb: the base probes of rounds 1-5, the committed ones of round 6
        ref = [k.replace("lenient/", ("committed/" if "n4k" in k else "base/"), 1)
               for k in keys(variant, kind, recipes, lengths)]
        print(f"  {'c1e50bb':10s} {score(ref)}")
    else:
        print(f"  {'c1e50bb':10s} {score(keys(against, kind, recipes, lengths))}")

"""A tight default budget leaves out the noise scale (context), not trials: the three seen
4-epoch recipes with 2 warmup epochs, whose committed default-budget probes cost just over one
run (every batch's first trial needed it), probed again at the default budget and compared with
those probes. Session 13, after round 13's probes; no rule is tuned by it.

    python docs/results/advise-truth/context-left-out/compare.py OUT   # > result.txt

OUT receives the new probes (a minute or two on one core).
"""
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[3]
PROBES = ((12, "n4k-warmup2-wd1e3-const"), (7, "n4k-group4-warmup2"),
          (10, "n4k-group8-warmup2-ls"))
out = Path(sys.argv[1])
for round_, recipe in PROBES:
    folder = HERE.parent / "advise" / f"round{round_}" / "held_out"
    command = next(r["command"] for r in json.loads((folder / "runs.json").read_text())
                   if r["recipe"] == recipe and r["length"] == "short").split()
    at = command.index("--out")
    command[at + 1] = str(out / f"{recipe}-short")
    subprocess.run([sys.executable, *command], cwd=ROOT, check=True, capture_output=True)
    old = json.loads((folder / f"{recipe}-short" / "advice.json").read_text())
    new = json.loads((out / f"{recipe}-short" / "advice.json").read_text())
    print(f"{recipe} (round {round_}, short, default budget): probe cost "
          f"{old['probe_fraction']:.1%} -> {new['probe_fraction']:.1%} of a run; noise scale "
          f"{old['noise']['measurements']} -> {new['noise']['measurements']} measurements; "
          f"lambda_max {'measured' if new['curvature']['lambda_max'] is not None else 'not'}")
    for a, b in zip(old["rows"], new["rows"], strict=True):
        trials = [(t["lr"], t["failed"]) for t in a["trials"]]
        same = (trials == [(t["lr"], t["failed"]) for t in b["trials"]]
                and [c["losses"] for c in a["curves"]] == [c["losses"] for c in b["curves"]])
        said = "the same, to every loss" if same else "DIFFER"
        print(f"  B = {a['batch']}: trials {trials}: {said}; verdict {a['verdict']} -> "
              f"{b['verdict']}")
    print(f"  advice.json context_left_out: {new['context_left_out']}")

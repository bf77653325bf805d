"""A lower input-share gate on the progress test (advise_rules.PROGRESS_SHARE, 0.7 since round 9),
replayed on rounds 1-11 (session 12, after round 12's reports; not taken).

    python docs/results/advise-truth/round12-tuning/gate.py   # > gate.txt

Round 12's under-claims at 8x the peak (n4k-rmsprop-ls-group8) and 4x (n4k-warmup2-wd1e3-const)
were trials that failed "no progress" with input shares 0.60-0.67, just under the gate. A lower
gate only turns such failures into passes, so round11-tuning/trials.json (which keeps each trial's
`why` and `end_share`) is re-judged under it and the frozen search replayed. A peak the replay
needs but no trial recorded counts as a failure ("missing": those cells are scored as if the
lower gate had not helped there).
"""
import importlib.util
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("r11", HERE.parent / "round11-tuning" / "replay.py")
r11 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(r11)
RAW = json.loads((HERE.parent / "round11-tuning" / "trials.json").read_text())
MISSING = set()
RECORDED = r11.outcome


def outcome(recipe, batch, lr):
    try:
        return RECORDED(recipe, batch, lr)
    except KeyError:
        MISSING.add((recipe, batch, round(lr, 9)))
        return True


r11.outcome = outcome
SEARCH = r11.VARIANTS["x4 up, credit 4x (> 10 epochs)  <- taken"]
SETS = (("3", range(1, 6), "3 trials, rounds 1-5"), ("3", range(6, 12), "3 trials, rounds 6-11"),
        ("default", range(6, 12), "default, rounds 6-11"))
for gate in (0.7, 0.65, 0.6, 0.55, 0.5):
    MISSING.clear()
    r11.TRIALS.clear()
    for key, entry in RAW.items():
        recipe, batch, lr = key.split()
        failed = entry["failed"] and not (entry["why"] == "no progress"
                                          and entry["end_share"] is not None
                                          and entry["end_share"] >= gate)
        r11.TRIALS.setdefault((recipe, int(batch)), []).append((float(lr), failed))
    lines = [f"  {name:24s} {r11.score(*SEARCH, kind, rounds)}" for kind, rounds, name in SETS]
    print(f"PROGRESS_SHARE {gate}{'  <- kept' if gate == 0.7 else ''}")
    print("\n".join(lines))
    print(f"  missing trials (scored as failures): {len(MISSING)}")

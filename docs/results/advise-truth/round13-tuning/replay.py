"""Round 13's tuning (session 13): short recipes' soft trial failures, replayed on rounds 1-12.

    python docs/results/advise-truth/round13-tuning/replay.py   # > score.txt

Round 12's held-out misses and the replayed misses of rounds 6-12 are mostly *under-claims* on
4-epoch runs: a trial at 4-8x the peak failed where both seeds' runs trained (the engine's stall
tier needs half a 4-epoch run at chance; a trial holds the peak for a quarter epoch). The
candidate: for a recipe of at most CREDIT_EPOCHS (10) epochs, a trial that failed only softly
("no progress", optionally "dead", or any failure, optionally only with an input share of at
least 0.5) counts as a pass. The outcome of a trial is a function of (recipe, B, peak), so
round11-tuning's record (trials.json, probes.json: rounds 1-11) plus round 12's committed probes
(advise/round12/held_out*/*/advice.json, at 2334f9b, round 11's frozen rules) are replayed
through the frozen search (x4 up, credit 4x for > 10 epochs) on each probe's own budget. Under a
candidate a search can ask for a peak no probe tried: such a trial counts as a failure, as the
kept rule judged it ("missing": those cells are scored as if the candidate had not helped).
Round 12 joins the tuning set here: it was held out in session 12, and is seen now.
"""
import importlib.util
import json
import math
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("r11", HERE.parent / "round11-tuning" / "replay.py")
r11 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(r11)

RAW = json.loads((HERE.parent / "round11-tuning" / "trials.json").read_text())
for kind, folder in (("3", "held_out-3trials"), ("default", "held_out")):
    for path in sorted((HERE.parent / "advise" / "round12" / folder).glob("*-[sl]*/advice.json")):
        adv = json.loads(path.read_text())
        recipe, length = path.parent.name.rsplit("-", 1)
        rows = adv["rows"]
        spent = sum(x["trial_images"] * len(x["trials"]) for x in rows)
        r11.PROBES[f"{kind}/{recipe}-{length}"] = {
            "round": 12, "trial_budget": adv["budget_images"] - (adv["probe_images"] - spent),
            "base_learning": adv.get("base_learning", True), "epochs": adv["config"]["epochs"],
            "rows": [{k: x[k] for k in ("batch", "peak_lr", "trial_images", "fits")}
                     for x in rows]}
        for row in rows:
            for t in row["trials"]:
                key = f"{recipe} {row['batch']} {t['lr']:.10g}"
                entry = {"failed": t["failed"], "why": t["why"], "end_share": t.get("end_share")}
                assert RAW.get(key, entry)["failed"] == entry["failed"], key
                RAW.setdefault(key, entry)
BY_CELL = {}
for key, entry in RAW.items():
    recipe, batch, lr = key.split()
    BY_CELL.setdefault((recipe, int(batch)), []).append((float(lr), entry))
MISSING = set()
STATE = {"epochs": 0, "soft": (), "share": 0.0}


def outcome(recipe, batch, lr):
    for tried, entry in BY_CELL.get((recipe, batch), []):
        if math.isclose(tried, lr, rel_tol=1e-6):
            share = entry.get("end_share")
            soft = (entry["failed"] and STATE["epochs"] <= 10 and entry["why"] in STATE["soft"]
                    and (share is None or share >= STATE["share"]))
            return entry["failed"] and not soft
    MISSING.add((recipe, batch, round(lr, 9)))
    return True


def replay(probe, recipe, strategy, base=r11.replay):
    STATE["epochs"] = probe["epochs"]
    return base(probe, recipe, strategy)


r11.outcome, r11.replay = outcome, replay
SEARCH = partial(r11.search, up=4.0), (4.0, 10)
SETS = (("3", range(1, 6), "3 trials, rounds 1-5"), ("3", range(6, 13), "3 trials, rounds 6-12"),
        ("default", range(6, 13), "default, rounds 6-12"))
CANDIDATES = (((), 0.0, "  <- kept (round 11's rules)"), (("no progress",), 0.0, ""),
              (("no progress",), 0.5, ""), (("no progress", "dead"), 0.0, ""),
              (("no progress", "dead", "collapse"), 0.0, ""))
if __name__ == "__main__":
    print(f"{len(RAW)} recorded trials, {len(r11.PROBES)} probes")
    for soft, share, mark in CANDIDATES:
        STATE.update(soft=soft, share=share)
        MISSING.clear()
        what = " / ".join(soft) or "nothing"
        print(f"recipes of <= 10 epochs: {what} counts as a pass (input share >= {share}){mark}")
        for kind, rounds, name in SETS:
            print(f"  {name:24s} {r11.score(*SEARCH, kind, rounds)}")
        print(f"  missing trials (scored as failures): {len(MISSING)}")

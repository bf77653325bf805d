"""Round 12's tuning: a different trial from the initialization (no-warmup recipes), judged on
rounds 1-11. None was taken: round 12 is probed at round 11's frozen rules (2334f9b).

    python docs/results/advise-truth/round12-tuning/replay.py   # > score.txt (about a minute)
    python docs/results/advise-truth/round12-tuning/replay.py --posthoc   # > posthoc.txt

--posthoc judges every candidate directly on round 12's no-warmup recipe (n4k-no-warmup-poly,
held out; seen: its trials were recorded by record.py into posthoc-trials.json after round 12's
probes and reports). It tunes nothing; it says what each candidate would have done there.

Round 11's replay (round11-tuning) showed that even a trial at every grid cell, judged directly,
agreed with the larger truth set's runs on about 82% of cells, and that the largest group of misses
was no-warmup trials that failed at their first windows where the runs recovered from the first
blow-up. A recipe without warmup has no base state to warm up: its trials are its run's own first
steps from the initialization. The candidates change only that trial:
  hold      how long it holds the peak: a quarter epoch (round 11's hold_steps), half an epoch, or
            half an epoch but at least 8 steps;
  watch     an exploded window stops it only after hold_steps (round 11: from its first window);
  progress  how its fixed-sample loss must end: "old", below its start unless the input share is
            at least PROGRESS_SHARE (round 11's test; from the initialization the start is above
            chance); "gated", below min(start, chance) unless the share is high; "strict", below
            min(start, chance) at any share.
trials.json (record.py) holds long trials of the 10 no-warmup recipes of rounds 1-11 at every grid
peak and the search's √2 points (375 trials), so every candidate is judged from the record:
  1. directly: each grid cell's trial against its runs (short and long cells);
  2. through the frozen search (round11-tuning/replay.py: x4 up, credit 4x beyond 10 epochs) on
     every probe's own budget, recomputed for the candidate's trial cost (a longer hold changes the
     default and the 3-trial budgets; what the fixed pieces spent is kept from the probe).
Warm recipes' trials are unchanged (round11-tuning/trials.json).
"""
import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))
sys.path.insert(0, str(HERE.parents[3] / "scripts"))
import advise_truth as T  # noqa: E402

from batchscale.analysis import advise as A  # noqa: E402
from batchscale.analysis import advise_rules as R  # noqa: E402
from batchscale.config import from_dict  # noqa: E402

spec = importlib.util.spec_from_file_location("r11", HERE.parent / "round11-tuning" / "replay.py")
r11 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(r11)
RECORD = {}
for key, trial in json.loads((HERE / "trials.json").read_text()).items():
    recipe, batch, lr = key.split()
    RECORD[(recipe, int(batch), float(lr))] = trial
COLD = {r for r in T.RECIPES if T.RECIPES[r].get("warmup_epochs", 1) == 0}
CLASSES, BIG = 10, 10 ** 6
HOLDS = {"quarter": lambda spe: R.hold_steps(spe, BIG),
         "half": lambda spe: max(R.HOLD_MIN, spe // 2),
         "max(8, half)": lambda spe: max(8, spe // 2)}


def judge(trial, batch, hold, watch, progress):
    """(failed, why) of a candidate trial, from the record."""
    spe = trial["spe"]
    steps = HOLDS[hold](spe)
    first = R.hold_steps(spe, BIG) if watch else 0
    losses, accs = trial["losses"][:steps], trial["accs"][:steps]
    if len(losses) < steps or any(not math.isfinite(v) for v in losses):
        return True, "nonfinite"
    width = R.window_steps(batch)
    for end in range(max(width, first), len(losses) + 1):
        if R.exploded(losses[end - width:end], accs[end - width:end], batch, CLASSES):
            return True, "collapse"
    loss, share = trial["stats"][str(steps)]
    if R.dead(share):
        return True, "dead"
    reference = trial["start_loss"] if progress == "old" else min(trial["start_loss"],
                                                                  math.log(CLASSES))
    gated = share >= R.PROGRESS_SHARE and progress != "strict"
    return (loss >= reference and not gated), "no progress"


def recorded(recipe, batch, lr):
    for (name, b, tried), trial in RECORD.items():
        if name == recipe and b == batch and math.isclose(tried, lr, rel_tol=5e-4):
            return trial
    raise KeyError(f"no recorded trial for {recipe} B={batch} peak {lr:.6g}: run record.py")


def probe_for(name, probe, hold):
    """The probe with the candidate's trial cost: trial images per B (no ramp from the
    initialization: hold × B + the fixed sample once) and the trial budget moved by what the
    candidate's budget adds to round 11's (the fixed pieces' spending is kept)."""
    kind, rest = name.split("/")
    recipe, length = rest.rsplit("-", 1)
    if recipe not in COLD:
        return probe
    cfg, batches = T.probe_config(recipe, length)
    recipe_cfg = from_dict(cfg)
    plan = A.plan_probe(recipe_cfg, batches, cfg["train_subset"])
    assert not any(plan.ramp.values()) and plan.base_steps == 0, name
    spe = {b: cfg["train_subset"] // b for b in batches}
    new = dataclasses.replace(plan, hold={b: HOLDS[hold](spe[b]) for b in batches})

    def budget(p):
        trials = sum(p.trial_images(b) for b in batches)
        if kind == "3":  # T.three_trial_budget for this plan
            return max(int(0.1 * cfg["train_subset"] * recipe_cfg.epochs),
                       p.fixed_images(recipe_cfg.base_batch_size) + A.DEFAULT_TRIALS * trials)
        return A.default_budget(p, recipe_cfg.base_batch_size,
                                cfg["train_subset"] * recipe_cfg.epochs, recipe_cfg.epochs)

    assert budget(plan) == T.three_trial_budget(cfg, batches) or kind != "3", name
    assert [plan.trial_images(r["batch"]) for r in probe["rows"]] == \
        [r["trial_images"] for r in probe["rows"]], name
    rows = [{**r, "trial_images": new.trial_images(r["batch"])} for r in probe["rows"]]
    return {**probe, "trial_budget": probe["trial_budget"] + budget(new) - budget(plan),
            "rows": rows}


def direct(candidate):
    """The no-warmup recipes' grid cells with runs: right / cells, false stable."""
    n = right = false_stable = 0
    for (recipe, batch, lr), trial in RECORD.items():
        failed = judge(trial, batch, *candidate)[0]
        for c in r11.CELLS:
            if (c["recipe"] == recipe and c["batch"] == batch
                    and math.isclose(c["peak_lr"], lr, rel_tol=1e-6)):
                n += 1
                right += failed == (c["outcome"] == "diverges")
                false_stable += not failed and c["outcome"] == "diverges"
    return f"{right}/{n} right, {false_stable} false stable"


OLD_OUTCOME, PROBES = r11.outcome, r11.PROBES
ROUND11 = ("quarter", False, "old")
CANDIDATES = [ROUND11] + [(h, True, p) for h in HOLDS for p in ("old", "gated", "strict")]
SETS = (("3", range(1, 6), "3 trials, rounds 1-5"), ("3", range(6, 12), "3 trials, rounds 6-11"),
        ("default", range(6, 12), "default, rounds 6-11"))
if __name__ == "__main__" and sys.argv[1:] == ["--posthoc"]:
    RECORD.clear()
    for key, trial in json.loads((HERE / "posthoc-trials.json").read_text()).items():
        recipe, batch, lr = key.split()
        RECORD[(recipe, int(batch), float(lr))] = trial
    print("POST HOC, round 12 (held out; seen): n4k-no-warmup-poly's grid cells, directly")
    for candidate in CANDIDATES:
        hold, watch, progress = candidate
        label = f"hold {hold}, {'watched' if watch else 'not watched'}, progress {progress}"
        print(f"  {label:52s} {direct(candidate)}")
elif __name__ == "__main__":
    for candidate in CANDIDATES:
        hold, watch, progress = candidate
        label = f"hold {hold}, {'watched' if watch else 'not watched'}, progress {progress}"
        print(f"{label}{'  <- round 11 (frozen 2334f9b), kept' if candidate == ROUND11 else ''}")
        print(f"  directly, no-warmup grid cells   {direct(candidate)}")

        def outcome(recipe, batch, lr, candidate=candidate):
            if recipe in COLD:
                return judge(recorded(recipe, batch, lr), batch, *candidate)[0]
            return OLD_OUTCOME(recipe, batch, lr)

        r11.outcome = outcome
        r11.PROBES = {n: probe_for(n, p, hold) for n, p in PROBES.items()}
        search = r11.VARIANTS["x4 up, credit 4x (> 10 epochs)  <- taken"]
        for kind, rounds, name in SETS:
            print(f"  {name:32s} {r11.score(*search, kind, rounds)}")

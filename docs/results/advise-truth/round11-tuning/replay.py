"""Round 11's tuning: replay bracket searches on recorded trial outcomes, on rounds 1-10's cells.

    python docs/results/advise-truth/round11-tuning/replay.py   # > score.txt
    python docs/results/advise-truth/round11-tuning/replay.py --posthoc   # > posthoc.txt

--posthoc replays the same searches on round 11, the held-out round, after its probes ran at
2334f9b (its probes and 4 trials fill.py ran afterwards were added to probes.json and
trials.json then): it tunes nothing, and says what the old search would have scored there.

A held-out trial at batch B always starts from the same base state and sees the same batches
(advise.TRIAL_STREAM), and its ramp and hold do not depend on the run's length, so its outcome is a
function of (recipe, B, peak): trials.json holds every such outcome recorded at the rules frozen in
94487e9 (c1e50bb's trials re-judged by its input-share gate), from the committed probes, round 9's
tuning probes and the trials fill.py ran in session 11 where a replayed search needed a peak never
tried. probes.json holds each scored probe's trial budget (its budget less its fixed pieces), the
images of one trial per B and whether the base state was learning: rounds 1-5 at 3 trials per
batch (round 9's tuning probes), rounds 6-10 at 3 trials and at the default budget (the committed
held-out probes). The replay gives every batch its first trial, then one more per batch per round,
smallest batch first, while the trial budget holds it -- as advise.trial_rounds does. A real probe
at the new rules reproduces the replayed brackets (n4k-bn-warmup short and long at 3 trials,
n4k-no-warmup-m08 short at the default: the same trials and brackets).
"""
import json
import math
import sys
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))
sys.path.insert(0, str(HERE.parents[3] / "scripts"))
import advise_truth as T  # noqa: E402

from batchscale.analysis.advise_rules import verdict  # noqa: E402

CELLS = json.loads((HERE.parent / "outcomes.json").read_text())["cells"]
TRIALS = {}
for key, entry in json.loads((HERE / "trials.json").read_text()).items():
    recipe, batch, lr = key.split()
    TRIALS.setdefault((recipe, int(batch)), []).append((float(lr), entry["failed"]))
PROBES = json.loads((HERE / "probes.json").read_text())
EPS = 1e-9


class Bracket:
    def __init__(self, peak):
        self.peak, self.low, self.high, self.n = peak, None, None, 0

    def record(self, lr, failed):
        self.n += 1
        if failed:
            self.high = lr if self.high is None else min(self.high, lr)
        else:
            self.low = lr if self.low is None else max(self.low, lr)


def search(b, up=2.0, up_limit=8.0, down_limit=16.0):
    """The next peak: `up` × from a pass (to up_limit × the peak), ×2 down from a failure (to
    the peak / down_limit), then geometric means down to √2; None when done. up=2 is the search
    frozen in 94487e9 (and c1e50bb)."""
    if b.n == 0:
        return b.peak
    if b.high is None:
        limit = b.peak * up_limit
        return None if b.low >= limit * (1 - EPS) else min(b.low * up, limit)
    if b.low is None:
        nxt = b.high / 2
        return nxt if nxt >= b.peak / down_limit * (1 - EPS) else None
    return math.sqrt(b.low * b.high) if b.high / b.low > math.sqrt(2) * (1 + EPS) else None


def outcome(recipe, batch, lr):
    for tried, failed in TRIALS.get((recipe, batch), []):
        if math.isclose(tried, lr, rel_tol=1e-6):
            return failed
    raise KeyError(f"no recorded trial for {recipe} B={batch} peak {lr:.6g}: run fill.py")


def replay(probe, recipe, strategy):
    brackets = {r["batch"]: Bracket(r["peak_lr"]) for r in probe["rows"]}
    if not probe["base_learning"]:
        return brackets
    cost = {r["batch"]: r["trial_images"] for r in probe["rows"]}
    fits = {r["batch"]: r["fits"] for r in probe["rows"]}
    left, progress = probe["trial_budget"], True
    while progress:
        progress = False
        for batch, bracket in brackets.items():
            lr = strategy(bracket)
            if lr is None or not fits[batch] or cost[batch] > left:
                continue
            left -= cost[batch]
            bracket.record(lr, outcome(recipe, batch, lr))
            progress = True
    return brackets


def score(strategy, credit, kind, rounds):
    """right / cells, at risk, false stable, brackets within 2x; `credit`: (factor, epochs) --
    a pass counts as stable up to factor x the peak for a recipe of more than `epochs` epochs."""
    n = right = risk = false_stable = agree = judged = 0
    for name, probe in PROBES.items():
        k, rest = name.split("/")
        recipe, length = rest.rsplit("-", 1)
        if k != kind or probe["round"] not in rounds:
            continue
        for batch, b in replay(probe, recipe, strategy).items():
            low = b.low
            if credit and low is not None and probe["epochs"] > credit[1]:
                low = min(low, credit[0] * b.peak)
            cells = [c for c in CELLS if c["recipe"] == recipe and c["length"] == length
                     and c["batch"] == batch]
            ok = T.bracket_agrees(low, b.high, *T.measured_boundary(cells))
            if ok is not None:
                judged += 1
                agree += bool(ok)
            for c in cells:
                state = verdict(c["peak_lr"], low, b.high)[0]
                n += 1
                right += {"stable": "trains", "diverges": "diverges"}.get(state) == c["outcome"]
                risk += state == "at risk"
                false_stable += state == "stable" and c["outcome"] == "diverges"
    return f"{right}/{n} = {right / n:.0%} right, {risk} at risk, {false_stable} false stable, " \
           f"brackets {agree}/{judged}"


VARIANTS = {
    "94487e9 (x2 up)": (partial(search), None),
    "x4 up": (partial(search, up=4.0), None),
    "x4 up, credit 4x (> 10 epochs)  <- taken": (partial(search, up=4.0), (4.0, 10)),
    "x4 up, credit 4x (every length)": (partial(search, up=4.0), (4.0, 0)),
    "x4 up, credit 2x (> 10 epochs)": (partial(search, up=4.0), (2.0, 10)),
    "x2 up, credit 4x (> 10 epochs)": (partial(search), (4.0, 10)),
}
if __name__ == "__main__":
    SETS = (("3", range(1, 6), "3 trials per batch, rounds 1-5"),
            ("3", range(6, 11), "3 trials per batch, rounds 6-10"),
            ("default", range(6, 11), "the default budget, rounds 6-10"))
    if sys.argv[1:] == ["--posthoc"]:  # > posthoc.txt: round 11, held out, after its probes
        SETS = (("3", (11,), "POST HOC, round 11 (held out; seen): 3 trials per batch"),
                ("default", (11,), "POST HOC, round 11 (held out; seen): the default budget"))
    for kind, rounds, label in SETS:
        print(label)
        for name, (strategy, credit) in VARIANTS.items():
            print(f"  {name:42s} {score(strategy, credit, kind, rounds)}")

"""A pilot for later rules, on seen rounds only (session 18): trials from the initialization.

A recipe without warmup has no warmed-up base state: its trials are its own first steps at B,
at the peak from the first step. Where such a trial said *diverges*, the runs at that very peak
trained in 28 of 36 cells (rounds 6-20, 3 trials; round21-judge/score.txt), and the failing
trials were short: at B = 64 and 256 they held 3-6 steps before an exploded window stopped them
(a quarter epoch is 4 steps at B = 256). A run at a high rate often blows up in its first steps
and recovers. The candidate (advise_rules.INIT_HOLD): such a trial holds its peak at least
INIT_HOLD steps and is not stopped at an exploded window before then; recipes with warmup are
untouched (their trials are the same).

For the no-warmup recipes of rounds 12-22 (seen: their outcomes are committed; probed at
round 11's rules, which are the current rules for SGD), `probe` runs `batchscale advise` as the
truth set does at INIT_HOLD = 16: the 4-epoch probe at the default budget and with 3 trials per
batch, the 30-epoch probe at the default budget (the 30-epoch 3-trial probe runs the same trials
as the 4-epoch one: the same base, holds and budget). `score` scores them against outcomes.json
beside the committed probes of the same recipes.

Result (session 18, score.txt): not taken, stopped after 4 of the 10 recipes. The longer trials
passed at 8 peaks where a 4-epoch run at that peak had a seed collapse (the committed trials: at
none); 3 trials per batch 51/84 cells right with 8 false *stable* against 67/84 with 0. (Said
plainly: these 3-trial probes were given the budget sized at INIT_HOLD 0, which holds fewer of
the longer trials; `probe` now sizes it at the candidate. The trial-level table does not depend
on the budget.) A run from the initialization that blows up in its first steps is mostly a run
that collapses later; a few more steps of a trial do not tell which.

    python docs/results/advise-truth/round24-init/pilot.py probe 16
    python docs/results/advise-truth/round24-init/pilot.py probe 0 n4k-no-warmup-poly
    python docs/results/advise-truth/round24-init/pilot.py score \
        > docs/results/advise-truth/round24-init/score.txt
"""

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT)]

import advise_truth as at  # noqa: E402

from batchscale.analysis import advise_record  # noqa: E402
from batchscale.analysis import advise_rules as R  # noqa: E402

HERE = Path(__file__).resolve().parent
ROUNDS = range(12, 23)  # round 11 ran at an earlier default budget
# (length probed, budget, the lengths it scores)
PROBES = (("short", "-3trials", ("short", "long")), ("short", "", ("short",)),
          ("long", "", ("long",)))


def recipes() -> list[tuple[int, str]]:
    return [(r, name) for r in ROUNDS for name in at.halves(r)["held_out"]
            if advise_record.kind_of(at.RECIPES[name]) == "sgd without warmup"]


def out_dir(hold: int, recipe: str, length: str, variant: str) -> Path:
    return HERE / "probes" / f"hold{hold}" / recipe / f"{length}{variant}"


def probe(holds: list[int], only: list[str]) -> None:
    for hold in holds:
        for _, recipe in recipes():
            if only and recipe not in only:
                continue
            for length, variant, _ in PROBES:
                out = out_dir(hold, recipe, length, variant)
                if (out / "advice.json").exists():
                    continue
                run_probe("INIT_HOLD", hold, recipe, length, variant, out)


def run_probe(rule: str, value, recipe: str, length: str, variant: str, out: Path) -> None:
    """`batchscale advise` as the truth set runs it, in a subprocess whose advise_rules.<rule>
    is `value` (the 3-trial budget sized from the candidate's plan too)."""
    setattr(R, rule, value)
    args = at.advise_args(recipe, length, out, bool(variant))
    code = ("import sys; from batchscale.analysis import advise_rules as R; "
            f"R.{rule} = {value!r}; from batchscale.cli import main; sys.exit(main(sys.argv[1:]))")
    started = time.time()
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True,
                          text=True)
    print(f"{rule} {value} {recipe} {length}{variant}: exit {done.returncode} in "
          f"{time.time() - started:.0f} s", flush=True)
    if done.returncode:
        print(done.stderr[-2000:], flush=True)


def committed(round_: int, recipe: str, length: str, variant: str) -> dict:
    return json.loads((at.advise_dir("held_out", recipe, length, round_, variant)
                       / "advice.json").read_text())


def scored(advice: dict, cells: list[dict], recipe: str, length: str, epochs: int) -> list:
    """(verdict, outcome) per truth cell, the stable end at `epochs`' credit limit."""
    got = []
    config = {**advice["config"], "epochs": epochs}
    for row, mine in at.probe_cells(advice, cells, recipe, length):
        row = {**row, "bracket_low": at.stable_end(row, config, ())}
        got += [(at.cell_verdict(c, row), c["outcome"]) for c in mine]
    return got


def tally(pairs: list) -> str:
    right = sum({"stable": "trains", "diverges": "diverges"}.get(v) == o for v, o in pairs)
    false_stable = sum(v == "stable" and o == "diverges" for v, o in pairs)
    risk = sum(v == "at risk" for v, _ in pairs)
    return f"{right}/{len(pairs)} right, {false_stable} false stable, {risk} at risk"


def score() -> None:
    cells = json.loads((at.OUT / "outcomes.json").read_text())["cells"]
    print(f"no-warmup recipes of rounds {ROUNDS[0]}-{ROUNDS[-1]}: "
          f"{', '.join(r for _, r in recipes())}")
    for hold in sorted(int(p.name[4:]) for p in (HERE / "probes").iterdir()):
        for budget, variant in (("3 trials per batch", "-3trials"), ("default budget", "")):
            pairs = {"committed": [], f"INIT_HOLD {hold}": []}
            images = dict.fromkeys(pairs, 0)
            same, probed = True, []
            for round_, recipe in recipes():
                for length, v, lengths in PROBES:
                    path = out_dir(hold, recipe, length, v) / "advice.json"
                    if v != variant or not path.exists():
                        continue
                    probed.append(recipe)
                    base = committed(round_, recipe, length, v)
                    mine = json.loads(path.read_text())
                    same &= ([r["trials"] for r in mine["rows"]]
                             == [r["trials"] for r in base["rows"]])
                    for name, advice in zip(pairs, (base, mine), strict=True):
                        images[name] += advice["probe_images"]
                        for scored_length in lengths:
                            pairs[name] += scored(advice, cells, recipe, scored_length,
                                                  at.epochs_of(recipe, scored_length))
            if not probed:
                continue
            print(f"\nINIT_HOLD {hold}, {budget} ({len(set(probed))} recipes, "
                  f"{len(probed)} probes):")
            for name, got in pairs.items():
                print(f"  {name}: {tally(got)}; probe images {images[name]:,}")
            print(f"  the same trials as committed: {same}")
        print(f"\nINIT_HOLD {hold}: each distinct trial (B, peak) of these probes against the "
              f"4-epoch runs at that peak (trial passed/failed -> runs trained/a seed diverged)")
        for name in ("committed", f"INIT_HOLD {hold}"):
            table = {}
            for round_, recipe in recipes():
                for length, v, _ in PROBES:
                    path = out_dir(hold, recipe, length, v) / "advice.json"
                    if not path.exists():
                        continue
                    advice = (committed(round_, recipe, length, v) if name == "committed"
                              else json.loads(path.read_text()))
                    for row in advice["rows"]:
                        for t in row["trials"]:
                            runs = [c["outcome"] for c in cells if c["recipe"] == recipe
                                    and c["length"] == "short" and c["batch"] == row["batch"]
                                    and abs(c["peak_lr"] / t["lr"] - 1) < 1e-6]
                            if runs:
                                table[(recipe, row["batch"], round(t["lr"], 6))] = (
                                    "failed" if t["failed"] else "passed", runs[0])
            counts = {k: sum(x == k for x in table.values())
                      for k in {x for x in table.values()}}
            print(f"  {name}: " + ", ".join(f"{a} -> {b}: {n}"
                                           for (a, b), n in sorted(counts.items())))


if __name__ == "__main__":
    {"probe": lambda: probe([int(h) for h in sys.argv[2:] if h.isdigit()],
                            [r for r in sys.argv[2:] if not r.isdigit()]),
     "score": score}[sys.argv[1]]()

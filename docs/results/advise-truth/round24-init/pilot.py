"""A pilot for later rules, on seen rounds only (session 18): trials from the initialization.

A recipe without warmup has no warmed-up base state: its trials are its own first steps at B,
at the peak from the first step. Where such a trial said *diverges*, the runs at that very peak
trained in 28 of 36 cells (rounds 6-20, 3 trials; round21-judge/score.txt), and the failing
trials were short: at B = 64 and 256 they held 3-6 steps before an exploded window stopped them
(a quarter epoch is 4 steps at B = 256). A run at a high rate often blows up in its first steps
and recovers. The candidate (advise_rules.INIT_HOLD): such a trial holds its peak at least
INIT_HOLD steps and is not stopped at an exploded window before then; recipes with warmup are
untouched (their trials are the same).

For every no-warmup recipe of rounds 11-22 (seen: their outcomes are committed; probed at round
11's rules, which are the current rules for SGD), `probe` runs `batchscale advise` as the truth
set does at INIT_HOLD = 0 (must reproduce the committed trials), 16 and 32: the 4-epoch probe at
the default budget and with 3 trials per batch, the 30-epoch probe at the default budget (its
3-trial probe runs the same trials as the 4-epoch one: the same base, holds and budget). `score`
scores them against outcomes.json.

    python docs/results/advise-truth/round24-init/pilot.py probe 0 16 32
    python docs/results/advise-truth/round24-init/pilot.py score > docs/results/advise-truth/round24-init/score.txt
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

HERE = Path(__file__).resolve().parent
ROUNDS = range(11, 23)
# (length probed, budget, the lengths it scores)
PROBES = (("short", "-3trials", ("short", "long")), ("short", "", ("short",)),
          ("long", "", ("long",)))


def recipes() -> list[tuple[int, str]]:
    return [(r, name) for r in ROUNDS for name in at.halves(r)["held_out"]
            if advise_record.kind_of(at.RECIPES[name]) == "sgd without warmup"]


def out_dir(hold: int, recipe: str, length: str, variant: str) -> Path:
    return HERE / "probes" / f"hold{hold}" / recipe / f"{length}{variant}"


def probe(holds: list[int]) -> None:
    for hold in holds:
        for _, recipe in recipes():
            for length, variant, _ in PROBES:
                out = out_dir(hold, recipe, length, variant)
                if (out / "advice.json").exists():
                    continue
                args = at.advise_args(recipe, length, out, bool(variant))
                code = ("import sys; from batchscale.analysis import advise_rules as R; "
                        f"R.INIT_HOLD = {hold}; from batchscale.cli import main; "
                        "sys.exit(main(sys.argv[1:]))")
                started = time.time()
                done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT,
                                      capture_output=True, text=True)
                print(f"hold {hold} {recipe} {length}{variant}: exit {done.returncode} in "
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
    holds = sorted(int(p.name[4:]) for p in (HERE / "probes").iterdir())
    print(f"no-warmup recipes of rounds {ROUNDS[0]}-{ROUNDS[-1]}: "
          f"{', '.join(r for _, r in recipes())}")
    for budget, variant in (("3 trials per batch", "-3trials"), ("default budget", "")):
        print(f"\n{budget}:")
        rows = {"committed": []} | {f"INIT_HOLD {h}": [] for h in holds}
        images = dict.fromkeys(rows, 0)
        same = True
        for round_, recipe in recipes():
            for length, v, scores in PROBES:
                if v != variant:
                    continue
                base = committed(round_, recipe, length, v)
                for name in rows:
                    if name == "committed":
                        advice = base
                    else:
                        path = out_dir(int(name.split()[-1]), recipe, length, v) / "advice.json"
                        if not path.exists():
                            continue
                        advice = json.loads(path.read_text())
                        if name == "INIT_HOLD 0":
                            same &= ([r["trials"] for r in advice["rows"]]
                                     == [r["trials"] for r in base["rows"]])
                    images[name] += advice["probe_images"]
                    for scored_length in scores:
                        epochs = at.epochs_of(recipe, scored_length)
                        rows[name] += scored(advice, cells, recipe, scored_length, epochs)
        for name, pairs in rows.items():
            print(f"  {name}: {tally(pairs)}; probe images {images[name]:,}")
        if "INIT_HOLD 0" in rows:
            print(f"  INIT_HOLD 0 reproduces the committed trials: {same}")


if __name__ == "__main__":
    {"probe": lambda: probe([int(h) for h in sys.argv[2:]]), "score": score}[sys.argv[1]]()

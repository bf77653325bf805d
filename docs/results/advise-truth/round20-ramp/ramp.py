"""A pilot for a later round's rules, on seen recipes only: does a trial whose warmup ramp is
longer (RAMP_STEPS 64 instead of 8: the recipe's whole warmup at B = 256, 64 of its steps at
B = 16 and 64) stop the under-claims of warmup recipes (round 18's n4k-m095-warmup2-group4-wd1e3:
trials failed at 2x where runs trained to 8x), and at what price in false *stable* and images?
Six seen recipes (rounds 9-18: three with the most under-claims, three with false *stable*),
both lengths, 3 trials per batch, probed with the candidate ramp; scored against outcomes.json
beside the committed held-out probes at round 11's rules (RAMP_STEPS 8):

    python docs/results/advise-truth/round20-ramp/ramp.py probe   # 12 probes, ~20 min
    python docs/results/advise-truth/round20-ramp/ramp.py score > .../round20-ramp/score.txt
"""

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[3]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT)]

import advise_truth as at  # noqa: E402
from batchscale.analysis import advise_rules  # noqa: E402

RAMP = 64
PILOT = {18: "n4k-m095-warmup2-group4-wd1e3", 12: "n4k-warmup2-wd1e3-const",
         13: "n4k-group2-warmup2-poly", 16: "n4k-nesterov-group8-wd1e4",
         9: "n4k-ls-group16-poly", 15: "n4k-group4-wd1e3-poly"}
PATCH = ("import sys, runpy; import batchscale.analysis.advise_rules as r; "
         f"r.RAMP_STEPS = {RAMP}; sys.argv = ['batchscale', *sys.argv[1:]]; "
         "runpy.run_module('batchscale', run_name='__main__')")


def out_dir(recipe: str, length: str) -> Path:
    return HERE / f"ramp{RAMP}" / f"{recipe}-{length}"


def probe() -> None:
    advise_rules.RAMP_STEPS = RAMP  # the 3-trial budget counts the longer ramp too
    for recipe in PILOT.values():
        for length in at.LENGTHS:
            if (out_dir(recipe, length) / "advice.json").exists():
                continue
            command = [sys.executable, "-c", PATCH,
                       *at.advise_args(recipe, length, out_dir(recipe, length), True)]
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
            print(recipe, length, "exit", done.returncode, done.stderr[-300:], flush=True)
            for extra in out_dir(recipe, length).glob("*.png"):
                extra.unlink()  # the pilot keeps its numbers, not its plots


def score() -> None:
    cells = json.loads((at.OUT / "outcomes.json").read_text())["cells"]
    print(f"3 trials per batch; RAMP_STEPS 8 (the committed held-out probe) vs {RAMP}")
    total = {8: [0, 0, 0, 0], RAMP: [0, 0, 0, 0]}
    for round_, recipe in sorted(PILOT.items()):
        for length in at.LENGTHS:
            paths = {8: at.advise_dir("held_out", recipe, length, round_, "-3trials"),
                     RAMP: out_dir(recipe, length)}
            line = []
            for ramp, path in paths.items():
                advice = json.loads((path / "advice.json").read_text())
                n = ok = fs = 0
                for row, mine in at.probe_cells(advice, cells, recipe, length):
                    for cell in mine:
                        v = at.cell_verdict(cell, row)
                        n += 1
                        ok += {"stable": "trains", "diverges": "diverges"}.get(v) == cell["outcome"]
                        fs += v == "stable" and cell["outcome"] == "diverges"
                brackets = ", ".join(f"B={r['batch']} [{advise_rules.fmt(r['bracket_low'])}, "
                                     f"{advise_rules.fmt(r['bracket_high'])})"
                                     for r in advice["rows"])
                for i, v in enumerate((n, ok, fs, advice["probe_images"])):
                    total[ramp][i] += v
                line.append(f"ramp {ramp}: {ok}/{n} right, {fs} false stable, "
                            f"{advice['probe_images']} images ({brackets})")
            print(f"round {round_} {recipe} {length}:\n  " + "\n  ".join(line))
    for ramp, (n, ok, fs, images) in total.items():
        print(f"total, ramp {ramp}: {ok}/{n} right, {fs} false stable, {images} images")


if __name__ == "__main__":
    {"probe": probe, "score": score}[sys.argv[1]]()

"""A pilot for later rules, on seen rounds only (session 18): a cheaper base state.

The probe cost misses its target (one run of a recipe under 10 epochs) exactly where a recipe
warms up for most of its run: round 22's `n4k-warmup3-group8-const` and round 23's
`n4k-rmsprop-warmup3-wd1e4` warm up for 3 of their 4 epochs, the base state (the base batch
trained through the warmup) alone is 75% of a run, and every batch's first trial then needs
126% of one. The candidate (advise_rules.BASE_SHARE = 0.5): the base state costs at most half a
run; such a recipe is warmed up only so far (2 of its 3 warmup epochs), and its trials ramp from
there as before. Other recipes are untouched (a 30-epoch run's warmup is a tenth of it).

For the four seen 4-epoch recipes it touches (rounds 15, 17, 22, 23; their 4-epoch probes ran at
rules that are the current ones for a recipe under 10 epochs), `probe` runs `batchscale advise`
as the truth set does at BASE_SHARE = 0.5, at the default budget and with 3 trials per batch;
`score` scores them against outcomes.json beside the committed probes, with their cost.

    python docs/results/advise-truth/round24-base/pilot.py probe
    python docs/results/advise-truth/round24-base/pilot.py score \\
        > docs/results/advise-truth/round24-base/score.txt
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT), str(HERE.parent / "round24-init")]

import advise_truth as at  # noqa: E402
import pilot as init_pilot  # noqa: E402

SHARE = 0.5
RECIPES = ((15, "n4k-nesterov-warmup3"), (17, "n4k-rmsprop-a09-warmup3"),
           (22, "n4k-warmup3-group8-const"), (23, "n4k-rmsprop-warmup3-wd1e4"))
VARIANTS = ("", "-3trials")


def out_dir(recipe: str, variant: str) -> Path:
    return HERE / "probes" / f"share{SHARE:g}" / f"{recipe}-short{variant}"


def probe() -> None:
    for _, recipe in RECIPES:
        for variant in VARIANTS:
            out = out_dir(recipe, variant)
            if (out / "advice.json").exists():
                continue
            init_pilot.run_probe("BASE_SHARE", SHARE, recipe, "short", variant, out)


def score() -> None:
    cells = json.loads((at.OUT / "outcomes.json").read_text())["cells"]
    print(f"4-epoch recipes warmed up for 3 of 4 epochs: {', '.join(r for _, r in RECIPES)}")
    for budget, variant in (("default budget", ""), ("3 trials per batch", "-3trials")):
        print(f"\n{budget}:")
        for name in ("committed", f"BASE_SHARE {SHARE:g}"):
            pairs, costs = [], []
            for round_, recipe in RECIPES:
                path = out_dir(recipe, variant) / "advice.json"
                if not path.exists():
                    continue
                advice = (init_pilot.committed(round_, recipe, "short", variant)
                          if name == "committed" else json.loads(path.read_text()))
                pairs += init_pilot.scored(advice, cells, recipe, "short", 4)
                trials = "/".join(str(len(r["trials"])) for r in advice["rows"])
                costs.append(f"{advice['probe_images'] / advice['full_run_images']:.0%} "
                             f"(trials {trials})")
            print(f"  {name}: {init_pilot.tally(pairs)}; probe cost {', '.join(costs)}")


if __name__ == "__main__":
    {"probe": probe, "score": score}[sys.argv[1]]()

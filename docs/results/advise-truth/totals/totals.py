"""The held-out totals that README.md, docs/advise.md and docs/results/advise-truth/README.md
quote, summed from the committed reports of rounds 6 to the newest reported round
(report-roundN.md at the default budget, report-roundN-3trials.md at 3 trials per batch), and the
share of verdicts right per round at round 25's rules, as a mean with its 95% t-interval over the
rounds (a round is the unit here: its cells share recipes, so they are not independent draws):

    python docs/results/advise-truth/totals/totals.py > docs/results/advise-truth/totals/totals.txt
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT)]

import advise_truth as at  # noqa: E402

from batchscale.results.collect import mean_interval  # noqa: E402

FIRST = 6
VARIANTS = {"default budget": "", "3 trials per batch": "-3trials"}
PATTERNS = {  # the rows of a report's targets table
    "right": r"\| ≥ 90% \| (\d+)/(\d+) = \d+% \((\d+) at risk\)",
    "false_stable": r"'stable' where a seed collapsed \| 0 \| (\d+) \|",
    "own": r"\| – \| (\d+)/(\d+) right",
    "brackets": r"\| ≥ 80% of \(recipe, B\) \| (\d+)/(\d+)",
}


def parse(text: str) -> dict:
    """One report's counts: right, n, at_risk, false_stable, own, own_n, brackets, brackets_n."""
    found = {key: re.search(pattern, text) for key, pattern in PATTERNS.items()}
    missing = [key for key, match in found.items() if match is None]
    if missing:
        raise ValueError(f"a report lacks its {', '.join(missing)} row")
    right, n, at_risk = (int(g) for g in found["right"].groups())
    own, own_n = (int(g) for g in found["own"].groups())
    brackets, brackets_n = (int(g) for g in found["brackets"].groups())
    return {"right": right, "n": n, "at_risk": at_risk,
            "false_stable": int(found["false_stable"][1]), "own": own, "own_n": own_n,
            "brackets": brackets, "brackets_n": brackets_n}


def reported_rounds() -> list[int]:
    """Rounds FIRST.. with both reports committed, stopping at the first round without them."""
    rounds = []
    for round_ in range(FIRST, max(at.ROUND_RECIPES) + 1):
        if not all((at.OUT / f"report-round{round_}{v}.md").exists() for v in VARIANTS.values()):
            break
        rounds.append(round_)
    return rounds


def totals() -> dict:
    """{variant: {"rounds": {round: counts}, "sum": counts}} over the reported rounds."""
    out = {}
    for name, suffix in VARIANTS.items():
        per_round = {r: parse((at.OUT / f"report-round{r}{suffix}.md").read_text())
                     for r in reported_rounds()}
        keys = next(iter(per_round.values())).keys()
        out[name] = {"rounds": per_round,
                     "sum": {k: sum(c[k] for c in per_round.values()) for k in keys}}
    return out


def rules_rounds(rules_round: int, rounds: list[int]) -> list[int]:
    """The reported rounds probed at `rules_round`'s frozen rules (itself and FROZEN_AT's)."""
    return [r for r in rounds if r == rules_round or at.FROZEN_AT.get(r) == rules_round]


def main() -> None:
    data = totals()
    rounds = reported_rounds()
    first, last = rounds[0], rounds[-1]
    for name, entry in data.items():
        s = entry["sum"]
        print(f"rounds {first}-{last}, {name}: {s['right']}/{s['n']} = {s['right'] / s['n']:.0%} "
              f"right ({s['at_risk']} at risk), {s['false_stable']} false stable, brackets "
              f"within 2x {s['brackets']}/{s['brackets_n']}, the recipe's own peak "
              f"{s['own']}/{s['own_n']} = {s['own'] / s['own_n']:.0%}")
    print()
    print("| round | default budget | 3 trials per batch |")
    print("|---:|---|---|")
    for r in rounds:
        cells = [data[name]["rounds"][r] for name in VARIANTS]
        print(f"| {r} | " + " | ".join(f"{c['right']}/{c['n']} = {c['right'] / c['n']:.0%}"
                                      for c in cells) + " |")
    print()
    mine = rules_rounds(25, rounds)
    for name, entry in data.items():
        shares = [entry["rounds"][r]["right"] / entry["rounds"][r]["n"] for r in mine]
        mean, half = mean_interval(shares)
        print(f"round 25's rules on rounds {mine[0]}-{mine[-1]} ({len(mine)} held-out rounds), "
              f"{name}: share right per round {mean:.1%} ± {half:.1%} (mean, 95% t-interval "
              f"over rounds); target 90% {'above' if mean + half < 0.9 else 'not above'} the "
              f"interval")


if __name__ == "__main__":
    main()

"""Round 4: score the dead-network test relative to the trial's start share on every tuning
recipe (rounds 1-3) from the per-grid-peak traces in ../round3-tuning/dead-s10, dead-s11, at the
grid's resolution as ../round3-tuning/score.py does.

    python docs/results/advise-truth/round4-tuning/score.py > docs/results/advise-truth/round4-tuning/score.txt

A trial passes unless its fixed-sample loss (mean over the hold's last half, quarter-epoch hold)
is more than `slack` of the way from its start back to ln 10, or its share is below `sig` and
below `rel` x the start's share (rel = inf: the round-3 rule)."""
import json
import math
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRACES = HERE.parent / "round3-tuning"
o = json.load(open(HERE.parent / "outcomes.json"))
TUNING = json.load(open(HERE.parent / "split4.json"))["tuning"]
LN = math.log(10)


def features(row, frac):
    hold, ramp = row["hold"], row["ramp"]
    h = max(1, round(hold * frac))
    pts = [t for t in row["trace"] if ramp < t[0] <= ramp + h]
    if not pts:
        pts = [t for t in row["trace"] if t[0] <= ramp + h][-1:]
    last = pts[len(pts) // 2:] or pts[-1:]
    return sum(t[1] for t in last) / len(last), sum(t[2] for t in last) / len(last)


def passes(row, start, start_share, slack, sig, rel, frac=0.25):
    loss, share = features(row, frac)
    if not math.isfinite(loss):
        return False
    if loss >= start + slack * max(LN - start, 0.0) and loss >= start:
        return False
    return not (share < sig and share < rel * start_share)


def score(stream, slack, sig, rel, show=False):
    n = right = false_stable = 0
    for recipe in TUNING:
        rec = json.load(open(TRACES / f"dead-s{stream}" / f"{recipe}.json"))
        start, start_share = rec["start"][0], rec["start"][1]
        for batch in (8, 32, 128):
            rows = sorted([x for x in rec["rows"] if x["batch"] == batch], key=lambda x: x["k"])
            ok = {x["k"]: passes(x, start, start_share, slack, sig, rel) for x in rows}
            peaks = {x["k"]: x["peak"] for x in rows}
            if ok[3]:
                k = 4
                while k <= 5 and ok[k]:
                    k += 1
                low, high = peaks[k - 1], peaks.get(k)
            else:
                k = 2
                while k >= 1 and not ok[k]:
                    k -= 1
                low, high = peaks.get(k), peaks[k + 1]
            cells = [c for c in o["cells"] if c["recipe"] == recipe and c["length"] == "short"
                     and c["batch"] == batch and c["lr"] in [peaks[j] * 8 / batch for j in peaks]]
            for c in cells:
                stable = low is not None and c["peak_lr"] <= low * (1 + 1e-9)
                right += (c["outcome"] == "trains") == stable
                false_stable += stable and c["outcome"] == "diverges"
                n += 1
            if show:
                print(f"  {recipe:16s} B={batch:4d} {''.join('o' if ok[j] else 'x' for j in sorted(ok))}"
                      f" [{low}, {high})")
    return right, n, false_stable


if __name__ == "__main__":
    results = []
    for slack in (0.5, 0.75, 1.0):
        for sig in (0.0, 0.2, 0.3, 0.4):
            for rel in (0.25, 0.5, 0.75, math.inf):
                a, b = score(10, slack, sig, rel), score(11, slack, sig, rel)
                results.append((a[0] + b[0], -(a[2] + b[2]), slack, sig, rel, a, b))
    results.sort(reverse=True)
    for r in results:
        print(f"slack {r[2]} share<{r[3]} rel {r[4]}: stream 10 {r[5][0]}/{r[5][1]} "
              f"false stable {r[5][2]}; stream 11 {r[6][0]}/{r[6][1]} false stable {r[6][2]}")

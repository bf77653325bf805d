"""Score trial rules on the tuning recipes' short cells at the grid's resolution (a pass/fail
per grid peak from the diagnostic traces, the bracket scanned from the recipe's peak k = 3).
    python docs/results/advise-truth/round3-tuning/score.py     # single stream 10: the grid
    python docs/results/advise-truth/round3-tuning/score_streams.py  # streams 10, 11, both
"""
import json, math, sys
from pathlib import Path
HERE = Path(__file__).resolve().parent
o = json.load(open(HERE.parent / "outcomes.json"))
TUNING = json.load(open(HERE.parent / "split3.json"))["tuning"]
LN = math.log(10)
data = {r: json.load(open(HERE / "dead-s10" / f"{r}.json")) for r in TUNING}

def features(row, start, frac):
    hold = row["hold"]; ramp = row["ramp"]
    h = max(1, round(hold * frac))
    pts = [t for t in row["trace"] if ramp < t[0] <= ramp + h]
    if not pts: pts = [t for t in row["trace"] if t[0] <= ramp + h][-1:]
    last = pts[len(pts) // 2:] or pts[-1:]
    L = sum(t[1] for t in last) / len(last)
    S = sum(t[2] for t in last) / len(last)
    return L, S

def passes(row, start, rule, frac):
    L, S = features(row, start, frac)
    if not math.isfinite(L): return False
    s, sig = rule
    if L >= start + s * max(LN - start, 0.0) and L >= start: return False
    if S < sig: return False
    return True

def score(rule, frac, safety=1.0, show=False):
    n = right = fs = risk = 0
    for r, rec in data.items():
        start = rec["start"][0]
        for B in (8, 32, 128):
            rows = sorted([x for x in rec["rows"] if x["batch"] == B], key=lambda x: x["k"])
            p = {x["k"]: passes(x, start, rule, frac) for x in rows}
            peaks = {x["k"]: x["peak"] for x in rows}
            # bisection on the grid from k=3
            low = high = None; k = 3
            if p[3]:
                low = peaks[3]; k = 4
                while k <= 5 and p[k]: low = peaks[k]; k += 1
                high = peaks[k] if k <= 5 else None
            else:
                high = peaks[3]; k = 2
                while k >= 1 and not p[k]: high = peaks[k]; k -= 1
                low = peaks[k] if k >= 1 else None
            cells = [c for c in o["cells"] if c["recipe"] == r and c["length"] == "short" and c["batch"] == B and c["lr"] >= 0.02 * (0.01 if "rms" in r else 1)]
            for c in cells:
                pk = c["peak_lr"]
                v = "stable" if low is not None and pk <= low / safety * (1 + 1e-9) else ("diverges" if high is not None and pk >= high * (1 - 1e-9) else "at risk")
                ok = {"stable": "trains", "diverges": "diverges"}.get(v) == c["outcome"]
                n += 1; right += ok; fs += (v == "stable" and c["outcome"] == "diverges"); risk += v == "at risk"
            if show:
                tr = [c["peak_lr"] for c in cells if c["outcome"] == "trains"]; dv = [c["peak_lr"] for c in cells if c["outcome"] == "diverges"]
                print(f"{r:15s} B={B:4d} pass {''.join('o' if p[k] else 'x' for k in sorted(p))} bracket [{low}, {high}) truth ({max(tr) if tr else None}, {min(dv) if dv else None}]")
    return right, n, fs, risk

if __name__ == "__main__":
    res = []
    for s in (0.25, 0.5, 0.75, 1.0, 9):
        for sig in (0.0, 0.2, 0.4, 0.6):
            for frac in (0.25, 0.5, 1.0):
                for safety in (1.0, 2 ** 0.5, 2.0):
                    r = score((s, sig), frac, safety)
                    res.append((r[0] / r[1], -r[2], s, sig, frac, safety, r))
    res.sort(reverse=True)
    for x in res[:25]: print(x)
    print("fewest false stable:")
    for x in sorted(res, key=lambda x: (-x[1], -x[0]))[:15]: print(x)

import json, sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import score as S
d10 = {r: json.load(open(S.HERE / "dead-s10" / f"{r}.json")) for r in S.TUNING}
d11 = {r: json.load(open(S.HERE / "dead-s11" / f"{r}.json")) for r in S.TUNING}
orig = S.passes
def run(mode, rule, frac):
    if mode == "s10": S.data = d10; S.passes = orig
    elif mode == "s11": S.data = d11; S.passes = orig
    else:
        S.data = d10
        def both(row, start, rule, frac):
            r = S._cur
            other = next(x for x in d11[r]["rows"] if x["batch"] == row["batch"] and x["k"] == row["k"])
            return orig(row, start, rule, frac) and orig(other, d11[r]["start"][0], rule, frac)
        S.passes = both
    return S.score(rule, frac)
# need the recipe inside passes: patch score loop via global
_score = S.score
def score(rule, frac, safety=1.0, show=False):
    n = right = fs = 0
    tot = [0, 0, 0, 0]
    for r in list(S.data):
        S._cur = r
        keep = S.data
        S.data = {r: keep[r]}
        a = _score(rule, frac, safety, show)
        S.data = keep
        tot = [x + y for x, y in zip(tot, a)]
    return tuple(tot)
S.score = score
res = []
for s in (0.5, 0.75, 1.0, 9):
    for sig in (0.0, 0.1, 0.2, 0.3, 0.4):
        for frac in (0.25, 0.5, 1.0):
            row = [run(m, (s, sig), frac) for m in ("s10", "s11", "both")]
            res.append((s, sig, frac, row))
for x in sorted(res, key=lambda x: -(x[3][0][0] + x[3][1][0])):
    print(x[:3], " ".join(f"{r[0]}/{r[1]} fs{r[2]}" for r in x[3]))

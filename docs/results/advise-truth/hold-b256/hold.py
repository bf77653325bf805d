"""Would a longer hold at B = 256 catch the false *stable* verdicts? (session 14, on seen rounds)

Every false *stable* of rounds 6-15 (12 with 3 trials per batch, 5 at the default) is at B = 256,
where a trial holds its peak HOLD_MIN = 4 steps (a quarter epoch is 3.9 steps). For each recipe
with such a cell, one probe builds the base state as `advise` does and runs, from it, the frozen
search's first 3 trials at B = 256 with holds of 4 (the current rule), 8 and 16 steps (a search's
path at any budget is a prefix of these). The hold-4 trials reproduce the committed probes'.

    python docs/results/advise-truth/hold-b256/hold.py docs/results/advise-truth/hold-b256/trials \
        n4k-bn-warmup n4k-group16 n4k-nesterov-poly n4k-ls-group16-poly n4k-rmsprop-const-wd1e4 \
        n4k-nesterov-m095-group2 n4k-rmsprop-ls-group8 n4k-group4-wd1e3-poly   # ~8 min, one core
    cd docs/results/advise-truth/hold-b256 && python score.py > score.txt
"""
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
import advise_truth as T  # noqa: E402
import torch  # noqa: E402

from batchscale.analysis import advise as A  # noqa: E402
from batchscale.analysis.advise_rules import Bracket  # noqa: E402
from batchscale.config import from_dict  # noqa: E402

torch.set_num_threads(1)
HOLDS = (4, 8, 16)
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
for recipe in sys.argv[2:]:
    dest = out / f"{recipe}.json"
    if dest.exists():
        continue
    got = {}

    def searches(at, warm, plan, timing, ledger, classes, sample, start_loss, judgeable=True,
                 got=got):
        s = at[256]
        got.update({"judgeable": judgeable, "ramp": plan.ramp[256], "plan_hold": plan.hold[256]})
        for hold in HOLDS:
            bracket = Bracket(s.cfg.peak_lr)
            while judgeable and len(bracket.trials) < 3 and (lr := bracket.next_candidate()):
                judgement, _, losses, _ = A.run_trial(s, warm, lr, plan.ramp[256], hold, ledger,
                                                      classes, A.TRIAL_STREAM, sample, start_loss)
                bracket.record(lr, judgement, len(losses), len(losses) * 256)
            got[str(hold)] = [{k: t[k] for k in ("lr", "failed", "why", "end_share", "steps")}
                              for t in bracket.trials]
        return {b: Bracket(x.cfg.peak_lr) for b, x in at.items()}, {b: [] for b in at}

    A.trial_rounds = searches
    cfg, _ = T.probe_config(recipe, "short")
    cfg.pop("stop_on_collapse")
    started = time.time()
    A.advise(from_dict(cfg), [256], Path(tempfile.mkdtemp()) / recipe, budget_images=10**9,
             overwrite=True, quiet=True)
    got["peak"] = cfg["lr"] * 256 / cfg["base_batch_size"]
    got["wall_s"] = round(time.time() - started)
    dest.write_text(json.dumps(got, indent=1))
    print(recipe, got["wall_s"], "s",
          {h: [(t["lr"], t["failed"]) for t in got[str(h)]] for h in HOLDS}, flush=True)

"""Probe truth-set recipes under variant rules (session 9's round-8 tuning; probes.json holds what
they measured, trimmed to the brackets and trials; score.py scores them):

    python docs/results/advise-truth/round8-tuning/variant.py NAME CONSTANTS BUDGET LENGTHS RECIPES

e.g. `variant.py t4 '{"DEFAULT_TRIALS": 4}' default long n4k-bn-warmup,n4k-group16`. CONSTANTS
set advise_rules / advise / advise_budget module constants (STOP_EXPLODED and INIT_LENIENT
existed at commit 6c99ca2, where these ran); BUDGET is `default` or `3` (3 trials per batch, no
cap). The full advice.json of each probe goes to /tmp/round8-tuning/NAME/BUDGET/RECIPE-LENGTH.
"""
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
import advise_truth as T  # noqa: E402
import torch  # noqa: E402

from batchscale.analysis import advise  # noqa: E402
from batchscale.analysis import advise_budget as Bu  # noqa: E402
from batchscale.analysis import advise_rules as R  # noqa: E402
from batchscale.config import from_dict  # noqa: E402

torch.set_num_threads(1)
name, consts, budget_kind = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
lengths, recipes = sys.argv[4].split(","), sys.argv[5].split(",")
for k, v in consts.items():
    for mod in (R, advise, Bu):
        if hasattr(mod, k):
            setattr(mod, k, v)
for recipe in recipes:
    for length in lengths:
        setup = T.setup_of(recipe)
        cfg = T.config_of(length, recipe, setup["base"]["base_batch_size"],
                          T.grid(recipe)[T.ADVISE_K], 0)
        budget = 0
        if budget_kind == "3":
            keep = Bu.DEFAULT_TRIALS
            Bu.DEFAULT_TRIALS = advise.DEFAULT_TRIALS = 3
            budget = T.three_trial_budget(cfg, setup["batches"])
            Bu.DEFAULT_TRIALS = advise.DEFAULT_TRIALS = keep
        cfg = {k: v for k, v in cfg.items() if k not in ("stop_on_collapse",)}
        out = Path(f"/tmp/round8-tuning/{name}/{budget_kind}/{recipe}-{length}")
        t = time.time()
        rec = advise.advise(from_dict(cfg), setup["batches"], out, budget_images=budget,
                            overwrite=True, quiet=True)
        print(name, budget_kind, recipe, length, rec["probe_images"],
              round(rec["probe_fraction"], 3), round(time.time() - t), flush=True)

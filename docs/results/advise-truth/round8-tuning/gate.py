"""A candidate for the next round, scored on rounds 1-7 only (session 9, after round 8's probes):
the loss-progress test fails a trial only when the network's input share at its end is below
GATE. 3 trials per batch, the `short` length (a 3-trial probe of a recipe's `long` length is the
same probe: same trials, same budget), the long folder links to the short one.

    python docs/results/advise-truth/round8-tuning/gate.py 0.7 gate07 RECIPES
"""
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
import advise_truth as T  # noqa: E402
import torch  # noqa: E402

from batchscale.analysis import advise  # noqa: E402
from batchscale.analysis import advise_pieces as P  # noqa: E402
from batchscale.analysis import advise_rules as R  # noqa: E402
from batchscale.config import from_dict  # noqa: E402

torch.set_num_threads(1)
gate, name, recipes = float(sys.argv[1]), sys.argv[2], sys.argv[3].split(",")
orig = R.judge_trial


def judge(*a, **k):
    j = orig(*a, **k)
    if j.why == "no progress" and j.end_share is not None and j.end_share >= gate:
        j.failed, j.why = False, ""
    return j


P.judge_trial = judge
for recipe in recipes:
    setup = T.setup_of(recipe)
    cfg = T.config_of("short", recipe, setup["base"]["base_batch_size"],
                      T.grid(recipe)[T.ADVISE_K], 0)
    budget = T.three_trial_budget(cfg, setup["batches"])
    cfg = {k: v for k, v in cfg.items() if k != "stop_on_collapse"}
    out = Path(f"/tmp/round8-tuning/{name}/3/{recipe}-short")
    t = time.time()
    rec = advise.advise(from_dict(cfg), setup["batches"], out, budget_images=budget,
                        overwrite=True, quiet=True)
    long = out.parent / f"{recipe}-long"
    if not long.exists():
        long.symlink_to(out.name)
    print(name, recipe, rec["probe_images"], round(time.time() - t), flush=True)

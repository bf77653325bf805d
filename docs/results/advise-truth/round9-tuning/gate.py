"""The round-9 candidate probed on round 8's recipes (3 trials per batch) and on rounds 6-8's
recipes (the default budget), before the rules were changed (session 10): the loss-progress test
fails a trial only when the network's input share at its end is below GATE. Committed as
advise_rules.PROGRESS_SHARE = 0.7; a probe at that commit gives the same trials (checked on two
recipes: the same brackets, trial rates and images).

    python docs/results/advise-truth/round9-tuning/gate.py 0.7 gate07 3 short RECIPES
    python docs/results/advise-truth/round9-tuning/gate.py 0.7 gate07 default short,long RECIPES

A 3-trial probe of a recipe's `long` length is its `short` probe (same trials, same budget): the
long folder links to the short one. probes.json holds each probe's brackets and trials.
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
gate, name, kind = float(sys.argv[1]), sys.argv[2], sys.argv[3]
lengths, recipes = sys.argv[4].split(","), sys.argv[5].split(",")
orig = R.judge_trial


def judge(*a, **k):
    j = orig(*a, **k)
    if j.why == "no progress" and j.end_share is not None and j.end_share >= gate:
        j.failed, j.why = False, ""
    return j


P.judge_trial = judge
for recipe in recipes:
    for length in lengths:
        setup = T.setup_of(recipe)
        cfg = T.config_of(length, recipe, setup["base"]["base_batch_size"],
                          T.grid(recipe)[T.ADVISE_K], 0)
        budget = T.three_trial_budget(cfg, setup["batches"]) if kind == "3" else 0
        cfg = {k: v for k, v in cfg.items() if k != "stop_on_collapse"}
        out = Path(f"/tmp/round9-tuning/{name}/{kind}/{recipe}-{length}")
        t = time.time()
        rec = advise.advise(from_dict(cfg), setup["batches"], out, budget_images=budget,
                            overwrite=True, quiet=True)
        if kind == "3" and lengths == ["short"]:
            long = out.parent / f"{recipe}-long"
            if not long.exists():
                long.symlink_to(out.name)
        print(name, kind, recipe, length, rec["probe_images"], round(time.time() - t), flush=True)

"""Probe the round-4 TUNING recipes (short) at 3 trials per batch under variant constants, in
process, into probes-<name>/ beside this file. Session 7 ran (before the constants were changed in
the code; SHARE_DROP was a trial constant since removed):

    python docs/results/advise-truth/round4-tuning/probe_variant.py base-must-learn \
        '{"SHARE_DROP": "inf", "BASE_MUST_LEARN": true}'
    python docs/results/advise-truth/round4-tuning/probe_variant.py share-drop-0.5 \
        '{"SHARE_DROP": 0.5, "BASE_MUST_LEARN": true}'
    python docs/results/advise-truth/round4-tuning/score_probes.py DIR...

The frozen round-3 rules' probes of the same recipes are ../advise/round3/tuning-3trials and
../advise/round3/held_out-3trials (their short cells)."""
import json, sys, os, math
from pathlib import Path
ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "scripts"))
import torch
torch.set_num_threads(1)
import advise_truth as T
from batchscale.analysis import advise, advise_rules as R
from batchscale.config import from_dict
name = sys.argv[1]
consts = json.loads(sys.argv[2])
for k, v in consts.items():
    v = math.inf if v == "inf" else v
    for mod in (R, advise):
        if hasattr(mod, k): setattr(mod, k, v)
recipes = sys.argv[3].split(",") if len(sys.argv) > 3 else T.split4()["tuning"]
for recipe in recipes:
    cfg = T.config_of("short", recipe, 8, T.grid(recipe)[T.ADVISE_K], 0)
    budget = T.three_trial_budget(cfg)
    cfg = {k: v for k, v in cfg.items() if k not in ("stop_on_collapse",)}
    out = Path(__file__).resolve().parent / f"probes-{name}" / f"{recipe}-short"
    rec = advise.advise(from_dict(cfg), T.BATCHES, out, budget_images=budget, overwrite=True, quiet=True)
    print(name, recipe, rec["probe_images"], round(rec["probe_fraction"], 2), flush=True)

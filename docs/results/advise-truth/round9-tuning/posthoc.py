"""After round 9's held-out probes (session 10): the same probes with the round-9 gate switched
off (advise_rules.PROGRESS_SHARE = 2: every "no progress" trial fails, c1e50bb's judging), scored
beside the committed round-9 probes. Round 9 is seen by then: this says whether the gate helped
there, it tunes nothing.

    python docs/results/advise-truth/round9-tuning/posthoc.py   # > posthoc.txt  (~5 min)
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))
sys.path.insert(0, str(HERE.parents[3] / "scripts"))
import advise_truth as T  # noqa: E402
import torch  # noqa: E402
from score import PROBES, score  # noqa: E402

from batchscale.analysis import advise  # noqa: E402
from batchscale.analysis import advise_rules as R  # noqa: E402
from batchscale.config import from_dict  # noqa: E402

torch.set_num_threads(1)
R.PROGRESS_SHARE = 2.0
R9 = list(T.ROUND_RECIPES[9])
for kind, folder in (("3", "held_out-3trials"), ("default", "held_out")):
    for recipe in R9:
        for length in ("short", "long"):
            setup = T.setup_of(recipe)
            cfg = T.config_of(length, recipe, setup["base"]["base_batch_size"],
                              T.grid(recipe)[T.ADVISE_K], 0)
            budget = T.three_trial_budget(cfg, setup["batches"]) if kind == "3" else 0
            cfg = {k: v for k, v in cfg.items() if k != "stop_on_collapse"}
            out = Path(f"/tmp/round9-posthoc/{kind}/{recipe}-{length}")
            PROBES[f"off/{kind}/{recipe}-{length}"] = advise.advise(
                from_dict(cfg), setup["batches"], out, budget_images=budget, overwrite=True,
                quiet=True)
            committed = HERE.parent / "advise" / "round9" / folder / f"{recipe}-{length}"
            PROBES[f"on/{kind}/{recipe}-{length}"] = __import__("json").loads(
                (committed / "advice.json").read_text())
    print("3 trials per batch" if kind == "3" else "default budget", "- round 9")
    for name, label in (("on", "94487e9 (gate 0.7)"), ("off", "gate off (c1e50bb's judging)")):
        n, right, risk, fs, fd = score([f"{name}/{kind}/{r}-{L}" for r in R9
                                        for L in ("short", "long")])
        print(f"  {label:30s} {right}/{n} right, {risk} at risk, {fs} false stable, "
              f"{fd} false diverges")

"""Run listed trials through the real probe, to complete replay.py's record of trial outcomes.

    python docs/results/advise-truth/round11-tuning/fill.py missing.json OUT

missing.json: [[recipe, B, peak], ...] (what replay.py raised KeyError for). Each recipe's probe is
built as `advise` builds it (its short length: a trial does not depend on the run's length), then
only the listed trials run, from the same base state and batches a probe's trials have. Session 11
ran 35 trials so (rounds 1-10; about 3 min on one core), and 4 more after round 11's probes for
replay.py --posthoc (f11); trials.json holds their outcomes ("session-11 fill" in `source`).
"""
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))
sys.path.insert(0, str(HERE.parents[3] / "scripts"))
import advise_truth as T  # noqa: E402
import torch  # noqa: E402

from batchscale.analysis import advise as A  # noqa: E402
from batchscale.analysis.advise_rules import Bracket  # noqa: E402
from batchscale.config import from_dict  # noqa: E402

torch.set_num_threads(1)
want = defaultdict(set)
for recipe, batch, lr in json.loads(Path(sys.argv[1]).read_text()):
    want[recipe].add((batch, lr))
for recipe, todo in want.items():
    def only_these(at, warm, plan, timing, ledger, classes, sample, start_loss, judgeable=True,
                   todo=todo):
        brackets = {b: Bracket(s.cfg.peak_lr) for b, s in at.items()}
        for batch, lr in sorted(todo):
            judgement, _, losses, _ = A.run_trial(at[batch], warm, lr, plan.ramp[batch],
                                                  plan.hold[batch], ledger, classes,
                                                  A.TRIAL_STREAM, sample, start_loss)
            brackets[batch].record(lr, judgement, len(losses), len(losses) * batch)
        return brackets, {b: [] for b in at}
    A.trial_rounds = only_these
    cfg, batches = T.probe_config(recipe, "short")
    cfg.pop("stop_on_collapse")
    started = time.time()
    A.advise(from_dict(cfg), batches, Path(sys.argv[2]) / f"{recipe}-short",
             budget_images=10**9, overwrite=True, quiet=True)
    print(recipe, len(todo), f"{time.time() - started:.0f} s", flush=True)

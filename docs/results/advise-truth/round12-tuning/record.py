"""Record long trials from the initialization for round 12's tuning: every no-warmup recipe of
rounds 1-11, at every batch, at every grid peak of its runs and at the search's √2 points.

    python docs/results/advise-truth/round12-tuning/record.py RECIPES OUT.json [MULTIPLIERS]

A trial runs as advise runs it (the same base state, the same batches, advise.TRIAL_STREAM) but
holds the peak for a whole epoch at B (at least 64 steps) without stopping at an exploded window,
and records every step's loss and accuracy and the fixed sample's (loss, input share) at
checkpoints (4, 8, 16, 32, 64 steps; a quarter, half and whole epoch; the rules' hold). Any hold
length and any early stop up to that is then judged from the record (replay.py), without running
the trial again. MULTIPLIERS: peaks as multiples of the recipe's own peak at B, beside the grid's.
Session 12 ran it for the 10 no-warmup recipes (about 5-20 s a trial on one core; trials.json).
"""
import json
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))
sys.path.insert(0, str(HERE.parents[3] / "scripts"))
import advise_truth as T  # noqa: E402
import torch  # noqa: E402

from batchscale.analysis import advise as A  # noqa: E402
from batchscale.analysis import advise_pieces as P  # noqa: E402
from batchscale.analysis.advise_rules import Bracket, trial_rates  # noqa: E402
from batchscale.config import from_dict  # noqa: E402

torch.set_num_threads(1)
CELLS = json.loads((HERE.parent / "outcomes.json").read_text())["cells"]


def long_trial(at_b, warm, peak, ramp, ledger, classes, sample, start_loss, checkpoints):
    P.load_state(at_b, warm)
    stream = P.batches_of(at_b, A.TRIAL_STREAM)
    rates = trial_rates(at_b.cfg.lr, peak, ramp, max(checkpoints))
    losses, accs, stats, hold_start = [], [], {}, None
    for step, lr in enumerate(rates):
        if step == ramp and ramp > 0:
            hold_start = P.sample_loss(at_b, sample, ledger)
        P.set_lr(at_b.optimizer, lr)
        images, labels = next(stream)
        loss, logits = P.train_step(at_b, P.prepare_input(at_b, images), labels)
        losses.append(round(loss.item(), 5))
        accs.append(round((logits.argmax(1) == labels.to(logits.device)).float().mean().item(), 5))
        if not math.isfinite(losses[-1]):
            break
        if step + 1 - ramp in checkpoints:
            loss_share = P.sample_stats(at_b, sample, ledger)
            stats[str(step + 1 - ramp)] = [round(v, 5) for v in loss_share]
    return {"losses": losses, "accs": accs, "stats": stats, "hold_start": hold_start,
            "start_loss": start_loss, "ramp": ramp}


def main(recipes, out, multipliers):
    record = json.loads(out.read_text()) if out.exists() else {}
    for recipe in recipes:
        cfg, batches = T.probe_config(recipe, "short")
        cfg.pop("stop_on_collapse")
        todo = {}
        for b in batches:
            own = T.grid(recipe)[T.ADVISE_K] * b / cfg["base_batch_size"]
            peaks = {round(c["peak_lr"], 10) for c in CELLS
                     if c["recipe"] == recipe and c["batch"] == b}
            peaks |= {round(own * m, 10) for m in multipliers}
            todo[b] = sorted(p for p in peaks if f"{recipe} {b} {p:.10g}" not in record)

        def only_these(at, warm, plan, timing, ledger, classes, sample, start_loss,
                       judgeable=True, todo=todo, recipe=recipe):
            for b, lrs in todo.items():
                spe = len(at[b].train) // b
                checkpoints = {plan.hold[b], 4, 8, 16, 32, 64, max(4, spe // 4),
                               max(4, spe // 2), spe}
                for lr in lrs:
                    started = time.time()
                    trial = long_trial(at[b], warm, lr, plan.ramp[b], ledger, classes, sample,
                                       start_loss, checkpoints)
                    trial.update(spe=spe)
                    record[f"{recipe} {b} {lr:.10g}"] = trial
                    out.write_text(json.dumps(record))
                    print(recipe, b, f"{lr:.6g}", f"{time.time() - started:.0f} s", flush=True)
            return {b: Bracket(s.cfg.peak_lr) for b, s in at.items()}, {b: [] for b in at}

        A.trial_rounds = only_these
        A.advise(from_dict(cfg), batches, Path("/tmp/round12-record") / recipe,
                 budget_images=10 ** 9, overwrite=True, quiet=True)


if __name__ == "__main__":
    main(sys.argv[1].split(","), Path(sys.argv[2]),
         [float(m) for m in sys.argv[3].split(",")] if len(sys.argv) > 3 else [])

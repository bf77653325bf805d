"""Diagnostic: for every TUNING recipe (short) x B x grid peak, a trial (ramp 8 from the warm
base, then hold H steps) recording the fixed sample's loss and the input share of its logits'
variance every few steps. Writes dead-s<STREAM>/<recipe>.json beside this file.

    python docs/results/advise-truth/round3-tuning/deadness.py RECIPES [HOLD_EPOCHS] [STREAM]
    (session 7 ran: RECIPES = the eight tuning recipes, HOLD_EPOCHS 1.0, STREAM 10 and 11)"""
import json, math, sys
from pathlib import Path
ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "scripts"))
import torch
torch.set_num_threads(1)
import advise_truth as T
from batchscale.analysis import advise, advise_pieces as P, advise_rules as R
from batchscale.analysis.advise_budget import Ledger
from batchscale.config import from_dict
from batchscale.engine import noise_hook
from batchscale.engine.setup import build
from batchscale.engine.optim import set_lr
from batchscale.engine.step import prepare_input, train_step

def stats(setup, sample):
    x, y = sample
    chunk = min(setup.cfg.bn_group or len(y), len(y))
    outs = []
    with torch.no_grad(), noise_hook.batch_norm_buffers_kept(setup.model):
        for s in range(0, len(y), chunk):
            outs.append(setup.model(x[s:s + chunk]).float())
    L = torch.cat(outs)
    loss = torch.nn.functional.cross_entropy(L, y).item()
    share = ((L - L.mean(0)).pow(2).mean() / ((L - L.mean()).pow(2).mean() + 1e-30)).item()
    top = L.argmax(1).bincount(minlength=L.shape[1]).max().item() / len(y)
    return loss, share, top

HOLD_EPOCHS = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
STREAM = int(sys.argv[3]) if len(sys.argv) > 3 else advise.TRIAL_STREAM
out_dir = Path(__file__).resolve().parent / f"dead-s{STREAM}"; out_dir.mkdir(exist_ok=True)
for recipe in sys.argv[1].split(","):
    cfgd = T.config_of("short", recipe, 8, T.grid(recipe)[T.ADVISE_K], 0)
    cfgd.pop("stop_on_collapse")
    cfg = from_dict(cfgd)
    setup = build(R.config_at(cfg, 8), progress=False)
    plan = advise.plan_probe(cfg, T.BATCHES, len(setup.train))
    ledger = Ledger(10 ** 12)
    P.recipe_groups(setup)
    init = P.state_of(setup)
    P.warm_up_base(setup, plan.base_steps, ledger)
    warm = P.state_of(setup) if plan.base_steps else init
    sample = P.fixed_sample(setup, plan.judge_images)
    rec = {"start": stats(setup, sample), "rows": []}
    for B in T.BATCHES:
        at = P.setup_at(setup, B)
        spe = len(setup.train) // B
        hold = max(4, round(HOLD_EPOCHS * spe))
        ramp = plan.ramp[B]
        for k in T.SHORT_POINTS:
            peak = T.grid(recipe)[k] * B / 8
            P.load_state(at, warm)
            stream = P.batches_of(at, STREAM)
            rates = R.trial_rates(at.cfg.lr, peak, ramp, hold)
            trace = []
            losses = []
            for step, lr in enumerate(rates):
                set_lr(at.optimizer, lr)
                im, lb = next(stream)
                loss, _ = train_step(at, prepare_input(at, im), lb)
                losses.append(loss.item())
                if not math.isfinite(losses[-1]): break
                if (step + 1) % max(1, hold // 8) == 0 or step == len(rates) - 1:
                    trace.append((step + 1, *stats(at, sample)))
            rec["rows"].append({"batch": B, "k": k, "peak": peak, "ramp": ramp, "hold": hold,
                                "trace": trace, "losses": losses})
            print(recipe, B, f"{peak:.3g}", " ".join(f"{s}:{l:.2f}/{sh:.2f}/{tp:.2f}" for s, l, sh, tp in trace[-3:]), flush=True)
    (out_dir / f"{recipe}.json").write_text(json.dumps(rec))

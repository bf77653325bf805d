"""How far can this recipe's batch be scaled? A short probe answers before the sweep is paid for.

    batchscale advise --config recipe.yaml --batches 4,16,64,256 --out advice/

For every candidate batch B the probe measures, on this machine and within a budget of training
images (default: 3 trials per batch, but at most one run of a recipe of up to 10 epochs, 10/epochs
of a run up to 100 epochs and a tenth of a run beyond -- never less than every batch's first
trial):

1. throughput (img/s over a few timed steps) and memory (activations kept for backward plus the
   parameters, gradients and optimizer state; on CUDA the allocator's peak), and whether it fits;
2. stability, by held-peak trials: from the recipe's warmed-up base state (the base batch trained
   through its warmup; the initialization when it has none; no trials when the warmed-up base
   is still at chance, base_learning) a trial replays the warmup ramp to a
   candidate peak at B and holds that peak, and is judged by the engine's collapse rule, a
   dead-network test (outputs that ignore the input) and a loss-progress test
   (advise_rules.judge_trial); every trial at B sees the same batches, so
   trials differ only in the rate. Per B the largest stable peak is bracketed by
   log bisection from the recipe's peak (×4 up from a pass, ×2 down from a failure, then the
   geometric mean of the ends down to √2, as the budget allows; for a recipe of more than 10
   epochs a pass counts as stable up to 4× its peak at most), and the verdict compares the
   recipe's peak with the bracket;
3. the largest positive eigenvalue λ_max of the training loss's Hessian at the base state
   (Lanczos) and the gradient noise scale B_noise there (McCandlish et al. 2018), as context:
   neither decides a verdict, and no step or time prediction is made from them;
4. the advice: the largest batch judged stable that fits, its peak lr and warmup, and one
   sentence for each larger batch it rejects.

The images every piece costs are counted (a Hessian-vector product as two passes of its images)
and the pieces are sized before anything runs; every batch gets its first trial before any batch
gets a second, and a batch the budget cannot hold a trial for is named, with the budget that
would. `probe(setup, batches, budget)` is the measurement on an already built setup (config,
model, data); `advise()` builds one from a config and writes the files.

This module runs the probe and is the command; what it measures with is in advise_pieces.py, what
it may spend in advise_budget.py, the rules it decides by in advise_rules.py and the files it
writes in advise_report.py.
"""


from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path

from batchscale import machine
from batchscale.analysis.advise_budget import (  # noqa: F401 (advise.X is the public name)
    DEFAULT_BUDGET_FRACTION,
    DEFAULT_TRIALS,
    HESSIAN_IMAGES,
    HESSIAN_ITERS,
    HESSIAN_TOL,
    JUDGE_IMAGES,
    NOISE_MEASUREMENTS,
    NOISE_SMALL_BATCHES,
    TIMED_STEPS,
    Ledger,
    Plan,
    budget_cap,
    default_budget,
    fit_context,
    plan_probe,
)
from batchscale.analysis.advise_pieces import (  # noqa: F401 (advise.X is the public name)
    batches_of,
    fixed_sample,
    load_state,
    noise_at,
    recipe_groups,
    run_trial,
    sample_loss,
    sample_stats,
    setup_at,
    state_of,
    time_steps,
    top_curvature,
    warm_up_base,
)
from batchscale.analysis.advise_record import track_record
from batchscale.analysis.advise_report import OUTPUTS, write_outputs
from batchscale.analysis.advise_rules import (
    BASE_SHARE,
    CANNOT_KNOW,
    CREDIT_EPOCHS,
    CREDIT_FREE,
    CREDIT_UP,
    HOLD_EPOCHS,
    HOLD_MAX,
    HOLD_MIN,
    PROGRESS_SHARE,
    RAMP_STEPS,
    SAFETY,
    SHARE_MIN,
    START,
    UP_STEP,
    Bracket,
    advice_for,
    config_at,
    credit_limit,
    momentum_of,
    verdict,
)
from batchscale.config import TrainConfig
from batchscale.engine import collapse
from batchscale.engine.optim import sgd_momentum
from batchscale.engine.setup import Setup, build
from batchscale.errors import UserError

TRIAL_STREAM = 10  # every trial at a batch sees the same batches: trials differ only in the rate
BASE_MUST_LEARN = True  # no trials from a warmed-up base state still at chance (base_learning)


# ---------------------------------------------------------------------- the command
def check_batches(text: str, cfg: TrainConfig) -> list[int]:
    """`--batches 4,16,64` as sorted distinct positive ints compatible with the recipe."""
    try:
        batches = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise UserError(f"--batches must be comma-separated positive integers, got {text!r}") \
            from None
    if not batches or batches[0] < 1:
        raise UserError(f"--batches must be comma-separated positive integers, got {text!r}")
    for batch in batches:
        if cfg.bn_group and batch % cfg.bn_group:
            raise UserError(f"--batches: {batch} is not a multiple of bn_group {cfg.bn_group}")
    return batches


def check_out(out: Path, overwrite: bool) -> None:
    """Every output path is checked before anything is computed: `out` is a folder or can be
    made one, and no advice file in it is replaced without --overwrite."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    for name in OUTPUTS:
        target = out / name
        if target.exists() and not overwrite:
            raise UserError(f"{target} exists; pass --overwrite to replace it")
        if target.exists() and not target.is_file():
            raise UserError(f"{target} exists and is not a file")
    ancestor = out
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"--out {out}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {ancestor} is not writable")


def trial_rounds(at: dict, warm: dict, plan: Plan, timing: dict, ledger: Ledger, classes: int,
                 sample, start_loss: float, judgeable: bool = True) -> tuple[dict, dict]:
    """The held-peak trials of every batch in `at` (B -> its setup): round 1 gives every batch
    its first trial (smallest first), then one bisection step per batch per round while the
    budget holds it (none when the base state is not `judgeable`, base_learning). Returns the
    brackets and each trial's curve, per B."""
    brackets = {b: Bracket(s.cfg.peak_lr,
                           credit=credit_limit(s.cfg.peak_lr, s.cfg.epochs, s.cfg.optimizer))
                for b, s in at.items()}
    curves = {b: [] for b in at}
    progress = judgeable
    while progress:
        progress = False
        for batch in at:
            candidate = brackets[batch].next_candidate()
            if candidate is None or not timing[batch]["fits"]:
                continue
            if plan.trial_images(batch) > ledger.left():
                continue
            judgement, rates, losses, accs = run_trial(
                at[batch], warm, candidate, plan.ramp[batch], plan.hold[batch], ledger, classes,
                TRIAL_STREAM, sample, start_loss)
            brackets[batch].record(candidate, judgement, len(losses), len(losses) * batch)
            curves[batch].append({"lr": candidate, "rates": rates, "losses": losses,
                                  "accs": accs, "failed": judgement.failed})
            progress = True
    return brackets, curves


def base_learning(base_steps: int, start_loss: float, classes: int,
                  cross_entropy: bool = True) -> bool:
    """Whether trials from the base state can be judged: a recipe without warmup starts from its
    initialization (its trials are its own first steps); a warmed-up base state must have started
    learning, its fixed-sample loss below chance, ln(classes) − collapse.LOSS_MARGIN (round 3's
    held-out half: from a base still at chance every trial failed, slow start or not). Only for
    cross-entropy, whose chance level is ln(classes); a user's loss is not judged so."""
    if not BASE_MUST_LEARN or not base_steps or not cross_entropy or not math.isfinite(start_loss):
        return True  # (a base state that blew up: its trials fail as non-finite, `diverges`)
    return start_loss < math.log(classes) - collapse.LOSS_MARGIN


def not_learning_reason(start_loss: float, classes: int) -> str:
    return (f"after the recipe's warmup the base state has not started learning (fixed-sample "
            f"loss {start_loss:.3f}, chance ln {classes} = {math.log(classes):.3f}), so a short "
            f"trial cannot tell a slow start from a collapse")


def rules_record() -> dict:
    """The rules a probe decided by, as advise.json records them."""
    return {"start": START, "trial_stream": "the same batches for every trial at a B",
            "ramp_steps": RAMP_STEPS, "hold_epochs": HOLD_EPOCHS, "up_step": UP_STEP,
            "credit_up": CREDIT_UP, "credit_epochs": CREDIT_EPOCHS,
            "credit_free": list(CREDIT_FREE), "base_share": BASE_SHARE,
            "hold_min": HOLD_MIN, "hold_max": HOLD_MAX, "safety": SAFETY,
            "share_min": SHARE_MIN, "progress_share": PROGRESS_SHARE,
            "base_must_learn": BASE_MUST_LEARN,
            "judge": "failed: a non-finite loss; the last window exploded by "
                     "engine/collapse.py (at chance, loss ≥ 1.25 ln C); a dead network "
                     "(the fixed sample's logits' input share < share_min); or the fixed "
                     "sample's loss more than half way back to chance from both the "
                     "trial's start and the peak's start while the input share is below "
                     "progress_share. window = max(3, 256/B) steps"}


def verdict_rows(at: dict, plan: Plan, timing: dict, brackets: dict, curves: dict,
                 curvature: dict, beta: float | None, needed: int, say,
                 not_learning: str | None = None) -> list[dict]:
    """advise.json's row per batch: its timing, its trials and bracket, and the verdict
    (`not_learning`: why no trial ran when the base state had not started learning)."""
    rows = []
    lam = curvature["lambda_max"]
    bound_lr = 2 * (1 + beta) / lam if beta is not None and lam is not None and lam > 0 else None
    for batch in at:
        row = brackets[batch]
        peak = at[batch].cfg.peak_lr
        state, margin, reason = verdict(peak, row.stable_low, row.high)
        if row.stable_low is not None and row.low > row.stable_low:
            reason += (f" (passed up to {row.low:.3g}; credited to {CREDIT_UP:g}× the peak for a "
                       f"recipe of > {CREDIT_EPOCHS} epochs)")
        if not row.trials and not_learning is not None:
            reason = f"no trial at B = {batch}: {not_learning}"
        elif not row.trials:
            why = ("does not fit in memory" if not timing[batch]["fits"] else
                   f"the budget could not hold its first trial ({plan.trial_images(batch)} "
                   f"images); --budget-images {needed} gives every batch its first")
            reason = f"no trial at B = {batch}: {why}"
        rows.append({"batch": batch, **timing[batch], "peak_lr": peak,
                     "warmup_steps": at[batch].plan.warmup_steps,
                     "recipe_steps": at[batch].plan.total_steps,
                     "trial_ramp_steps": plan.ramp[batch], "trial_hold_steps": plan.hold[batch],
                     "trial_images": plan.trial_images(batch),
                     "bracket_low": row.stable_low, "bracket_high": row.high,
                     "largest_passed": row.low, "trials": row.trials,
                     "curves": curves[batch],
                     "curvature_product": None if bound_lr is None else peak * lam,
                     "curvature_bound_lr": bound_lr, "verdict": state, "margin": margin,
                     "reason": reason})
        say(f"  B = {batch}: {state} ({reason})")
    return rows


def probe_budget(cfg: TrainConfig, plan: Plan, budget_images: int,
                 full_run: int) -> tuple[int, int]:
    """The probe's budget in images (`budget_images`, or the default when 0) and the images that
    give every batch its first trial; a budget that cannot hold the fixed pieces is refused."""
    fixed, needed = plan.fixed_images(cfg.base_batch_size), plan.needed(cfg.base_batch_size)
    budget = budget_images or default_budget(plan, cfg.base_batch_size, full_run, cfg.epochs)
    if budget < fixed:
        raise UserError(f"--budget-images {budget} is too small: timing, the base warmup, the "
                        f"noise scale and the Hessian take {fixed} images; {needed} give every "
                        f"batch its first trial")
    return budget, needed


def budget_line(cfg: TrainConfig, plan: Plan, budget: int, full_run: int) -> str:
    """The line the probe says first: its budget, as a share of a full run at the base batch."""
    share = budget / full_run
    return (f"advise: budget {budget} images ({share:.1%} of a full run at B = "
            f"{cfg.base_batch_size}{'; over 10% because the trials need it' if share > 0.1 else ''}"
            f"{'; more than a run: every batch gets its first trial' if share > 1 else ''})"
            f"; base warmup {plan.base_steps} steps{short_base(plan)}")


def short_base(plan: Plan) -> str:
    """Where the base state stops short of the recipe's warmup (BASE_SHARE), a clause saying so."""
    if not plan.base_steps or plan.base_steps >= plan.warmup_steps:
        return ""
    return (f" of the recipe's {plan.warmup_steps} (the base state costs at most "
            f"{BASE_SHARE:.0%} of a run)")


def context_at(setup: Setup, plan: Plan, ledger: Ledger,
               left_out: str | None) -> tuple[dict, dict]:
    """B_noise and λ_max at the base state, as planned; a piece the plan left out
    (fit_context) says why in its `why_not`."""
    noise = noise_at(setup, plan.noise_measurements, ledger)
    if left_out and not plan.noise_measurements:
        noise["why_not"] = left_out
    if not plan.hessian_iters:
        return noise, {"lambda_max": None, "iterations": 0, "converged": False, "images": 0,
                       "why_not": left_out or "no Lanczos iteration planned"}
    return noise, top_curvature(setup, plan.hessian_images, plan.hessian_iters, ledger)


def probe(setup: Setup, batches: list[int], budget_images: int = 0, say=None) -> dict:
    """The probe on a built base setup (`setup.cfg` is the recipe at its base batch; its model
    is trained in place): the record advise.json holds, without writing anything."""
    say = say or (lambda *_: None)
    started, load_at_start = time.perf_counter(), machine.load()
    cfg = setup.cfg
    train_images = len(setup.train)
    too_big = [b for b in batches if b > train_images]
    if too_big:
        raise UserError(f"--batches: {too_big[0]} exceeds the {train_images} training images")
    full_run = train_images * cfg.epochs
    plan, left_out = plan_probe(cfg, batches, train_images), None
    if not budget_images:
        plan, left_out = fit_context(plan, cfg.base_batch_size, budget_cap(full_run, cfg.epochs))
    budget, needed = probe_budget(cfg, plan, budget_images, full_run)
    ledger = Ledger(budget)
    classes = getattr(setup, "classes", None) or int(setup.train.labels.max().item()) + 1
    say(budget_line(cfg, plan, budget, full_run))
    recipe_groups(setup)
    init = state_of(setup)
    base = warm_up_base(setup, plan.base_steps, ledger)
    noise, curvature = context_at(setup, plan, ledger, left_out)
    warm = state_of(setup) if plan.base_steps else init
    sample = fixed_sample(setup, plan.judge_images)
    start_loss, start_share = sample_stats(setup, sample, ledger)
    at = {b: setup_at(setup, b) for b in batches}
    timing = {}
    for batch in batches:
        load_state(at[batch], warm)
        timing[batch] = time_steps(at[batch], batches_of(at[batch], 3), ledger)
    learning = base_learning(plan.base_steps, start_loss, classes,
                             getattr(setup, "loss_fn", None) is None)
    brackets, curves = trial_rounds(at, warm, plan, timing, ledger, classes, sample, start_loss,
                                    judgeable=learning)
    not_learning = None if learning else not_learning_reason(start_loss, classes)
    if not_learning:
        say(f"advise: no trials: {not_learning}")
    beta = momentum_of(cfg)
    rows = verdict_rows(at, plan, timing, brackets, curves, curvature, beta, needed, say,
                        not_learning)
    return {
        "config": cfg.to_dict(), "batches": batches, "base_batch": cfg.base_batch_size,
        "train_images": train_images, "full_run_images": full_run,
        "budget_images": budget, "budget_default": not budget_images,
        "budget_needed_first_trials": needed, "context_left_out": left_out,
        "probe_images": ledger.spent,
        "probe_fraction": ledger.spent / full_run, "probe_pieces": ledger.pieces,
        "probe_wall_s": time.perf_counter() - started, "device": str(setup.device),
        "machine_load": {"load_1m_at_start": load_at_start, "cpus": os.cpu_count()},
        "plan": dataclasses.asdict(plan),
        "base": {**base, "sample_loss": start_loss, "sample_share": start_share},
        "noise": noise, "curvature": curvature,
        "momentum": beta,
        "rules": rules_record(),
        "track_record": track_record(cfg.to_dict(), rules_record(), not budget_images),
        "base_learning": learning,
        "rows": rows, "advice": advice_for(rows, cfg), "cannot_know": CANNOT_KNOW,
    }


def advise(cfg: TrainConfig, batches: list[int], out: Path, budget_images: int = 0,
           overwrite: bool = False, quiet: bool = False, user: dict | None = None) -> dict:
    """Run the probe for `cfg`'s recipe at `batches`; write advice.json/.md/.png into `out`
    (checked before anything is computed). `user`: a user's pieces for `setup.build` (data,
    model_factory, make_optimizer, loss_fn; batchscale.advise) and under "described" what the
    record's config says of them in place of the config's own fields."""
    out = Path(out)
    check_out(out, overwrite)
    if budget_images < 0:
        raise UserError(f"--budget-images must be positive, got {budget_images}")
    say = (lambda *_: None) if quiet else (lambda text: print(text, flush=True))
    pieces = dict(user or {})
    described = pieces.pop("described", {})
    setup = build(config_at(cfg, cfg.base_batch_size), progress=not quiet, **pieces)
    custom = pieces.get("make_optimizer") is not None
    beta = sgd_momentum(setup.optimizer) if custom else None
    record = probe(setup, batches, budget_images, say)
    record["config"].update(described)
    if custom:  # the heavy-ball bound from the user's optimizer (plain SGD only), not the config
        lam = record["curvature"]["lambda_max"]
        bound = 2 * (1 + beta) / lam if beta is not None and lam is not None and lam > 0 else None
        record["momentum"] = beta
        record["track_record"] = track_record(record["config"], record["rules"],
                                              record["budget_default"], custom_optimizer=True)
        for row in record["rows"]:
            row["curvature_bound_lr"] = bound
            row["curvature_product"] = None if bound is None else row["peak_lr"] * lam
    write_outputs(record, out)
    return record

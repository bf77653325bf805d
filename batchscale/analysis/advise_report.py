"""The files `batchscale advise` writes: advice.json (the whole record), advice.md (the advice,
the per-batch table and what the probe cannot know) and advice.png (every held-peak trial's
loss curve per batch, and the brackets of the largest stable peak)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from batchscale import files, machine
from batchscale.analysis.advise_record import record_text

RESULT_JSON, RESULT_MD, RESULT_PNG = "advice.json", "advice.md", "advice.png"
OUTPUTS = (RESULT_JSON, RESULT_MD, RESULT_PNG)


def fmt(value, spec: str = ".3g", none: str = "—") -> str:
    return none if value is None else format(value, spec)


def trials_text(row: dict) -> str:
    return ", ".join(f"{t['lr']:.3g} {'✗' if t['failed'] else '✓'}" for t in row["trials"]) or "—"


def table(record: dict) -> str:
    """The per-batch table, in Markdown (also what the command prints)."""
    lines = ["| B | img/s | memory MB | fits | peak lr | trials (lr ✓ passed / ✗ failed) | "
             "largest stable peak in | η·λ_max / 2(1+β) | verdict | margin |",
             "|---:|---:|---:|---|---:|---|---|---:|---|---:|"]
    for row in record["rows"]:
        ratio = (None if row["curvature_bound_lr"] is None
                 else row["peak_lr"] / row["curvature_bound_lr"])
        low, high = row["bracket_low"], row["bracket_high"]
        bracket = (f"[{fmt(low)}, {fmt(high)})" if low is not None or high is not None
                   else "not tested")
        passed = row.get("largest_passed")
        if low is not None and passed is not None and passed > low * (1 + 1e-9):
            bracket += f" (passed {fmt(passed)}; credited to {fmt(low)})"
        lines.append(
            f"| {row['batch']} | {fmt(row['images_per_s'], '.0f')} | "
            f"{fmt(row['memory_mb'], '.1f')} | {'yes' if row['fits'] else 'no'} | "
            f"{row['peak_lr']:.3g} | {trials_text(row)} | {bracket} | "
            f"{fmt(ratio, '.2f', 'n/a')} | {row['verdict']} | {fmt(row['margin'], '.2f')} |")
    return "\n".join(lines)


def noise_text(noise: dict) -> str:
    """B_noise as advice.md states it, or why it was not measured."""
    if noise["b_noise"] is None:
        return f"not measured: {noise.get('why_not')}"
    return (f"{noise['b_noise']:.3g} ± {fmt(noise['b_noise_error'], '.2g', '?')} "
            f"({noise['measurements']} measurements, small batch {noise['small_batch']} vs "
            f"big batch {noise['big_batch']}, at the base state)")


def curvature_text(curv: dict, beta: float | None) -> str:
    """λ_max as advice.md states it (with the heavy-ball bound when there is a momentum), or why
    it was not measured."""
    lam = curv["lambda_max"]
    if lam is None:
        return f"not measured: {curv.get('why_not')}"
    bound = ("" if beta is None or not lam > 0
             else f"; the heavy-ball bound η < 2(1+β)/λ_max = {2 * (1 + beta) / lam:.3g} "
                  f"(β = {beta}) is shown, not used for the verdict")
    state = "converged" if curv["converged"] else "NOT converged"
    return (f"{lam:.4g} (smallest Ritz value {curv['lambda_min_ritz']:.3g}; {state}: "
            f"residual {curv['residual']:.2g} after {curv['iterations']} Lanczos "
            f"iterations on {curv['images']} images, at the base state){bound}")


def recipe_section(record: dict) -> str:
    """advice.md's title and the recipe probed."""
    cfg = record["config"]
    return f"""# batchscale advise

Recipe: optimizer {cfg['optimizer']}, lr {cfg['lr']} at base batch {cfg['base_batch_size']},
scale rule {cfg['scale_rule']}, warmup {cfg['warmup_epochs']} epochs, bn_group {cfg['bn_group']},
{cfg['epochs']} epochs on {record['train_images']} training images ({cfg['dataset']}, width
{cfg['width']}); device {record['device']}.
"""


def advice_section(record: dict) -> str:
    """The advised batch, and a sentence for each larger batch rejected."""
    advice = record["advice"]
    rejected = "\n".join(f"- {r['sentence']}" for r in advice["rejected"]) or "- (none larger)"
    return f"""## Advice

**B = {advice['batch']}**, peak lr {advice['peak_lr']:.4g}, warmup {advice['warmup_epochs']} epochs
({advice['warmup_steps']} steps). {advice['note']}

Larger batches, rejected:

{rejected}
"""


def search_text(rules: dict) -> str:
    """How the bracket search steps, as the record's rules say."""
    up = rules.get("up_step", 2.0)
    return (f"×{up:g} up from a pass, ×2 down from a failure, then the geometric mean of the two "
            f"ends while they are more than √2 apart and the budget holds")


def credit_text(rules: dict) -> str:
    """The credit limit on a passed trial, if the record's rules have one."""
    if rules.get("credit_up") is None:
        return ""
    free = rules.get("credit_free")
    return (f", a pass counting up to {rules['credit_up']:g}× the recipe's peak at most for a "
            f"recipe of more than {rules['credit_epochs']} epochs"
            f"{' (any pass counts for ' + ', '.join(free) + ')' if free else ''}")


def base_text(rules: dict) -> str:
    """How far the base state is warmed up, where the rules cap it."""
    share = rules.get("base_share", 1.0)
    return "" if share >= 1 else f", or through {share:.0%} of a run where the warmup is longer"


def load_text(record: dict) -> str:
    """A warning under the table where img/s may have been timed while other work shared the
    cores (the 1-minute load average as the probe started); nothing for an idle machine or an
    older record."""
    load = record.get("machine_load") or {}
    if not machine.loaded(load.get("load_1m_at_start"), load.get("cpus")):
        return ""
    return (f"\n**img/s may be lower than on an idle machine**: the 1-minute load average was "
            f"{load['load_1m_at_start']:g} on {load['cpus']} CPUs as the probe started (other "
            f"work on these cores, or work that had just ended).\n")


def per_batch_section(record: dict) -> str:
    """The per-batch table and how to read it: the trials, the bracket, λ_max and B_noise."""
    rules = record["rules"]
    curvature = curvature_text(record["curvature"], record["momentum"])
    return f"""## Per batch

{table(record)}
{load_text(record)}
- A *trial* at B starts from the base state (the base batch trained through the recipe's
  warmup{base_text(rules)}; the initialization without warmup; no trials when a warmed-up base
  state is still at chance: every B is then *at risk*), ramps from the base lr to a candidate
  peak in at most {rules['ramp_steps']} steps (the recipe's warmup, compressed) and holds the
  peak for {rules['hold_epochs']} of the recipe's epochs at B (at least {rules['hold_min']}, at
  most {rules['hold_max']} steps, never more than the recipe holds it). It *fails*
  ({rules['judge']}).
- Per B the trials bisect the largest stable peak on a log scale from the recipe's peak
  ({search_text(rules)}); *stable*: peak ≤ largest passed / {rules['safety']:g}{credit_text(rules)};
  *diverges*: peak ≥ smallest failed; *at risk*: in between or untested. *margin*: largest passed
  / peak (stable) or smallest failed / peak (diverges).
- λ_max = {curvature}.
- B_noise = {noise_text(record['noise'])}. No step or time prediction is made (removed: see below).
"""


def cost_section(record: dict) -> str:
    """What the probe spent: its images, as a share of a full run, and its wall-clock time."""
    share = record["probe_fraction"]
    over = (" — more than one run: every batch's first trial needs that much"
            if share > 1 and record["budget_default"] else
            " — more than 10% of a run: the default budget holds 3 trials per batch, up to one "
            "run for a recipe of ≤ 10 epochs (10/epochs of a run up to 100)"
            if share > 0.1 and record["budget_default"] else "")
    pieces = ", ".join(f"{k} {v}" for k, v in record["probe_pieces"].items())
    return f"""## Probe cost

{record['probe_images']} training images ({share:.1%} of one full run at the base batch{over};
budget {record['budget_images']}, {record['budget_needed_first_trials']} give every batch its
first trial): {pieces}; {record['probe_wall_s'] / 60:.1f} min wall-clock.
"""


def track_section(record: dict) -> str:
    """How the verdicts in the table held on held-out recipes at these rules (none for a record
    written before the track record existed)."""
    summary = record.get("track_record")
    if summary is None:
        return ""
    return record_text(summary, {row["verdict"] for row in record["rows"]})


def cannot_know_section(record: dict) -> str:
    """What the probe cannot know, one item a line."""
    cannot = "\n".join(f"- {line}" for line in record["cannot_know"])
    return f"""## What this probe cannot know

{cannot}
"""


def markdown(record: dict) -> str:
    """advice.md: the recipe, the advice, the per-batch table, how such verdicts held on held-out
    recipes, the probe's cost and what it cannot know, one section each."""
    sections = (recipe_section, advice_section, per_batch_section, track_section, cost_section,
                cannot_know_section)
    return "\n".join(text for section in sections if (text := section(record)))


def _positive(values) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v) and v > 0]


def plot(record: dict, path: Path) -> None:
    """Left: every trial's loss per step, per batch; right: the recipe's peak and the tested
    peaks per B. Non-finite or non-positive values are left out, never fatal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, row in enumerate(record["rows"]):
        color = cycle[i % len(cycle)]
        for curve in row["curves"]:
            points = [(s, v) for s, v in enumerate(curve["losses"]) if math.isfinite(v)]
            if points:
                left.plot(*zip(*points, strict=True), color=color, lw=0.8,
                          ls="--" if curve["failed"] else "-")
        left.plot([], [], color=color, label=f"B = {row['batch']}")
    left.set(xlabel="trial step", ylabel="training loss",
             title="held-peak trials (dashed: failed)")
    low, high = left.get_ylim()
    left.set_ylim(low, min(high, 10))
    if left.get_legend_handles_labels()[0]:
        left.legend(fontsize=8)
    for row in record["rows"]:
        for trial in row["trials"]:
            if _positive([trial["lr"]]):
                right.plot(row["batch"], trial["lr"], "x" if trial["failed"] else "o",
                           color="tab:red" if trial["failed"] else "tab:green")
        if _positive([row["peak_lr"]]):
            right.plot(row["batch"], row["peak_lr"], "_", color="black", ms=14)
    right.plot([], [], "o", color="tab:green", label="trial passed")
    right.plot([], [], "x", color="tab:red", label="trial failed")
    right.plot([], [], "_", color="black", label="recipe's peak")
    if _positive([r["batch"] for r in record["rows"]]):
        right.set_xscale("log")
    if _positive([t["lr"] for r in record["rows"] for t in r["trials"]]
                 + [r["peak_lr"] for r in record["rows"]]):
        right.set_yscale("log")
    right.set(xlabel="batch size B", ylabel="peak learning rate",
              title="tested peaks per batch")
    right.legend(fontsize=8)
    fig.tight_layout()
    files.save_figure(fig, path, 110)
    plt.close(fig)


def write_outputs(record: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=2) + "\n"
    files.write_text(out / RESULT_JSON, text)
    files.write_text(out / RESULT_MD, markdown(record))
    try:
        plot(record, out / RESULT_PNG)
    except Exception as error:  # noqa: BLE001 -- a figure must never cost the advice
        files.write_text(out / (RESULT_PNG + ".error.txt"), f"the figure failed: {error!r}\n")

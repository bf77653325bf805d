"""The files `batchscale advise` writes: advice.json (the whole record), advice.md (the advice,
the per-batch table and what the probe cannot know) and advice.png (the range tests and the
predicted time per batch)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from batchscale import files

RESULT_JSON, RESULT_MD, RESULT_PNG = "advice.json", "advice.md", "advice.png"


def fmt(value, spec: str = ".3g", none: str = "—") -> str:
    return none if value is None else format(value, spec)


def table(record: dict) -> str:
    """The per-batch table, in Markdown (also what the command prints)."""
    lines = ["| B | img/s | memory MB | fits | peak lr | stable lr (range test) | "
             "η·λ_max / 2(1+β) | verdict | margin | S(B) | E(B) | predicted time |",
             "|---:|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for row in record["rows"]:
        test = row["range_test"]
        if test is None:
            stable = "not tested"
        elif test["diverged"]:
            stable = f"{test['stable_lr']:.3g} (diverged at {test['diverge_lr']:.3g})"
        else:
            stable = f"≥ {test['stable_lr']:.3g}"
        ratio = (None if row["curvature_bound_lr"] is None
                 else row["peak_lr"] / row["curvature_bound_lr"])
        band = row["predicted_time_range_s"]
        time_text = "—" if row["predicted_time_s"] is None else (
            f"{row['predicted_time_s'] / 60:.1f} min ({band[0] / 60:.1f}–{band[1] / 60:.1f})")
        margin = fmt(row["margin"], ".2f")
        if test is not None and not test["diverged"] and row["margin"] is not None:
            margin = "≥ " + margin
        lines.append(
            f"| {row['batch']} | {fmt(row['images_per_s'], '.0f')} | "
            f"{fmt(row['memory_mb'], '.1f')} | {'yes' if row['fits'] else 'no'} | "
            f"{row['peak_lr']:.3g} | {stable} | {fmt(ratio, '.2f', 'n/a')} | {row['verdict']} | "
            f"{margin} | {fmt(row['predicted_steps'], '.0f')} | "
            f"{fmt(row['predicted_images'], '.3g')} | {time_text} |")
    return "\n".join(lines)


def markdown(record: dict) -> str:
    cfg, noise, curv, advice = (record["config"], record["noise"], record["curvature"],
                                record["advice"])
    b_noise = ("not measured" if noise["b_noise"] is None else
               f"{noise['b_noise']:.3g} ± {fmt(noise['b_noise_error'], '.2g', '?')}")
    rejected = "\n".join(f"- {r['sentence']}" for r in advice["rejected"]) or "- (none larger)"
    cannot = "\n".join(f"- {line}" for line in record["cannot_know"])
    pieces = ", ".join(f"{k} {v}" for k, v in record["probe_pieces"].items())
    untested = [str(r["batch"]) for r in record["rows"] if r["range_test"] is None]
    untested = f" Not tested (budget): B = {', '.join(untested)}." if untested else ""
    crit = record["criterion"]
    beta = record["momentum"]
    bound = ("" if beta is None or not (curv["lambda_max"] or 0) > 0
             else f" = {2 * (1 + beta) / curv['lambda_max']:.3g} (β = {beta})")
    state = "converged" if curv["converged"] else "NOT converged"
    return f"""# batchscale advise

Recipe: optimizer {cfg['optimizer']}, lr {cfg['lr']} at base batch {cfg['base_batch_size']},
scale rule {cfg['scale_rule']}, warmup {cfg['warmup_epochs']} epochs, bn_group {cfg['bn_group']},
{cfg['epochs']} epochs on {record['train_images']} training images ({cfg['dataset']}, width
{cfg['width']}); device {record['device']}.

## Advice

**B = {advice['batch']}**, peak lr {advice['peak_lr']:.4g}, warmup {advice['warmup_epochs']} epochs
({advice['warmup_steps']} steps). {advice['note']}

Larger batches, rejected:

{rejected}

## Per batch

{table(record)}

- *stable lr*: the last rate of the range test (from the warmed-up state, rates × ratio per
  step, from peak/{crit['ramp_span']:g} to peak × {crit['ramp_span']:g}) before the
  divergence criterion fired: the mean loss of the last max({crit['patience']}, 64/B) steps above
  min({crit['factor']:g}× the first window's mean, ln classes) (above chance: collapsed), or
  non-finite;
  *margin* = stable lr / peak lr; *stable* needs margin ≥ {crit['safety']} and the curvature
  bound; below 1 it *diverges*.{untested}
- λ_max = {fmt(curv['lambda_max'], '.4g', 'not measured')} ({state} after
  {curv['iterations']} power iterations on {curv['images']} images) at the end of the base
  batch's warmup; the bound is η < 2(1+β)/λ_max{bound}.
- B_noise = {b_noise} (jackknife error, {noise['measurements']} measurements of small batch
  {noise['small_batch']} vs big batch {noise['big_batch']}); S(B) = S_min (1 + B_noise/B),
  E(B) = E_min (1 + B/B_noise), from the base run's {record['base_run_steps']} steps; predicted
  time = E(B) / img/s (range: B_noise ± its error).

## Probe cost

{record['probe_images']} training images ({record['probe_fraction']:.1%} of one full run at the
base batch, budget {record['budget_images']}): {pieces}; {record['probe_wall_s'] / 60:.1f} min
wall-clock.

## What this probe cannot know

{cannot}
"""


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for row in record["rows"]:
        test = row["range_test"]
        if test is None:
            continue
        finite = [(lr, loss) for lr, loss in zip(test["lrs"], test["losses"], strict=True)
                  if math.isfinite(loss)]
        if finite:
            line, = left.plot(*zip(*finite, strict=True), label=f"B = {row['batch']}")
            left.axvline(row["peak_lr"], color=line.get_color(), ls=":", lw=1)
    left.set(xscale="log", xlabel="learning rate", ylabel="training loss",
             title="lr range test from the warmed-up state (dotted: recipe's peak lr)")
    left.set_ylim(top=min(left.get_ylim()[1], 10))
    left.legend(fontsize=8)
    colors = {"stable": "tab:green", "at risk": "tab:orange", "diverges": "tab:red"}
    for row in record["rows"]:
        if row["predicted_time_s"] is None:
            continue
        low, high = row["predicted_time_range_s"]
        minutes = row["predicted_time_s"] / 60
        right.errorbar(row["batch"], minutes, yerr=[[minutes - low / 60], [high / 60 - minutes]],
                       fmt="o", color=colors[row["verdict"]], capsize=3)
    for name, color in colors.items():
        right.plot([], [], "o", color=color, label=name)
    right.set(xscale="log", yscale="log", xlabel="batch size B",
              ylabel="predicted minutes to the base run's loss",
              title="predicted wall-clock per run on this machine")
    right.legend(fontsize=8)
    fig.tight_layout()
    files.save_figure(fig, path, 110)
    plt.close(fig)


def write_outputs(record: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=2) + "\n"
    files.write_text(out / RESULT_JSON, text)
    files.write_text(out / RESULT_MD, markdown(record))
    plot(record, out / RESULT_PNG)

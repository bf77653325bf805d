"""A run that collapses (finite loss, chance accuracy) is a failed run: the rule on hand-made
rows, a tiny run forced to collapse, a slow run that is not, resume after a collapse stop, and
the report's treatment of collapsed runs."""

import json
import math

import pytest

from batchscale.engine import collapse, rundir
from batchscale.engine.train import train

from conftest import tiny_config

LN10 = math.log(10)


def rows(*pairs, steps_per_epoch=4):
    """Metrics rows from (train_acc, train_loss) pairs, epochs 1, 2, ..."""
    return [{"epoch": e, "step": e * steps_per_epoch, "train_acc": acc, "train_loss": loss}
            for e, (acc, loss) in enumerate(pairs, start=1)]


CFG = {"warmup_epochs": 0, "batch_size": 256, "epochs": 24}  # 1024 images an epoch
FLAT, EXPLODED = (0.10, 2.31), (0.10, 3.0)  # at chance; loss just above / far above ln 10


def test_the_margin_is_three_standard_errors_of_chance_or_two_points():
    assert collapse.accuracy_margin(1024) == pytest.approx(3 * math.sqrt(0.09 / 1024))
    assert collapse.accuracy_margin(256) == pytest.approx(3 * 0.3 / 16)
    assert collapse.accuracy_margin(50_000) == collapse.ACC_MARGIN == 0.02


def test_three_exploded_epochs_collapse_at_the_third():
    assert collapse.collapsed_at(rows(*[EXPLODED] * 4), CFG) == 3
    assert collapse.collapsed_at(rows((0.3, 1.9), *[EXPLODED] * 3), CFG) == 4
    assert collapse.collapsed_at(rows(EXPLODED, EXPLODED), CFG) is None  # too few epochs
    # a learning epoch in between starts the count again
    assert collapse.collapsed_at(rows(EXPLODED, EXPLODED, (0.2, 2.2), EXPLODED), CFG) is None
    # huge but finite losses at chance accuracy
    assert collapse.collapsed_at(rows((0.1, 1e16), (0.09, 7.0), (0.11, 3e3)), CFG) == 3


def test_a_flat_run_collapses_after_half_its_epochs_at_chance():
    assert collapse.collapsed_at(rows(*[FLAT] * 11), CFG) is None
    assert collapse.collapsed_at(rows(*[FLAT] * 13), CFG) == 12  # 24 epochs: 12 in a row
    assert collapse.collapsed_at(rows(*[FLAT] * 8), {**CFG, "epochs": 8}) == 4
    assert collapse.collapsed_at(rows(*[FLAT] * 3), {**CFG, "epochs": 4}) == 3  # at least 3
    mixed = rows(EXPLODED, EXPLODED, FLAT, FLAT)  # exploded epochs are stalled ones too
    assert collapse.collapsed_at(mixed, {**CFG, "epochs": 8}) == 4


def test_warmup_epochs_are_not_judged():
    assert collapse.collapsed_at(rows(*[EXPLODED] * 4), {**CFG, "warmup_epochs": 2}) is None
    assert collapse.collapsed_at(rows(*[EXPLODED] * 5), {**CFG, "warmup_epochs": 1.5}) == 5


def test_a_slow_run_is_not_collapsed():
    """The measured lr 0.8 curve (docs/results/collapse-rule/lr0.1): near chance, then learning."""
    slow = rows((0.107, 2.782), (0.137, 2.422), (0.129, 2.269), (0.186, 2.184), (0.181, 2.111))
    assert collapse.collapsed_at(slow, {**CFG, "epochs": 8}) is None
    # chance accuracy while the loss is already below ln 10 is learning, not a collapse
    assert collapse.collapsed_at(rows(*[(0.11, LN10 - 0.05)] * 20), CFG) is None
    # accuracy above chance + margin with a high loss is learning too
    assert collapse.collapsed_at(rows(*[(0.13, 3.0)] * 20), CFG) is None


def test_the_measured_sweep_is_classified_as_documented():
    """The committed curves (docs/collapse.md): peak lr ≤ 0.8 learn; peak 1.6 learns over 24
    epochs but not within 8 (chance for its first 8 epochs); 3.2 does not train within 8;
    12.8 and 51.2 explode."""
    import yaml

    from conftest import ROOT

    verdicts = {}
    for run in sorted((ROOT / "docs" / "results" / "collapse-rule").glob("lr*/metrics.jsonl")):
        config = yaml.safe_load((run.parent / "config.yaml").read_text())
        verdicts[run.parent.name] = collapse.collapsed_at(rundir.read_metrics(run.parent), config)
    assert verdicts == {"lr0.025": None, "lr0.05": None, "lr0.1": None, "lr0.2": 4,
                        "lr0.2-24ep": None, "lr0.4": 4, "lr1.6": 3, "lr6.4": 3}


# ---------------------------------------------------------------------- real runs
def test_a_run_forced_to_collapse_ends_diverged_at_the_rule_epoch_and_resume_keeps_it(tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(lr=50.0, epochs=6, stop_on_collapse=True)
    summary = train(cfg, out, quiet=True)
    metrics = rundir.read_metrics(out)
    assert all(math.isfinite(r["train_loss"]) for r in metrics)  # no NaN: a collapse
    assert summary["status"] == "diverged" and summary["reason"] == "collapse"
    epoch = summary["collapsed_at_epoch"]
    # stopped at the first epoch the rule fires, judged by hand: 3 stalled epochs in a row
    chance = 0.1 + 3 * math.sqrt(0.09 / 256)
    stalled = [r["train_acc"] <= chance and r["train_loss"] >= 1.25 * LN10 for r in metrics]
    assert epoch == len(metrics) == summary["epochs_completed"] < 6
    assert stalled[-3:] == [True] * 3 and not any(
        all(stalled[i:i + 3]) for i in range(len(stalled) - 3))
    assert summary["diverged_at_step"] == epoch * 4 - 1
    saved = json.loads((out / "summary.json").read_text())
    assert (saved["status"], saved["reason"], saved["collapsed_at_epoch"]) == (
        "diverged", "collapse", epoch)
    resumed = train(cfg, out, resume=True, quiet=True)
    assert (resumed["status"], resumed["reason"], resumed["collapsed_at_epoch"]) == (
        "diverged", "collapse", epoch)
    assert len(rundir.read_metrics(out)) == epoch  # nothing trained after the collapse


def test_without_stop_on_collapse_the_run_goes_on_and_is_still_marked(tmp_path):
    summary = train(tiny_config(lr=50.0, epochs=4), tmp_path / "run", quiet=True)
    assert summary["epochs_completed"] == 4
    assert summary["status"] == "diverged" and summary["reason"] == "collapse"
    assert summary["collapsed_at_epoch"] == 3


def test_a_learning_run_completes_and_nonfinite_is_unchanged(tmp_path):
    summary = train(tiny_config(epochs=3, stop_on_collapse=True), tmp_path / "ok", quiet=True)
    assert summary["status"] == "completed" and summary["reason"] is None
    assert summary["collapsed_at_epoch"] is None and summary["epochs_completed"] == 3
    nan = train(tiny_config(lr=1e6, log_every=1, stop_on_collapse=True), tmp_path / "nan",
                quiet=True)
    assert nan["status"] == "diverged" and nan["reason"] == "nonfinite"
    assert 0 <= nan["diverged_at_step"] < 8

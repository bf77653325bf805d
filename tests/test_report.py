"""Tests of the report: numbers from hand-written fixture runs, figures, CLI errors.

    .venv/bin/python -m pytest tests/test_report.py
"""

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from batchscale.cli import main
from batchscale.results import published, scaling
from batchscale.results.report import write_report

FIXTURE = Path(__file__).parent / "fixtures" / "study-small"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("report") / "study"
    shutil.copytree(FIXTURE, out)
    path = write_report(out)
    return out, path.read_text()


T_975_1DOF = 12.7062  # Student's t, 97.5% quantile, 1 degree of freedom (printed tables)


def test_tables_state_the_fixture_numbers(report):
    _, text = report
    # trivial B=32: test 0.50 / 0.60 (std 0.0707, half-width 12.706 x 0.0707 / sqrt 2 = 0.6353),
    # last-5 (here: both) epochs 0.39 / 0.45 -> 0.42 ± 12.706 x 0.0424 / sqrt 2 = 0.3812;
    # train 0.90 / 0.92; study Table I at B = 32 x 4 = 128
    assert ("| 32 | 0.025 | 2/2 | 0.5500 ± 0.6353 | 0.4200 ± 0.3812 | 0.8734 | -0.3234 | "
            "0.9100 ± 0.1271 | 0.9909 | -0.0809 |") in text
    # the shared base-batch run appears in every recipe, against each table's own B=32 row
    assert "| 8 | 0.025 | 2/2 | 0.6300 ± 0.1271 | 0.4950 ± 0.1271 | 0.8833 | -0.2533 |" in text
    assert "| 8 | 0.025 | 2/2 | 0.6300 ± 0.1271 | 0.4950 ± 0.1271 | 0.8831 | -0.2531 |" in text
    assert "same run as trivial/b8" in text
    # linear+warmup B=32: peak lr 0.025 x 32/8
    assert "| 32 | 0.1 | 2/2 | 0.6200 ± 0.1271 | 0.4775 ± 0.0953 | 0.8824 | -0.2624 |" in text


def test_t_quantiles_and_intervals_match_printed_tables():
    from batchscale.results.collect import mean_interval, separated, t_quantile

    for dof, printed in ((1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042)):
        assert t_quantile(0.975, dof) == pytest.approx(printed, abs=6e-4)
    mean, half = mean_interval([0.5, 0.6])
    assert (mean, half) == pytest.approx((0.55, T_975_1DOF * 0.05), abs=1e-4)
    assert mean_interval([0.7]) == (0.7, None)  # one seed: no interval
    assert separated([0.50, 0.51, 0.52], [0.60, 0.61, 0.62]) is True  # ± 0.0248 each
    assert separated([0.60, 0.61, 0.62], [0.50, 0.51, 0.52]) is False
    assert separated([0.50, 0.60], [0.56, 0.57]) is None  # overlapping
    assert separated([0.5], [0.9, 0.91]) is None  # one seed: no claim


def test_diverged_run_is_marked_and_left_out_of_the_mean(report):
    _, text = report
    assert "| 32 | 0.1 | 1/2 | 0.6600 (1 seed) | 0.5100 (1 seed) | 0.8832 | -0.2232 |" in text
    assert "seed 1 diverged at step 57" in text
    assert "| per-worker-bn/b32/seed1 | diverged at step 57 | 1 | 0.2000 | 0.1500 |" in text


def test_every_run_lists_its_final_train_accuracy(report):
    _, text = report
    assert "| trivial/b8/seed1 | completed | 2 | 0.9300 | 0.6400 | 0.6400 |" in text
    assert text.count("| completed |") == 7


def test_ordering_sentence_claims_nothing_without_intervals(report):
    _, text = report
    assert ("B = 32, final test accuracy (95% interval over seeds): trivial 0.5500 ± 0.6353, "
            "linear+warmup 0.6200 ± 0.1271, per-worker-bn 0.6600 (1 seed).") in text
    assert "no ordering is claimed" in text and "**holds**" not in text


def _with_metrics(out: Path, run: str, test_accs: list[float], train=(0.9, 0.5)):
    rows = [{"epoch": e, "step": 31 * e, "lr": 0.1, "train_loss": train[1],
             "train_acc": train[0], "test_loss": 1.0, "test_acc": acc}
            for e, acc in enumerate(test_accs, start=1)]
    (out / run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = json.loads((out / run / "summary.json").read_text())
    summary.update(status="completed", diverged_at_step=None, epochs_completed=len(rows))
    (out / run / "summary.json").write_text(json.dumps(summary))


def test_ordering_is_claimed_only_where_the_intervals_separate(tmp_path):
    out = tmp_path / "study"
    shutil.copytree(FIXTURE, out)
    for recipe, accs in (("trivial", (0.30, 0.31)), ("linear+warmup", (0.60, 0.61)),
                         ("per-worker-bn", (0.90, 0.91))):
        for seed, acc in enumerate(accs):
            _with_metrics(out, f"{recipe}/b32/seed{seed}", [acc, acc])
    text = write_report(out).read_text()  # half-widths 12.706 x 0.005 = 0.0635: separated
    assert "ordering trivial < linear+warmup < per-worker-bn **holds**" in text
    _with_metrics(out, "per-worker-bn/b32/seed1", [0.62, 0.62])  # 0.76 ± 1.779: overlaps
    text = write_report(out).read_text()
    assert "**not resolved**" in text and "linear+warmup vs per-worker-bn: overlapping" in text


def test_collapsed_runs_are_named_with_the_epoch_and_left_out(tmp_path):
    out = tmp_path / "study"
    shutil.copytree(FIXTURE, out)
    run = out / "linear+warmup" / "b32" / "seed1"
    summary = json.loads((run / "summary.json").read_text())
    summary.update(status="diverged", reason="collapse", collapsed_at_epoch=2)
    (run / "summary.json").write_text(json.dumps(summary))
    # a run written before the rule: "completed", but its rows meet it (3 epochs far above ln 10
    # at chance accuracy; its config's 2 epochs need 3 exploded epochs in a row)
    _with_metrics(out, "trivial/b32/seed1", [0.1, 0.1, 0.1], train=(0.1, 9.0))
    text = write_report(out).read_text()
    assert "| 32 | 0.1 | 1/2 | 0.6100 (1 seed) |" in text  # linear+warmup: seed 0 only
    assert "seed 1 collapsed at epoch 2" in text
    assert "| linear+warmup/b32/seed1 | collapsed at epoch 2 |" in text
    assert "| trivial/b32/seed1 | collapsed at epoch 3 |" in text
    assert "| 32 | 0.025 | 1/2 | 0.5000 (1 seed) |" in text  # trivial: seed 0 only
    assert "32: 0.6100 (1/2 seeds do not train)" in text  # the scaling-limit table
    assert "- `linear+warmup/b32/seed1` (B = 32) collapsed at epoch 2" in text
    for seed in (0, 1):  # every run of a batch size collapsed: that batch does not train
        _with_metrics(out, f"trivial/b32/seed{seed}", [0.1, 0.1, 0.1], train=(0.1, 9.0))
    assert "| trivial | 8: 0.6300, 32: does not train | 8 | 1× | 8 ✓, 32 ✗ |" in write_report(
        out).read_text()


def test_figures_are_written_and_non_empty(report):
    out, text = report
    for name in ("curves.png", "final_vs_batch.png", "comparison.png", "steps_to_target.png"):
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000, name
        assert f"]({name})" in text


def test_published_lookup_picks_rows_by_lr_and_weight_decay():
    assert published.lookup("III", 2048).test_acc == 0.8759
    assert published.lookup("IV", 128, lr=0.01).test_acc == 0.7572
    assert published.lookup("V", 128, weight_decay=0.5).test_acc == 0.8653
    assert published.lookup("I", 4096) is None
    assert len(published.rows("VII")) == 7


def test_report_command(tmp_path, capsys):
    out = tmp_path / "study"
    shutil.copytree(FIXTURE, out)
    assert main(["report", str(out)]) == 0
    assert str(out / "report.md") in capsys.readouterr().out


def test_report_of_a_missing_directory_is_one_line_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no study directory" in err


def test_scaling_limit_is_the_largest_batch_within_one_percent(report):
    _, text = report
    # reference: trivial at B = 8, (0.62 + 0.64) / 2 = 0.63; within 1% means >= 0.62
    assert "mean final test accuracy 0.6300" in text and "at least 0.6200" in text
    # two seeds: t(0.975, 1) = 12.71 makes every interval wide, so no B is resolved; the
    # per-worker-bn run at 32 with one trained seed claims nothing either
    assert "| trivial | 8: 0.6300, 32: 0.5500 | 8 | 1× | 8 ✓, 32 ? | 128 | 4× |" in text
    assert "| linear+warmup | 8: 0.6300, 32: 0.6200 | 32 | 4× | 8 ✓, 32 ? | 1024 | 32× |" in text
    assert ("| per-worker-bn | 8: 0.6300, 32: 0.6600 (1/2 seeds do not train) | 32 | 4× | "
            "8 ✓, 32 ? | 2048 | 64× |") in text


def test_the_intervals_column_claims_only_what_the_seeds_separate():
    from batchscale.results.limits import interval_claim

    # reference 0.60/0.62/0.64: mean 0.62, half-width t(0.975, 2) 0.02 / √3 = 0.0497, so the
    # 1% band is [0.5603, 0.6597]
    reference = [0.60, 0.62, 0.64]
    assert interval_claim([0.72, 0.73, 0.74], reference) == "✓"  # 0.73 − 0.0497 ≥ 0.6597
    assert interval_claim([0.66, 0.67, 0.68], reference) == "?"  # above on the mean, overlapping
    assert interval_claim([0.48, 0.49, 0.50], reference) == "✗"  # 0.49 + 0.0497 < 0.5603
    assert interval_claim([0.60, 0.61, 0.62], reference) == "?"
    assert interval_claim([0.90], reference) == "?"  # one seed: no claim
    # no spread: the band is the point 0.59, and the boundary counts as within
    assert interval_claim([0.59] * 3, [0.60] * 3) == "✓"
    assert interval_claim([0.58] * 3, [0.60] * 3) == "✗"


def test_study_limits_from_the_published_tables():
    from batchscale.results.limits import largest_within, study_limit

    # Table I falls to 0.8571 at 256 (> 1% below 0.8833); Table III holds 0.8759 at 2048
    assert study_limit("I") == (128, 0.8833)
    assert study_limit("II")[0] == 1024 and study_limit("III")[0] == 2048
    assert largest_within([(4, 0.5), (8, 0.49), (16, 0.3), (32, 0.495)], 0.5) == 32
    assert largest_within([(4, None), (8, 0.2)], 0.5) is None


def test_the_noise_plot_keeps_epochs_aligned_across_seeds(tmp_path):
    """An undefined epoch is a gap in that epoch, not a shift of the later epochs (it was: the
    undefined epochs were dropped, so the 2nd defined value was drawn at epoch 2)."""
    rows = [{"noise_b_simple": b, "noise_grad_sq": g, "noise_trace_sigma": 1.0}
            for b, g in ((None, -1.0), (None, -1.0), (5.0, 0.2))]
    run = SimpleNamespace(directory="r", metrics=rows)
    cell = SimpleNamespace(completed=[run, run], values=lambda key: [0.5, 0.5])
    assert scaling.measurements(tmp_path, cell)["noise"] == [[None, None, 5.0]] * 2
    assert scaling.epoch_mean([None, 4.0]) == 4.0 and scaling.epoch_mean([2.0, 4.0]) == 3.0
    assert math.isnan(scaling.epoch_mean([None, None]))

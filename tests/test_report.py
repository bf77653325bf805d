"""Tests of the report: numbers from hand-written fixture runs, figures, CLI errors.

    .venv/bin/python -m pytest tests/test_report.py
"""

import shutil
from pathlib import Path

import pytest

from batchscale.cli import main
from batchscale.results import published
from batchscale.results.report import write_report

FIXTURE = Path(__file__).parent / "fixtures" / "study-small"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("report") / "study"
    shutil.copytree(FIXTURE, out)
    path = write_report(out)
    return out, path.read_text()


def test_tables_state_the_fixture_numbers(report):
    _, text = report
    # trivial B=32: test 0.50 / 0.60, train 0.90 / 0.92; study Table I at B = 32 x 4 = 128
    assert ("| 32 | 0.025 | 2/2 | 0.5500 ± 0.0707 | 0.8734 | -0.3234 | "
            "0.9100 ± 0.0141 | 0.9909 | -0.0809 |") in text
    # the shared base-batch run appears in every recipe, against each table's own B=32 row
    assert "| 8 | 0.025 | 2/2 | 0.6300 ± 0.0141 | 0.8833 | -0.2533 |" in text
    assert "| 8 | 0.025 | 2/2 | 0.6300 ± 0.0141 | 0.8831 | -0.2531 |" in text
    assert "same run as trivial/b8" in text
    # linear+warmup B=32: peak lr 0.025 x 32/8
    assert "| 32 | 0.1 | 2/2 | 0.6200 ± 0.0141 | 0.8824 | -0.2624 |" in text


def test_diverged_run_is_marked_and_left_out_of_the_mean(report):
    _, text = report
    assert "| 32 | 0.1 | 1/2 | 0.6600 | 0.8832 | -0.2232 | 0.9600 |" in text
    assert "seed 1 diverged at step 57" in text
    assert "| per-worker-bn/b32/seed1 | diverged at step 57 | 1 | 0.2000 | 0.1500 |" in text


def test_every_run_lists_its_final_train_accuracy(report):
    _, text = report
    assert "| trivial/b8/seed1 | completed | 2 | 0.9300 | 0.6400 | 0.6400 |" in text
    assert text.count("| completed |") == 7


def test_ordering_sentence_is_computed_from_the_numbers(report):
    _, text = report
    assert "B = 32, the study's ordering trivial < linear+warmup < per-worker BN **holds**" in text
    assert "trivial 0.5500, linear+warmup 0.6200 (+0.0700), per-worker BN 0.6600 (+0.0400)" in text
    # pooled std: sqrt(mean(0.005, 0.0002)) = 0.0510; gaps 0.07 / 0.051 and 0.04 / 0.051
    assert "is 0.0510, so the gaps are +1.4 and +0.8 standard deviations" in text


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
    assert "| trivial | 8: 0.6300, 32: 0.5500 | 8 | 1× | 128 | 4× |" in text
    assert "| linear+warmup | 8: 0.6300, 32: 0.6200 | 32 | 4× | 1024 | 32× |" in text
    assert "| per-worker-bn | 8: 0.6300, 32: 0.6600 | 32 | 4× | 2048 | 64× |" in text


def test_study_limits_from_the_published_tables():
    from batchscale.results.limits import largest_within, study_limit

    # Table I falls to 0.8571 at 256 (> 1% below 0.8833); Table III holds 0.8759 at 2048
    assert study_limit("I") == (128, 0.8833)
    assert study_limit("II")[0] == 1024 and study_limit("III")[0] == 2048
    assert largest_within([(4, 0.5), (8, 0.49), (16, 0.3), (32, 0.495)], 0.5) == 32
    assert largest_within([(4, None), (8, 0.2)], 0.5) is None

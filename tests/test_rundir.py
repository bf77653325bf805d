"""Tests of the run directory's safety: what --overwrite deletes, the lock a run holds, and the
resume rules (metrics against the checkpoint, a different number of epochs)."""

import json
import os

import pytest
import yaml

from batchscale import files
from batchscale.cli import main
from batchscale.config import dump_yaml
from batchscale.engine import rundir
from batchscale.engine.lock import LOCK_NAME, FolderLock
from batchscale.engine.train import train
from batchscale.errors import UserError

from conftest import tiny_config


# ---------------------------------------------------------------------- --overwrite
def fake_run(folder, *extra):
    folder.mkdir(parents=True)
    dump_yaml(tiny_config(), folder / rundir.CONFIG)
    for name in ("metrics.jsonl", "summary.json", "checkpoint.pt", ".checkpoint.pt.12.tmp",
                 "landscape.json", "hessian.json", "landscape.png", "train.log", *extra):
        (folder / name).write_text("x")
    (folder / "tb").mkdir()
    (folder / "tb" / "events").write_text("x")


def test_overwrite_deletes_only_a_run_directory(tmp_path):
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.tex").write_text("years of work")
    with pytest.raises(UserError, match="not a run directory.*no config.yaml"):
        rundir.create(thesis, overwrite=True)
    assert (thesis / "thesis.tex").read_text() == "years of work"

    fake_run(tmp_path / "mixed", "thesis.tex")  # a run's files and one of the user's
    with pytest.raises(UserError, match="holds thesis.tex"):
        rundir.create(tmp_path / "mixed", overwrite=True)

    study = tmp_path / "study"  # a study root: run directories below it, not a run
    fake_run(study / "trivial" / "b32" / "seed0")
    (study / "study.yaml").write_text("preset: demo\n")
    with pytest.raises(UserError, match="not a run directory"):
        rundir.create(study, overwrite=True)
    assert (study / "trivial" / "b32" / "seed0" / rundir.CONFIG).exists()

    fake_run(tmp_path / "run")
    (tmp_path / "run" / LOCK_NAME).write_text("{}")
    rundir.create(tmp_path / "run", overwrite=True)
    assert [p.name for p in (tmp_path / "run").iterdir()] == [LOCK_NAME]  # the lock stays


def test_overwrite_refusal_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("years of work")
    assert main(["train", "--out", str(tmp_path), "--overwrite", "--width", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a run directory" in err
    assert (tmp_path / "thesis.tex").exists()


# ---------------------------------------------------------------------- the run's lock
def test_a_run_directory_in_use_is_refused(tmp_path):
    with FolderLock(tmp_path / "run", "another train"):
        with pytest.raises(UserError, match="in use by another train"):
            train(tiny_config(), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------- metrics vs checkpoint
def test_metrics_lines(tmp_path):
    (tmp_path / rundir.METRICS).write_text('{"epoch": 1}\n{"epoch": 2, "tra')
    assert rundir.read_metrics(tmp_path) == [{"epoch": 1}]  # the cut last line is dropped
    (tmp_path / rundir.METRICS).write_text('{"epoch": 1}\ngarbage\n{"epoch": 3}\n')
    with pytest.raises(UserError, match="line 2"):
        rundir.read_metrics(tmp_path)


def test_resume_with_a_cut_metrics_line_and_with_lost_metrics(tmp_path):
    cfg = tiny_config(train_subset=256, batch_size=64, epochs=2)  # 4 steps an epoch
    run = tmp_path / "run"
    assert train(cfg, run, quiet=True, stop_at_step=6)["status"] == "interrupted"
    with open(run / rundir.METRICS, "a") as handle:  # killed while appending epoch 2's row
        handle.write('{"epoch": 2, "step": 8, "lr": 0.0')
    summary = train(cfg, run, resume=True, quiet=True)
    assert (summary["status"], summary["epochs_completed"]) == ("completed", 2)
    assert [r["epoch"] for r in rundir.read_metrics(run)] == [1, 2]

    (run / rundir.METRICS).unlink()  # the checkpoint is at epoch 2, the metrics are gone
    with pytest.raises(UserError, match="holds 0 epoch rows but the checkpoint is at epoch 2"):
        train(cfg, run, resume=True, quiet=True)
    assert json.loads((run / rundir.SUMMARY).read_text())["epochs_completed"] == 2


# ---------------------------------------------------------------------- a different length
def test_resume_with_more_epochs_needs_extend_epochs(tmp_path, capsys):
    out = str(tmp_path / "run")
    tiny = ["--width", "4", "--train-subset", "256", "--batch-size", "64", "--threads", "2",
            "--quiet"]
    assert main(["train", "--out", out, "--epochs", "1", *tiny]) == 0
    assert main(["train", "--out", out, "--resume", "--epochs", "2"]) == 2
    assert "--extend-epochs" in capsys.readouterr().err
    assert main(["train", "--out", out, "--resume", "--epochs", "2", "--extend-epochs",
                 "--quiet"]) == 0
    assert yaml.safe_load((tmp_path / "run" / rundir.CONFIG).read_text())["epochs"] == 2
    rows = rundir.read_metrics(tmp_path / "run")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["lr"] == rows[0]["lr"]  # the step schedule goes on where it was
    summary = json.loads((tmp_path / "run" / rundir.SUMMARY).read_text())
    assert (summary["status"], summary["epochs_completed"]) == ("completed", 2)


@pytest.mark.parametrize("schedule", ["cosine", "poly"])
def test_length_shaped_schedules_are_not_extended(tmp_path, schedule):
    tmp_path.joinpath("run").mkdir()
    dump_yaml(tiny_config(schedule=schedule, epochs=2), tmp_path / "run" / rundir.CONFIG)
    with pytest.raises(UserError, match=f"{schedule} schedule"):
        rundir.extend_epochs(tmp_path / "run", tiny_config(schedule=schedule, epochs=3), True)
    with pytest.raises(UserError, match="only lengthens"):
        rundir.extend_epochs(tmp_path / "run", tiny_config(schedule=schedule, epochs=1), True)
    with pytest.raises(UserError, match="different length is a different recipe"):
        rundir.extend_epochs(tmp_path / "run", tiny_config(schedule=schedule, epochs=3), False)
    assert yaml.safe_load((tmp_path / "run" / rundir.CONFIG).read_text())["epochs"] == 2


def test_text_files_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """Reports, plans, analysis JSON and configs go through files.write_text: a kill before the
    new text is on disk leaves the old file, and no temporary beside it."""
    path = tmp_path / "report.md"
    files.write_text(path, "old\n")

    def killed(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        files.write_text(path, "new\n" * 1000)
    assert path.read_text() == "old\n" and list(tmp_path.iterdir()) == [path]

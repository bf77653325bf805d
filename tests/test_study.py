"""Tests of studies: presets and grid expansion, the sweep runner (skip, resume, failures), CLI.

    .venv/bin/python -m pytest tests/test_study.py

The sweep tests train real runs of a tiny config (width 4, 200 images, 1 epoch): seconds each.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from batchscale.cli import main
from batchscale.config import from_dict
from batchscale.engine import rundir
from batchscale.engine.lock import FolderLock
from batchscale.engine.train import train
from batchscale.errors import UserError
from batchscale.results.report import write_report
from batchscale.study.expand import (
    dry_run_table,
    expand,
    load_preset,
    plan_document,
    preset_names,
    settings,
    train_images,
    unique_runs,
)
from batchscale.study.sweep import child_env, execute

from conftest import PATIENCE_S, ROOT

TINY = {"width": 4, "train_subset": 200, "epochs": 1, "eval_batch_size": 500, "device": "cpu"}


# ---------------------------------------------------------------------- presets and the grid
def test_every_preset_expands_to_valid_runs():
    for name in preset_names():
        preset = load_preset(name)
        runs = expand(preset)
        sizes = [len(preset["recipes"][r].get("batch_sizes", preset["batch_sizes"]))
                 for r in preset["use_recipes"]]  # a recipe may name its own batch sizes
        assert len(runs) == sum(sizes) * preset["seeds"], name
        assert {r.name for r in runs} == {f"{r.recipe}/b{r.batch_size}/seed{r.seed}"
                                          for r in runs}


def test_table3_settings_match_the_study():
    rows = [settings(r) for r in expand(load_preset("table3"))]
    assert [r["B"] for r in rows] == [32, 64, 128, 256, 512, 1024, 2048]
    assert [r["peak_lr"] for r in rows] == pytest.approx([0.025 * b / 32 for b in
                                                          [32, 64, 128, 256, 512, 1024, 2048]])
    assert rows[-1]["peak_lr"] == pytest.approx(1.6)
    assert all(r["warmup_epochs"] == 10 and r["G"] == 32 for r in rows)
    assert [r["warmup_steps"] for r in rows] == [10 * (50000 // b) for b in
                                                 [32, 64, 128, 256, 512, 1024, 2048]]
    cfg = expand(load_preset("table3"))[0].cfg
    assert (cfg.epochs, cfg.decay_every, cfg.decay_factor, cfg.momentum, cfg.weight_decay) == (
        200, 50, 0.1, 0.9, 5e-4)


def test_tables_1_2_and_divergence_settings():
    assert {settings(r)["peak_lr"] for r in expand(load_preset("table1"))} == {0.025}
    assert all(settings(r)["warmup_epochs"] == 0 for r in expand(load_preset("table1")))
    assert all(settings(r)["G"] == r.batch_size for r in expand(load_preset("table2")))
    (run,) = expand(load_preset("diverge4096"))
    assert (run.batch_size, run.cfg.peak_lr, run.cfg.group_size) == (4096, pytest.approx(3.2), 32)


def test_rmsprop_presets():
    lrs = [r.cfg.peak_lr for r in expand(load_preset("table4"))]
    assert lrs == pytest.approx([0.1, 0.01, 0.001, 0.0001])
    assert {r.cfg.weight_decay for r in expand(load_preset("table4"))} == {0.1}
    assert [r.cfg.weight_decay for r in expand(load_preset("table5"))] == [0.1, 0.5, 0.05, 0.01]
    assert {r.cfg.peak_lr for r in expand(load_preset("table6"))} == {0.001}
    table7 = expand(load_preset("table7"))
    assert [r.cfg.peak_lr for r in table7] == pytest.approx(
        [0.001 * b / 128 for b in [32, 64, 128, 256, 512, 1024, 2048]])
    assert all(r.cfg.optimizer == "rmsprop" and r.cfg.group_size == 32 for r in table7)


def test_mini_preset_stays_in_the_study_regime():
    runs = expand(load_preset("mini"))
    sizes = sorted({r.batch_size for r in runs})
    images = train_images(runs[0].cfg)
    assert sizes[-1] <= 0.04 * images and sizes[-1] / sizes[0] >= 16
    largest = [settings(r) for r in runs if r.batch_size == sizes[-1]]
    assert all(s["total_steps"] >= 200 for s in largest)
    assert all(s["warmup_steps"] >= 24 for s in largest if s["warmup_epochs"])
    assert len({r.seed for r in runs}) >= 3  # a 95% interval that can separate recipes
    assert len({r.seed for r in expand(load_preset("beyond-mini"))}) >= 3


def test_equivalent_runs_are_trained_once():
    runs = expand(load_preset("demo"))
    smallest = [r for r in runs if r.batch_size == 32 and r.seed == 0]
    assert {r.directory for r in smallest} == {"trivial/b32/seed0"}
    assert len(unique_runs(runs)) == len(runs) - 2 * 2  # two recipes x two seeds shared


def test_overrides_and_seeds():
    runs = expand(load_preset("table3"), seeds=3, overrides={"width": 16})
    assert len(runs) == 21 and {r.cfg.width for r in runs} == {16}
    assert {r.seed for r in runs} == {0, 1, 2}


def test_threads_are_cores_shared_among_jobs(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert {r.cfg.threads for r in expand(load_preset("demo"), jobs=4)} == {2}


def test_dry_run_lists_runs_and_settings(capsys):
    assert main(["study", "table3", "--dry-run", "--out", "/nonexistent/x"]) == 0
    out = capsys.readouterr().out
    assert "per-worker-bn/b2048/seed0" in out and "1.6" in out and "new" in out


@pytest.mark.parametrize("argv, message", [
    (["study", "nosuchpreset"], "unknown preset 'nosuchpreset'"),
    (["study", "table3", "--dry-run", "--set", "widht=8"], "unknown config field 'widht'"),
    (["study", "table3", "--dry-run", "--set", "width=wide"], "width must be int"),
    (["study", "table3", "--dry-run", "--set", "width"], "--set expects FIELD=VALUE"),
    (["study", "table3", "--dry-run", "--bogus"], "unrecognized arguments"),
])
def test_user_errors_are_one_line_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_list_shows_the_presets(capsys):
    assert main(["study", "--list"]) == 0
    out = capsys.readouterr().out
    assert "table3" in out and "mini" in out and "_base" not in out


# ---------------------------------------------------------------------- the sweep
def tiny_preset(batch_sizes=(32, 64)) -> dict:
    preset = load_preset("demo")
    preset.update(use_recipes=["trivial"], batch_sizes=list(batch_sizes), seeds=1)
    return preset


def tiny_runs(batch_sizes=(32, 64)):
    return expand(tiny_preset(batch_sizes), overrides={**TINY, "threads": 1})


def test_interrupted_sweep_resumes_only_the_rest(tmp_path):
    runs = tiny_runs()
    first = execute(runs, tmp_path, stop_after=1)
    assert first["completed"] == 1
    done = tmp_path / runs[0].directory / rundir.SUMMARY
    assert json.loads(done.read_text())["status"] == "completed"
    assert not (tmp_path / runs[1].directory).exists()
    stamp = done.stat().st_mtime_ns
    second = execute(runs, tmp_path)
    assert (second["skipped"], second["completed"]) == (1, 1)
    assert done.stat().st_mtime_ns == stamp  # the finished run was not touched


def test_interrupted_run_is_resumed_not_restarted(tmp_path):
    (run,) = tiny_runs((32,))
    summary = train(run.cfg, tmp_path / run.directory, quiet=True, stop_at_step=2)
    assert summary["status"] == "interrupted"
    counts = execute([run], tmp_path)
    assert counts["completed"] == 1
    log = (tmp_path / "logs" / "trivial_b32_seed0.log").read_text()
    assert "# resume" in log
    assert len(rundir.read_metrics(tmp_path / run.directory)) == 1


def test_a_resumed_run_takes_the_how_settings_of_the_study_that_resumes_it(tmp_path):
    """`--set tensorboard=true` (or threads, device...) on the rerun reaches the resumed run."""
    pytest.importorskip("tensorboard", reason="needs the tensorboard extra (make test has it)")
    (run,) = tiny_runs((32,))
    train(run.cfg, tmp_path / run.directory, quiet=True, stop_at_step=2)
    (again,) = expand(tiny_preset((32,)), overrides={**TINY, "threads": 1, "tensorboard": True})
    assert execute([again], tmp_path)["completed"] == 1
    assert list((tmp_path / run.directory / "tb").iterdir())


def test_a_failed_run_does_not_stop_the_sweep(tmp_path):
    runs = tiny_runs((256, 32))  # 256 > the 200 training images: that run fails
    counts = execute(runs, tmp_path, jobs=2)
    assert (counts["failed"], counts["completed"]) == (1, 1)
    status = json.loads((tmp_path / "trivial/b32/seed0" / rundir.SUMMARY).read_text())["status"]
    assert status == "completed"


def test_changed_settings_are_refused(tmp_path):
    (run,) = tiny_runs((32,))
    execute([run], tmp_path)
    (changed,) = expand(tiny_preset((32,)), overrides={**TINY, "threads": 1, "width": 8})
    with pytest.raises(UserError, match="width"):
        execute([changed], tmp_path)


def test_train_images_without_loading_data():
    assert train_images(from_dict({"dataset": "sample"})) == 5000
    assert train_images(from_dict({"dataset": "cifar10", "train_subset": 10000})) == 10000
    zip_path = Path(__file__).parents[1] / "batchscale" / "engine" / "sample" / "cifar10-sample.zip"
    assert train_images(from_dict({"dataset": str(zip_path)})) == 5000


def test_dry_run_table_marks_shared_and_finished_runs(tmp_path):
    text = dry_run_table(expand(load_preset("demo")), tmp_path)
    assert "= trivial/b32/seed0" in text


# ---------------------------------------------------------------------- trust: the study folder
def test_a_second_study_on_one_folder_is_refused(tmp_path, capsys):
    with FolderLock(tmp_path, "batchscale study"):  # as a running study holds it
        assert main(["study", "demo", "--out", str(tmp_path), "--set", "width=4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "in use by batchscale study" in err
    assert not (tmp_path / "study.yaml").exists()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_killing_the_study_ends_its_runs(tmp_path):
    study = subprocess.Popen(
        [sys.executable, "-m", "batchscale", "study", "demo", "--out", str(tmp_path),
         "--jobs", "2", "--no-report", "--set", "width=4", "--set", "train_subset=256",
         "--set", "epochs=50", "--set", "threads=1"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: list[int] = []
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline:  # until both runs have started (each holds its run dir)
        children = _children(study.pid)
        if len(children) == 2 or study.poll() is not None:
            break
        time.sleep(0.1)
    assert len(children) == 2, "the study did not start its runs"
    study.kill()  # SIGKILL: the study cannot pass anything on itself
    study.wait()
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline:  # a liveness wait: each stops at its next step
        if not any(_alive(pid) for pid in children):
            break
        time.sleep(0.1)
    survivors = [pid for pid in children if _alive(pid)]
    for pid in survivors:  # leave no orphans behind when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not survivors


def test_changed_epochs_are_refused_unless_extended(tmp_path, capsys):
    (run,) = tiny_runs((32,))
    execute([run], tmp_path)
    assert "logs" in capsys.readouterr().out  # the start line says where each run's log is
    (longer,) = expand(tiny_preset((32,)), overrides={**TINY, "threads": 1, "epochs": 2})
    with pytest.raises(UserError, match="pass --extend"):
        execute([longer], tmp_path)
    counts = execute([longer], tmp_path, extend=True)
    assert (counts["skipped"], counts["completed"]) == (0, 1)
    directory = tmp_path / run.directory
    assert [r["epoch"] for r in rundir.read_metrics(directory)] == [1, 2]
    assert "epochs: 2\n" in (directory / rundir.CONFIG).read_text()
    assert execute([longer], tmp_path)["skipped"] == 1  # now it matches the plan

    # the report lists planned runs that are missing or have no metrics, and counts neither
    planned = expand(tiny_preset((32, 64, 128)), overrides={**TINY, "threads": 1, "epochs": 2})
    empty = tmp_path / "trivial" / "b128" / "seed0"
    empty.mkdir(parents=True)
    (empty / rundir.CONFIG).write_text((directory / rundir.CONFIG).read_text()
                                       .replace("batch_size: 32", "batch_size: 128"))
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(plan_document(
        tiny_preset((32, 64, 128)), planned, {"epochs": 2})))
    report = write_report(tmp_path).read_text()
    assert "**Missing runs** (2;" in report
    assert "trivial/b64/seed0 (no run directory)" in report
    assert "trivial/b128/seed0 (no metrics" in report
    assert "--set epochs=2" in report  # the description says the preset was changed


def test_plan_records_overrides():
    preset = tiny_preset((32,))
    runs = expand(preset, overrides={"width": 4})
    plan = plan_document(preset, runs, {"width": 4})
    assert plan["overrides"] == {"width": 4}
    assert plan["description"].startswith(preset["description"].rstrip())
    assert "changed for this study with --set width=4" in plan["description"]
    assert plan_document(preset, runs)["description"] == preset["description"]


def test_openmp_waits_passively_only_where_runs_share_cores(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr("batchscale.study.sweep.cores", lambda: 4)
    assert "OMP_WAIT_POLICY" not in child_env(jobs=2, threads=2)
    assert child_env(jobs=2, threads=4)["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's choice stays
    assert child_env(jobs=4, threads=4)["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    result = subprocess.run([sys.executable, "-c", "import os, batchscale; "
                             "print(os.environ.get('OMP_WAIT_POLICY'))"], cwd=ROOT,
                            capture_output=True, text=True, timeout=PATIENCE_S)
    assert result.stdout.strip() == "None"

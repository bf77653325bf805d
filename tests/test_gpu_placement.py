"""A study's runs on the GPUs: round robin, K per GPU, W GPUs for a W-worker run (fake GPUs)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from batchscale.cli import main
from batchscale.errors import UserError
from batchscale.study import sweep
from batchscale.study.expand import expand, load_preset
from batchscale.study.gpus import Placement, assign, check_fits, gpus_needed, visible_gpus

from conftest import tiny_config


def starts(gpus: int, per_gpu: int, needed: list[int]) -> list[list[int] | None]:
    """Where runs needing `needed` GPUs each land, started one after another, none ending."""
    placement = Placement([str(i) for i in range(gpus)], per_gpu)
    return [placement.take(tiny_config(device="auto", workers=w, batch_size=64)) for w in needed]


def test_one_run_per_gpu_round_robin_then_wait():
    assert starts(3, 1, [1, 1, 1, 1]) == [[0], [1], [2], None]


def test_k_runs_per_gpu_fill_every_gpu_once_before_any_twice():
    assert starts(2, 2, [1] * 5) == [[0], [1], [0], [1], None]
    assert starts(1, 4, [1] * 5) == [[0], [0], [0], [0], None]


def test_a_run_with_w_workers_gets_w_gpus():
    assert starts(4, 1, [2, 1, 2]) == [[0, 1], [2], None]
    assert assign([1, 0, 0, 1], 2, 1) == [1, 2]
    assert assign([0, 1], 2, 2) == [0, 1]


def test_a_finished_run_frees_its_gpus():
    placement = Placement(["0", "1"], 1)
    cfg = tiny_config(device="auto")
    first, second = placement.take(cfg), placement.take(cfg)
    assert placement.take(cfg) is None
    placement.release(first)
    assert placement.take(cfg) == first and second == [1]


def test_cpu_runs_and_gpuless_machines_are_not_placed():
    assert gpus_needed(tiny_config(device="cpu", workers=2)) == 0
    assert Placement(["0"], 1).take(tiny_config(device="cpu")) == []
    assert Placement([], 1).take(tiny_config(device="auto")) == []
    assert "CUDA_VISIBLE_DEVICES" not in Placement([], 1).environment([], base={"A": "1"})


def test_the_childs_cuda_visible_devices_names_the_parents_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert visible_gpus({}) == ["0", "1"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "5, 7"}) == ["5", "7"]
    placement = Placement(visible_gpus({"CUDA_VISIBLE_DEVICES": "5,7"}), 1)
    env = placement.environment(placement.take(tiny_config(device="auto")), base={"A": "1"})
    assert env == {"A": "1", "CUDA_VISIBLE_DEVICES": "5"}


def test_a_run_needing_more_gpus_than_visible_is_refused_up_front():
    with pytest.raises(UserError, match="workers=4 needs 4 GPUs, 2 are visible"):
        check_fits([1, 4], 2, 1)
    with pytest.raises(UserError, match="at least 1"):
        check_fits([1], 2, 0)
    check_fits([4], 0, 1)  # no GPUs: the runs' own device checks speak


def test_the_sweep_hands_each_run_its_gpu(monkeypatch, tmp_path):
    """The sweep with two fake GPUs and K = 2: four runs at once, two on each GPU, each run's
    process started with its CUDA_VISIBLE_DEVICES (the runs themselves are stand-ins)."""
    monkeypatch.setattr(sweep, "visible_gpus", lambda: ["0", "1"])
    seen = []

    def fake_start(run, out, jobs=1, gpu_env=None):
        seen.append(gpu_env["CUDA_VISIBLE_DEVICES"])
        process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"])
        return sweep.Active(run, process, open(tmp_path / f"{len(seen)}.log", "w"))

    monkeypatch.setattr(sweep, "start", fake_start)
    preset = load_preset("demo")
    preset.update(use_recipes=["trivial"], batch_sizes=[32, 64, 128, 256], seeds=1)
    runs = expand(preset, overrides={"width": 4, "device": "auto", "threads": 1})
    counts = sweep.execute(runs, tmp_path / "study", jobs=8, runs_per_gpu=2)
    assert sorted(seen) == ["0", "0", "1", "1"] and seen[:2] == ["0", "1"]
    assert counts["failed"] == 4  # the stand-ins write no summary


def test_runs_per_gpu_is_a_study_option(capsys, tmp_path):
    assert main(["study", "table3", "--dry-run", "--runs-per-gpu", "2"]) == 0
    capsys.readouterr()
    assert main(["study", "table3", "--runs-per-gpu", "0", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--runs-per-gpu must be at least 1" in err
    assert not (tmp_path / "s").exists()

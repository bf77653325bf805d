"""Local SGD: the one-process simulation takes the same steps as two real gloo workers (float64,
parameters, BN buffers and momentum, across a synchronous phase and several sync periods), the
sync counts are those worked out by hand, and runs resume exactly mid-period after SIGTERM and
SIGKILL, simulated and real; batch growth resumes exactly across a growth point."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_distributed import ENV, config, data, free_port, without_timing, worker_pids

from batchscale.config import config_flags
from batchscale.engine import checkpoint, distributed, localsgd, rundir
from batchscale.engine.data import EpochLoader
from batchscale.engine.optim import set_lr
from batchscale.engine.setup import build
from batchscale.engine.train import PAUSE_ENV, Position, train
from batchscale.errors import UserError

from conftest import PATIENCE_S, tiny_config

__all__ = ["data"]  # the fixture: 256 training images as a zip every process reads fast
pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch without distributed")

# 64 images a step, 4 steps an epoch; synchronous in epoch 0, local from global step 4 with
# H = 4: averages after steps 7, 11 and 15. Snapshots after 12 steps (just averaged) and after
# 14 (mid-period: every worker on its own).
LOCAL = dict(batch_size=64, epochs=4, local_steps=4, local_start_epoch=1)
SNAPSHOTS = (12, 14)


def worker_state(model, optimizer) -> dict:
    """Parameters, BN buffers and momentum buffers of one worker, by name."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    names = dict(enumerate(n for n, p in model.named_parameters()))
    for index, slot in optimizer.state_dict()["state"].items():
        state["momentum:" + names[index]] = slot["momentum_buffer"].clone()
    return state


def drive(cfg, steps: int, world_size: int = 1, rank: int = 0) -> dict:
    """Every worker's state after each of SNAPSHOTS float64 steps: real (this rank's) or
    simulated (all replicas), through the training loop's step."""
    setup = build(cfg, progress=False, world_size=world_size, rank=rank)
    setup.model.double()
    setup.train_model = distributed.wrap(setup.model, setup.device, cfg.sync_bn)
    setup.local = localsgd.attach(setup, Position())
    found = {}
    for step in range(steps):
        epoch, within = divmod(step, setup.plan.steps_per_epoch)
        loader = EpochLoader(setup.train, cfg.batch_size, cfg.seed, epoch, rank=rank,
                             world_size=world_size)
        images, labels = loader.batch(within)
        set_lr(setup.optimizer, setup.plan.lr_at(step))
        localsgd.train_step(setup, images.double(), labels, step)
        if step + 1 in SNAPSHOTS:
            workers = localsgd.workers_of(setup, setup.local) if cfg.local_workers else [
                (setup.model, setup.optimizer)]
            found[step + 1] = [worker_state(m, o) for m, o in workers]
    return found


def _worker(rank: int, port: int, data_path: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2,
                            timeout=timedelta(seconds=PATIENCE_S))
    try:
        torch.save(drive(config(data_path, **LOCAL), max(SNAPSHOTS), 2, rank),
                   Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def real(data, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("real")
    context = mp.start_processes(_worker, args=(free_port(), data, str(out)), nprocs=2,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + PATIENCE_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError(f"the spawned workers did not finish in {PATIENCE_S} s")
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


def test_simulated_workers_take_the_same_steps_as_two_real_workers(real, data):
    simulated = drive(config(data, **LOCAL, local_workers=2), max(SNAPSHOTS))
    for when in SNAPSHOTS:
        for rank in range(2):
            mine, theirs = simulated[when][rank], real[rank][when][0]
            assert set(mine) == set(theirs)
            for name in mine:
                torch.testing.assert_close(mine[name], theirs[name], rtol=1e-6, atol=1e-12,
                                           msg=lambda m, n=name, w=when: f"{n} at {w}: {m}")
    just_averaged, apart = simulated[12], simulated[14]
    buffers = [n for n in apart[0] if n.endswith("running_mean")]
    assert buffers
    for name in ("fc.weight", *buffers):  # the average reached parameters and BN statistics
        assert torch.equal(just_averaged[0][name], just_averaged[1][name])
        assert not torch.equal(apart[0][name], apart[1][name])  # local steps: each its own
    # momentum is never averaged: it differs even right after an average
    assert not torch.equal(just_averaged[0]["momentum:fc.weight"],
                           just_averaged[1]["momentum:fc.weight"])


def test_synchronous_phase_keeps_the_workers_equal_but_their_bn_statistics(data):
    states = drive(config(data, **{**LOCAL, "local_start_epoch": 3}, local_workers=2), 12)[12]
    assert torch.equal(states[0]["fc.weight"], states[1]["fc.weight"])
    assert torch.equal(states[0]["momentum:fc.weight"], states[1]["momentum:fc.weight"])
    assert not torch.equal(states[0]["stem.1.running_mean"], states[1]["stem.1.running_mean"])


def test_syncs_and_bytes_per_epoch_are_counted_by_hand(tmp_path):
    # 4 steps an epoch; local from epoch 1 (step 4), H = 3: averages after steps 6, 9
    cfg = tiny_config(epochs=3, local_workers=2, local_steps=3, local_start_epoch=1)
    train(cfg, tmp_path / "run", quiet=True)
    rows = rundir.read_metrics(tmp_path / "run")
    setup = build(cfg, progress=False)
    params = sum(p.numel() * 4 for p in setup.model.parameters())
    buffers = sum(b.numel() * 4 for b in setup.model.buffers() if b.is_floating_point())
    assert [r["syncs"] for r in rows] == [4, 1, 1]
    assert [r["sync_bytes"] for r in rows] == [4 * params, params + buffers, params + buffers]


# ---------------------------------------------------------------------- exact resume
def test_options_are_checked():
    with pytest.raises(UserError, match="sync_bn cannot be combined"):
        tiny_config(local_steps=2, local_workers=2, sync_bn=True)
    with pytest.raises(UserError, match="after the last epoch"):
        tiny_config(local_steps=2, local_workers=2, local_start_epoch=2)
    with pytest.raises(UserError, match="after the last epoch"):  # first decay at 50 of 2
        tiny_config(local_steps=2, local_workers=2, local_start_epoch=-1)
    with pytest.raises(UserError, match="not a multiple of local_workers"):
        tiny_config(local_workers=3)
    with pytest.raises(UserError, match="at least 1"):
        tiny_config(local_steps=0)
    with pytest.raises(UserError, match="needs several workers"):
        with distributed.process_group(tiny_config(local_steps=2)):
            pass


SIMULATED = dict(epochs=4, local_workers=2, local_steps=3, local_start_epoch=1,
                 decay_every=2, bn_group=16)


@pytest.fixture(scope="module")
def simulated_reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "run"
    # a run this short stays near chance, so the collapse rule may mark it: it still trains on
    assert train(tiny_config(**SIMULATED), out, quiet=True)["epochs_completed"] == 4
    return out


def test_simulated_run_resumes_exactly_mid_period_after_sigterm(simulated_reference, tmp_path):
    cfg, out = tiny_config(**SIMULATED), tmp_path / "run"
    # local from step 4, H = 3: averages after steps 6, 9, 12; stop after step 7, then 10
    summary = train(cfg, out, quiet=True, stop_at_step=8)
    assert summary["status"] == "interrupted"
    state = checkpoint.load(out / "checkpoint.pt")  # weights-only
    assert (state["position"]["epoch"], state["position"]["step"]) == (1, 4)
    assert len(state["position"]["local_state"]["workers"]) == 1
    summary = train(cfg, out, resume=True, quiet=True, stop_at_step=11)
    assert summary["status"] == "interrupted"
    state = checkpoint.load(out / "checkpoint.pt")
    assert (state["position"]["epoch"], state["position"]["step"]) == (2, 3)
    assert train(cfg, out, resume=True, quiet=True)["status"] == rundir.read_json(
        simulated_reference / "summary.json")["status"]
    assert without_timing(rundir.read_metrics(out)) == without_timing(
        rundir.read_metrics(simulated_reference))


def test_simulated_run_resumes_exactly_after_sigkill(simulated_reference, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "batchscale", "train", "--out", str(out), "--quiet",
            *config_flags(tiny_config(**SIMULATED))]
    process = subprocess.Popen(args, env={**ENV, PAUSE_ENV: "2"}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)  # waits after epoch 2: killed
    deadline = time.monotonic() + PATIENCE_S
    while len(rundir.read_metrics(out)) < 2:  # epoch 2 ends mid-period (step 8 of 6, 9)
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.01)
    process.kill()
    process.wait()
    assert not (out / "summary.json").exists()
    result = subprocess.run([*args, "--resume"], env=ENV, capture_output=True, text=True,
                            timeout=PATIENCE_S)
    assert result.returncode == 0, result.stderr
    assert without_timing(rundir.read_metrics(out)) == without_timing(
        rundir.read_metrics(simulated_reference))


def real_args(data_path: str, out: Path, *extra: str) -> list[str]:
    cfg = config(data_path, epochs=4, workers=2, local_steps=3, local_start_epoch=1,
                 log_every=1)
    return [sys.executable, "-m", "batchscale", "train", "--out", str(out), "--quiet",
            *config_flags(cfg), *extra]


@pytest.fixture(scope="module")
def real_reference(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("real-run") / "run"
    result = subprocess.run(real_args(data, out), env=ENV, capture_output=True, text=True,
                            timeout=PATIENCE_S)
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_real_workers_resume_exactly_mid_period(how, real_reference, data, tmp_path):
    """SIGTERM to the launcher: the workers stop together with a checkpoint mid-epoch; SIGKILL
    of worker 1: the run fails and resumes from the epoch-2 checkpoint, itself mid-period."""
    out = tmp_path / "run"
    epoch = 1 if how == "sigterm" else 2  # the workers wait there until the signal
    launcher = subprocess.Popen(real_args(data, out), env={**ENV, PAUSE_ENV: str(epoch)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + PATIENCE_S
    while len(rundir.read_metrics(out)) < epoch:
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.stderr.read()
        time.sleep(0.01)
    if how == "sigterm":
        launcher.send_signal(signal.SIGTERM)
    else:
        rank1 = worker_pids(launcher.pid).get(1)
        assert rank1 is not None, "worker 1 is not running"
        os.kill(rank1, signal.SIGKILL)
    launcher.communicate(timeout=PATIENCE_S)
    summary = out / "summary.json"
    # SIGTERM: every worker stops with a checkpoint; SIGKILL of worker 1: worker 0's collective
    # fails, so the run is called failed (and resumes from its epoch-2 checkpoint)
    assert rundir.read_json(summary)["status"] == ("interrupted" if how == "sigterm" else "failed")
    state = checkpoint.load(out / "checkpoint.pt")
    assert len(state["position"]["local_state"]["workers"]) == 1
    result = subprocess.run(real_args(data, out, "--resume"), env=ENV, capture_output=True,
                            text=True, timeout=PATIENCE_S)
    assert result.returncode == 0, result.stderr
    assert without_timing(rundir.read_metrics(out)) == without_timing(
        rundir.read_metrics(real_reference))


# ---------------------------------------------------------------------- batch growth
GROWTH = dict(batch_size=32, base_batch_size=32, epochs=3, decay_every=1, decay_factor=0.5,
              batch_growth=2, track_noise_scale=True, bn_group=16)


def test_batch_growth_resumes_exactly_across_a_growth_point(tmp_path):
    cfg = tiny_config(**GROWTH)  # 256 images: B = 32, 64, 128 -> 8, 4, 2 steps
    whole = train(cfg, tmp_path / "whole", quiet=True)
    rows = rundir.read_metrics(tmp_path / "whole")
    assert [(r["batch_size"], r["step"], r["lr"]) for r in rows] == [
        (32, 8, 0.05), (64, 12, 0.05), (128, 14, 0.05)]
    assert [(r["noise_small_batch"], r["noise_big_batch"]) for r in rows] == [
        (16, 32), (16, 64), (16, 128)]
    assert [r["syncs"] for r in rows] == [8, 4, 2]
    out = tmp_path / "cut"
    assert train(cfg, out, quiet=True, stop_at_step=10)["status"] == "interrupted"
    assert checkpoint.load(out / "checkpoint.pt")["position"]["step"] == 2  # epoch 2, B = 64
    assert train(cfg, out, resume=True, quiet=True)["status"] == whole["status"]
    assert without_timing(rundir.read_metrics(out)) == without_timing(rows)

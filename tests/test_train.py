"""The training loop: exact resume, kills, divergence, the run directory, and real data."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from batchscale.config import from_dict
from batchscale.engine import checkpoint, rundir
from batchscale.engine.data import EpochLoader
from batchscale.engine.optim import set_lr
from batchscale.engine.setup import build
from batchscale.engine.step import prepare_input, train_step
from batchscale.engine.train import PAUSE_ENV, train
from batchscale.errors import UserError

from conftest import PATIENCE_S, ROOT, require_shared_zip, tiny_config

TIMING = ("images_per_sec", "wall_s")


def without_timing(rows):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 3-epoch run (4 steps an epoch) to compare resumed runs with."""
    out = tmp_path_factory.mktemp("reference") / "run"
    summary = train(tiny_config(epochs=3, warmup_epochs=1), out, quiet=True)
    return out, summary


def test_run_directory_holds_config_metrics_summary_checkpoint(reference):
    out, summary = reference
    assert {p.name for p in out.iterdir()} == {"config.yaml", "metrics.jsonl", "summary.json",
                                              "checkpoint.pt"}
    rows = rundir.read_metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and [r["step"] for r in rows] == [4, 8, 12]
    assert rows[0]["lr"] == pytest.approx(0.05)  # warmup from 0.05 to 0.05: base = peak at B=64
    assert all(0 <= r["test_acc"] <= 1 and 0 <= r["train_acc"] <= 1 for r in rows)
    saved = json.loads((out / "summary.json").read_text())
    assert saved["status"] == "completed" and saved["epochs_completed"] == 3
    assert saved["final_test_acc"] == rows[-1]["test_acc"]
    assert saved["best_test_acc"] == max(r["test_acc"] for r in rows)
    assert saved["noise_scale_g"] == pytest.approx(0.05 * (256 / 64 - 1))
    assert saved["environment"]["seed"] == 3 and saved["test_images"] == 1000
    # the data set is resident once, as uint8: (256 train + 1,000 test) x (32*32*3 + 8) bytes
    assert saved["memory"]["data_mb"] == round(1256 * (3072 + 8) / 2**20, 2) == 3.69
    assert saved["memory"]["peak_host_rss_mb"] > 100
    assert yaml.safe_load((out / "config.yaml").read_text()) == tiny_config(
        epochs=3, warmup_epochs=1).to_dict()


def test_resume_mid_epoch_reproduces_the_uninterrupted_metrics(reference, tmp_path):
    cfg = tiny_config(epochs=3, warmup_epochs=1)
    summary = train(cfg, tmp_path / "run", quiet=True, stop_at_step=6)  # mid epoch 2
    assert summary["status"] == "interrupted" and summary["epochs_completed"] == 1
    assert checkpoint.load(tmp_path / "run" / "checkpoint.pt")["position"]["step"] == 2
    summary = train(cfg, tmp_path / "run", resume=True, quiet=True)
    assert summary["status"] == "completed"
    assert without_timing(rundir.read_metrics(tmp_path / "run")) == without_timing(
        rundir.read_metrics(reference[0]))


def _cli(*args):
    return [sys.executable, "-m", "batchscale", "train", *args]


def _tiny_args(out):
    cfg = tiny_config(epochs=3, warmup_epochs=1)
    pairs = [(f"--{k.replace('_', '-')}", str(v)) for k, v in cfg.to_dict().items()]
    return [x for pair in pairs for x in pair] + ["--out", str(out), "--quiet"]


def _wait_for_rows(path, rows, process, timeout=PATIENCE_S):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= rows:
            return
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    raise AssertionError("no metrics appeared")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_process_resumes_to_the_same_metrics(reference, tmp_path, sig):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # the run waits after epoch 1 until a signal comes: the kill always finds it alive there
    paused = {**env, PAUSE_ENV: "1"}
    process = subprocess.Popen(_cli(*_tiny_args(out)), env=paused, stderr=subprocess.PIPE,
                               text=True)
    _wait_for_rows(out / "metrics.jsonl", 1, process)
    deadline = time.monotonic() + PATIENCE_S
    while not (out / "checkpoint.pt").exists():  # the row is written just before it
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.02)
    process.send_signal(sig)  # the run waits after epoch 1's checkpoint: nothing half-written
    _, stderr = process.communicate(timeout=PATIENCE_S)
    assert process.returncode == (-9 if sig == signal.SIGKILL else 128 + sig)
    assert "Traceback" not in stderr
    state = checkpoint.load(out / "checkpoint.pt")
    # SIGKILL: epoch 1's checkpoint; SIGTERM: stopped after epoch 2's first step, saved there
    expected = (1, 0) if sig == signal.SIGKILL else (1, 1)
    assert (state["position"]["epoch"], state["position"]["step"]) == expected
    resumed = subprocess.run(_cli("--out", str(out), "--resume", "--quiet"), env=env,
                             capture_output=True, text=True, timeout=PATIENCE_S)
    assert resumed.returncode == 0, resumed.stderr
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # leftovers cleaned up
    assert without_timing(rundir.read_metrics(out)) == without_timing(
        rundir.read_metrics(reference[0]))


def test_sigterm_stops_the_suite_also_inside_a_training_run(tmp_path, monkeypatch):
    """Stopping the suite (SIGTERM) while a test trains in this process: the run does not take
    the signal as its own stop request (it would end `interrupted` and the suite ran on); it
    ends as Ctrl-C would (conftest). Sent after epoch 1 of 3, from inside the loop."""
    from batchscale.engine import train as train_module

    def sigterm_after(epoch, stop):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler raises at the next bytecode

    monkeypatch.setattr(train_module, "pause_for_test", sigterm_after)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        train(tiny_config(epochs=3), tmp_path / "run", quiet=True)
    assert len(rundir.read_metrics(tmp_path / "run")) == 1
    assert not (tmp_path / "run" / "summary.json").exists()


def test_huge_learning_rate_diverges_cleanly(tmp_path):
    summary = train(tiny_config(lr=1e6, log_every=1), tmp_path / "run", quiet=True)
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["status"] == summary["status"] == "diverged"
    assert isinstance(saved["diverged_at_step"], int) and 0 <= saved["diverged_at_step"] < 8


def test_existing_run_directory_is_never_overwritten_silently(reference, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="exists"):
        train(tiny_config(epochs=1), tmp_path / "run", quiet=True)
    assert (tmp_path / "run" / "notes.txt").read_text() == "keep me"
    with pytest.raises(UserError, match="not a run directory"):  # --overwrite deletes runs only
        train(tiny_config(epochs=1), tmp_path / "run", quiet=True, overwrite=True)
    assert (tmp_path / "run" / "notes.txt").read_text() == "keep me"
    train(tiny_config(epochs=1), tmp_path / "new", quiet=True)
    train(tiny_config(epochs=1, seed=4), tmp_path / "new", quiet=True, overwrite=True)
    assert "seed: 4" in (tmp_path / "new" / "config.yaml").read_text()
    with pytest.raises(UserError, match="no run"):
        train(tiny_config(), tmp_path / "elsewhere", resume=True, quiet=True)


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save({"epoch": 1}, path)

    def crash(handle):
        handle.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        checkpoint.atomic_write(path, crash)
    assert checkpoint.load(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    path.write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot be read"):
        checkpoint.load(path)


def test_loop_implementation_takes_the_ghost_step_in_the_engine_float64():
    """The training loop's own step (step.train_step, augmentation and loss as in a run) with
    `--bn-impl loop`, Algorithm 1 as written, and with `ghost`, from the same weights on the same
    batch, in float64: the same weights, momentum and running statistics after two steps (the
    layer-level equivalence is tests/test_norm.py's; a whole loop run costs ~4x a ghost one)."""
    states = []
    for impl in ("loop", "ghost"):
        cfg = tiny_config(train_subset=64, batch_size=32, bn_group=8, bn_impl=impl)
        setup = build(cfg, progress=False)
        setup.model.double()
        loader = EpochLoader(setup.train, cfg.batch_size, cfg.seed, 0)
        for step in range(2):
            images, labels = loader.batch(step)
            set_lr(setup.optimizer, 0.05)
            train_step(setup, prepare_input(setup, images).double(), labels)
        momentum = [setup.optimizer.state[p]["momentum_buffer"] for p in setup.model.parameters()]
        states.append(({k: v.clone() for k, v in setup.model.state_dict().items()}, momentum))
    (loop, loop_momentum), (ghost, ghost_momentum) = states
    assert [k for k in loop if k.endswith("running_mean")]
    for name in loop:
        torch.testing.assert_close(loop[name], ghost[name], rtol=1e-9, atol=1e-12, msg=name)
    for a, b in zip(loop_momentum, ghost_momentum, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_bf16_autocast_trains_on_cpu_in_lower_precision(tmp_path):
    """--amp bf16 on CPU (1.6x a width-16 step on AVX512-BF16): the run completes with
    ghost BN groups, and its losses differ from float32's, so the autocast is really on."""
    cfg = tiny_config(epochs=1, bn_group=16, amp="bf16")
    summary = train(cfg, tmp_path / "bf16", quiet=True)
    plain = train(tiny_config(epochs=1, bn_group=16), tmp_path / "fp32", quiet=True)
    assert summary["status"] == plain["status"] == "completed"
    bf16, fp32 = (rundir.read_metrics(tmp_path / name)[0] for name in ("bf16", "fp32"))
    assert bf16["train_loss"] != fp32["train_loss"]
    assert abs(bf16["train_loss"] - fp32["train_loss"]) < 0.05 * fp32["train_loss"]


def test_a_missing_cifar10_zip_fails_in_ci_and_is_skipped_elsewhere(tmp_path, monkeypatch):
    missing = tmp_path / "cifar10-jpeg.zip"
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_shared_zip(missing)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="not found"):
        require_shared_zip(missing)
    (tmp_path / "cifar10-jpeg.zip").write_bytes(b"")
    assert require_shared_zip(missing) == missing


def test_real_cifar10_subset_reaches_30_percent(shared_zip, tmp_path):
    cfg = from_dict(dict(dataset=str(shared_zip), width=8, train_subset=5000, epochs=4,
                         batch_size=64, base_batch_size=64, lr=0.1, warmup_epochs=0.5,
                         schedule="cosine", threads=2, seed=0))  # measured: 0.39, ~70 s
    summary = train(cfg, tmp_path / "real", quiet=True)
    assert summary["status"] == "completed" and summary["test_images"] == 10_000
    assert summary["final_test_acc"] >= 0.30, summary

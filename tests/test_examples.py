"""The examples run (each on CPU in seconds) and print what they promise: the plain loop adds
at most five lines, the DDP loop runs under torchrun with two gloo workers, the Lightning script
fits with a real Trainer; and the Lightning callback stops a run that has collapsed."""

from __future__ import annotations

import csv
import math
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import PATIENCE_S

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str) -> None:
    """Run examples/<name> as a script in this process; the thread count it sets is restored."""
    threads = torch.get_num_threads()
    try:
        runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    finally:
        torch.set_num_threads(threads)


def lightning_or_skip():
    """PyTorch Lightning (the optional extra); absent it skips, except under CI (CI=true),
    where the test extra installs it and a skip would hide a failure."""
    try:
        import lightning.pytorch as pl
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("PyTorch Lightning is not installed (pip install 'batchscale[lightning]')")
    return pl


def test_the_plain_loop_adds_five_lines_and_prints_the_noise_scale(capsys):
    source = (EXAMPLES / "plain_loop.py").read_text().splitlines()
    added = [line for line in source if re.search(r"\S.*  # batchscale$", line)]
    assert len(source) <= 60 and len(added) == 5
    run_example("plain_loop.py")
    out = capsys.readouterr().out.splitlines()
    assert out[-2].startswith("epoch 5: loss ")
    assert re.fullmatch(r"  B_simple = \S+ ± \S+ \(b_small 32, b_big 64, 160 observations\)",
                        out[-1]), out[-1]


def test_the_ddp_loop_runs_under_torchrun_with_two_workers():
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(EXAMPLES / "ddp_loop.py")], capture_output=True, text=True, timeout=PATIENCE_S,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("step ")]
    assert [line.split(":")[0] for line in lines] == ["step 40", "step 80", "step 120"]
    assert all("(b_small 32, b_big 64, " in line for line in lines)  # 32 each, 2 workers


def metrics_rows(log_dir: Path) -> list[dict]:
    (path,) = log_dir.rglob("metrics.csv")
    with path.open() as f:
        return list(csv.DictReader(f))


def test_the_lightning_script_logs_the_noise_scale_through_the_trainer(tmp_path):
    lightning_or_skip()
    example = runpy.run_path(str(EXAMPLES / "lightning_fit.py"))
    callback = example["main"](str(tmp_path), epochs=2)
    rows = metrics_rows(tmp_path)
    logged = [float(r["noise/b_simple"]) for r in rows if r.get("noise/b_simple")]
    assert len(logged) >= 8 and all(math.isfinite(v) and v > 0 for v in logged)
    estimate = callback.noise.estimate()
    assert (estimate.small_batch, estimate.big_batch, estimate.observations) == (32, 64, 64)
    assert [r["collapse/collapsed"] for r in rows if r.get("collapse/collapsed")] == ["0.0"] * 2


def test_the_lightning_callback_under_a_ddp_strategy_logs_the_workers_estimate(tmp_path):
    """Two CPU processes (ddp_fork, gloo): each worker's own gradient is a small batch of 32,
    the averaged one the big batch of 64, logged through the trainer's CSVLogger. (Forked: a
    spawned worker finalizes its interpreter, where gloo's threads can abort it after the fit;
    scripts/worker_exits.py --lightning counts both.)"""
    lightning_or_skip()
    done = subprocess.run([sys.executable, str(EXAMPLES / "lightning_fit.py"), str(tmp_path),
                           "--devices", "2"], capture_output=True, text=True, timeout=PATIENCE_S,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [r for r in metrics_rows(tmp_path) if r.get("noise/big_batch")]
    assert rows and {(r["noise/small_batch"], r["noise/big_batch"]) for r in rows} == {
        ("32.0", "64.0")}
    assert all(float(r["noise/b_simple"]) > 0 for r in rows if r["noise/b_simple"])


def test_the_lightning_callback_stops_a_collapsed_run(tmp_path):
    """A classifier that predicts every class equally (its only parameter, a bias, never
    moves: lr 0) sits at loss ln 4 and chance accuracy: with a budget of 6 epochs the rule
    fires after 3 stalled epochs and the trainer stops there instead of running 10."""
    pl = lightning_or_skip()
    from torch.utils.data import DataLoader, TensorDataset

    from batchscale.integrations.lightning import BatchscaleCallback

    class Constant(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.bias = torch.nn.Parameter(torch.zeros(4))

        def training_step(self, batch, batch_idx):
            x, y = batch
            logits = self.bias.expand(len(x), 4)
            return {"loss": torch.nn.functional.cross_entropy(logits, y),
                    "acc": (logits.argmax(1) == y).float().mean()}

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    data = DataLoader(TensorDataset(torch.randn(256, 3), torch.arange(256) % 4), batch_size=32)
    callback = BatchscaleCallback(classes=4, epochs=6)
    trainer = pl.Trainer(max_epochs=10, accelerator="cpu", devices=1, accumulate_grad_batches=2,
                         logger=pl.loggers.CSVLogger(str(tmp_path)), callbacks=[callback],
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    with pytest.warns(UserWarning, match="collapsed .collapse. at epoch 3"):
        trainer.fit(Constant(), data)
    assert callback.monitor.collapsed_epoch == 3 and trainer.current_epoch == 3
    flags = [r["collapse/collapsed"] for r in metrics_rows(tmp_path) if r["collapse/collapsed"]]
    assert flags == ["0.0", "0.0", "1.0"]

"""TensorBoard event files: read back with tensorboard's own reader, they hold metrics.jsonl.

    .venv/bin/python -m pytest tests/test_tensorboard.py
"""

import os
import subprocess
import sys

import pytest

from batchscale.engine import rundir
from batchscale.engine.train import train

from conftest import PATIENCE_S, ROOT, tiny_config

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def scalars(run_dir) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of every scalar in the run's tb/ folder."""
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)}
            for tag in events.Tags()["scalars"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One run straight through, and the same run stopped after step 6 and resumed."""
    folder = tmp_path_factory.mktemp("tb")
    cfg = tiny_config(train_subset=128, batch_size=32, log_every=2, tensorboard=True)
    train(cfg, folder / "whole", quiet=True)
    train(cfg, folder / "split", quiet=True, stop_at_step=6)
    train(cfg, folder / "split", quiet=True, resume=True)
    return folder / "whole", folder / "split"


def test_event_files_hold_the_metrics_of_every_epoch(runs):
    rows = rundir.read_metrics(runs[0])
    found = scalars(runs[0])
    assert len(rows) == 2
    for name in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "images_per_sec"):
        expected = {row["step"]: row[name] for row in rows}
        assert found[f"epoch/{name}"] == pytest.approx(expected, rel=1e-6), name
    # every log_every steps: 4 steps an epoch, logged after steps 2 and 4 of each
    assert sorted(found["step/train_loss"]) == [2, 4, 6, 8]
    # at an epoch's last step the running loss is the epoch's training loss
    for row in rows:
        assert found["step/train_loss"][row["step"]] == pytest.approx(row["train_loss"], rel=1e-6)
    assert found["step/lr"][8] == pytest.approx(rows[-1]["lr"])


def test_a_resumed_run_holds_each_step_once(runs):
    """Stopped after step 6 (a log point: both processes write step 6's neighbours), resumed:
    the curves equal the uninterrupted run's; the resumed process wrote its own event file."""
    whole, split = scalars(runs[0]), scalars(runs[1])
    assert len(os.listdir(runs[1] / "tb")) == 2
    assert whole.keys() == split.keys()
    for tag in ("step/train_loss", "step/lr", "epoch/test_acc", "epoch/train_loss"):
        assert split[tag] == pytest.approx(whole[tag], rel=1e-6), tag


def test_without_tensorboard_the_option_is_one_line_and_exit_2(tmp_path):
    """The extra's absence, simulated: importing it fails, as when it is not installed."""
    code = ("import sys; sys.modules['tensorboard'] = None; "
            "from batchscale.cli import main; sys.exit(main(sys.argv[1:]))")
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", code, "train", "--out", str(out),
                           "--tensorboard", "--width", "4", "--train-subset", "128",
                           "--epochs", "1"], capture_output=True, text=True, timeout=PATIENCE_S,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "batchscale: error: --tensorboard needs the tensorboard package: "
        "pip install 'batchscale[tensorboard]' (or pip install tensorboard)"]
    assert not out.exists()

"""TensorBoard event files of a run, in `<run>/tb/` (rank 0 only), with `--tensorboard`.

    batchscale train --tensorboard --out runs/a ...
    tensorboard --logdir runs/a                      # or a study's folder: every run in it

Scalars, each at the global step (steps done so far):
  step/train_loss   the mean training loss of the epoch so far (what the progress bar shows),
                    every `log_every` steps, read where the loop reads it anyway: no extra sync
  step/lr           the learning rate of the last step
  epoch/<field>     every number of the epoch's metrics.jsonl row (train/test loss and accuracy,
                    lr, images_per_sec, wall_s, the noise-scale fields when tracked)

A resumed run opens a new event file whose first event purges what the interrupted one wrote
after the checkpoint, so the curves hold each step once. tensorboard is an optional extra
(`pip install 'batchscale[tensorboard]'`).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from batchscale.errors import UserError

FOLDER = "tb"
MISSING = ("--tensorboard needs the tensorboard package: "
           "pip install 'batchscale[tensorboard]' (or pip install tensorboard)")


def summary_writer_class():
    """torch's SummaryWriter; a UserError when tensorboard is not installed."""
    try:
        return importlib.import_module("torch.utils.tensorboard").SummaryWriter
    except ImportError:
        raise UserError(MISSING) from None


def check(cfg) -> None:
    """Fail before anything is written when the run asks for TensorBoard and it is missing."""
    if cfg.tensorboard:
        summary_writer_class()


class Board:
    """The run's event writer; every method does nothing when TensorBoard is off (or on ranks
    other than 0). The file is opened at the first scalar, so constructing it writes nothing."""

    def __init__(self, enabled: bool, run_dir: Path | None = None, resumed_at: int = 0):
        self.enabled = enabled
        self.folder = Path(run_dir or ".") / FOLDER
        # steps after the checkpoint's were written by a process that did not save them
        self.purge_step = resumed_at + 1 if resumed_at else None
        self._writer = None

    @classmethod
    def of(cls, setup) -> Board:
        """The board a run attached to its setup (a disabled one for a setup without)."""
        return getattr(setup, "board", None) or cls(False)

    def _write(self, tag: str, value: float, step: int) -> None:
        if self._writer is None:
            self._writer = summary_writer_class()(str(self.folder), purge_step=self.purge_step)
        self._writer.add_scalar(tag, value, step)

    def step(self, step: int, train_loss: float, lr: float) -> None:
        """The values the loop read at a `log_every` point."""
        if self.enabled:
            self._write("step/train_loss", train_loss, step)
            self._write("step/lr", lr, step)

    def epoch(self, row: dict) -> None:
        """Every number of an epoch's metrics row, at the row's step."""
        if not self.enabled:
            return
        for name, value in row.items():
            if name not in ("epoch", "step") and isinstance(value, int | float):
                self._write(f"epoch/{name}", value, row["step"])
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

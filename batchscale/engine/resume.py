"""Resuming a run: its position in training, the checkpoint's state, and the checks that a
checkpoint belongs to this run (its keys, its config, its world size, its metrics) before the
model, optimizer and random state are restored from it (engine/train.py saves it each epoch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from batchscale.config import HOW_FIELDS, TrainConfig
from batchscale.engine import checkpoint, distributed, rundir
from batchscale.engine.setup import Setup
from batchscale.errors import UserError


@dataclass
class Position:
    epoch: int = 0
    step: int = 0  # step within the epoch
    wall_s: float = 0.0
    best_test_acc: float = 0.0
    meter_state: dict | None = None
    noise_state: dict | None = None  # the noise-scale moving averages
    local_state: dict | None = None  # local SGD: workers 1..W-1's models and optimizers


def checkpoint_state(setup: Setup, position: Position) -> dict:
    return {"model": setup.model.state_dict(), "optimizer": setup.optimizer.state_dict(),
            "position": vars(position), "rng": checkpoint.rng_state(),
            "config": setup.cfg.to_dict(), "world_size": setup.world_size}


def restore(setup: Setup, run_dir: Path) -> Position:
    """Load the checkpoint; with several workers rank 0 reads it and sends it to the others."""
    state = distributed.from_rank0(lambda: read_checkpoint(setup, run_dir))
    if state is None:
        return Position()
    try:
        setup.model.load_state_dict(state["model"])
        setup.optimizer.load_state_dict(state["optimizer"])
        checkpoint.set_rng_state(state["rng"])
        position = Position(**state["position"])
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        raise UserError(f"{run_dir / checkpoint.NAME} does not fit this run's model and "
                        f"optimizer: {err}".splitlines()[0]) from None
    if setup.rank != 0:
        position.meter_state = None  # the saved partial sums are all workers' already
    return position


CHECKPOINT_KEYS = ("model", "optimizer", "position", "rng")


def read_checkpoint(setup: Setup, run_dir: Path) -> dict | None:
    """The checkpoint in `run_dir` (None if there is none); metrics rows after it are dropped.
    A checkpoint that is not a run's, or metrics shorter than the checkpoint, are refused."""
    path = run_dir / checkpoint.NAME
    checkpoint.remove_stale_temporaries(run_dir)
    if not path.exists():
        rundir.truncate_metrics(run_dir, 0)
        return None
    state = checkpoint.load(path)
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if missing or not isinstance(state["position"], dict) or "epoch" not in state["position"]:
        raise UserError(f"{path} is not a batchscale training checkpoint (it has no "
                        f"{(missing or ['position.epoch'])[0]})")
    check_same_config(run_dir, state.get("config"), setup.cfg)
    if state.get("world_size", 1) != setup.world_size:
        raise UserError(f"{run_dir} was trained by {state.get('world_size', 1)} workers; resume "
                        f"it with as many (not {setup.world_size}): batch norm depends on it")
    epoch, rows = state["position"]["epoch"], len(rundir.read_metrics(run_dir))
    if rows < epoch:
        raise UserError(f"{run_dir / rundir.METRICS} holds {rows} epoch rows but the checkpoint "
                        f"is at epoch {epoch}: metrics were lost, so the run cannot be resumed "
                        f"truthfully; start it again with --overwrite")
    rundir.truncate_metrics(run_dir, epoch)
    return state


def check_same_config(run_dir: Path, saved: dict | None, cfg: TrainConfig) -> None:
    """Refuse to resume when config.yaml no longer says what the checkpoint was trained with
    (a hand edit): the run would go on as another recipe and be recorded as one. Fields that
    change only how it is computed may differ, and epochs may grow on a schedule that
    --extend-epochs can lengthen."""
    if not isinstance(saved, dict):
        return  # a checkpoint from before configs were saved in it
    current = cfg.to_dict()
    differing = [name for name, value in saved.items() if name in current
                 and name not in HOW_FIELDS and current[name] != value]
    if "epochs" in differing and isinstance(saved["epochs"], int) and (
            saved["epochs"] < cfg.epochs
            and cfg.schedule not in rundir.LENGTH_SHAPED_SCHEDULES):
        differing.remove("epochs")  # an extension (rundir.extend_epochs checked it)
    if differing:
        shown = ", ".join(f"{name} ({current[name]!r} in {rundir.CONFIG}, {saved[name]!r} in "
                          f"the checkpoint)" for name in differing[:5])
        raise UserError(f"{run_dir / rundir.CONFIG} differs from the config the run was trained "
                        f"with: {shown}; restore it, or train a new run into another directory")

"""Atomic checkpoints: written to a temporary file, flushed to disk, then renamed into place.

A crash or kill at any moment leaves either the previous checkpoint or the new one, never half of
one. A checkpoint holds everything a bit-exact resume needs on CPU: model, optimizer, position in
the data order, partial sums of the epoch's metrics, and every random-number generator's state.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from batchscale.errors import UserError

NAME = "checkpoint.pt"


def atomic_write(path: Path, write) -> None:
    """Call `write(file)` on a temporary file beside `path`, fsync it, then rename it to `path`."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def remove_stale_temporaries(directory: Path) -> None:
    """Delete temporary files that a process killed mid-write (SIGKILL) left behind."""
    for leftover in Path(directory).glob(".*.tmp"):
        leftover.unlink(missing_ok=True)


def save(state: dict, path: Path) -> None:
    atomic_write(path, lambda handle: torch.save(state, handle))


def load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise UserError(f"no checkpoint at {path}") from None
    except Exception as err:  # a truncated or foreign file
        raise UserError(f"checkpoint {path} cannot be read: {err}".splitlines()[0]) from None


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

"""Atomic checkpoints: written to a temporary file, flushed to disk, then renamed into place.

A crash or kill at any moment leaves either the previous checkpoint or the new one, never half of
one. A checkpoint holds everything a bit-exact resume needs on CPU: model, optimizer, position in
the data order, partial sums of the epoch's metrics, and every random-number generator's state.
"""

from __future__ import annotations

import pickle
import random
import warnings
from pathlib import Path

import numpy as np
import torch

from batchscale.errors import UserError
from batchscale.files import atomic_write

NAME = "checkpoint.pt"


def remove_stale_temporaries(directory: Path) -> None:
    """Delete temporary files that a process killed mid-write (SIGKILL) left behind."""
    for leftover in Path(directory).glob(".*.tmp"):
        leftover.unlink(missing_ok=True)


def save(state: dict, path: Path) -> None:
    atomic_write(path, lambda handle: torch.save(state, handle))


CONVERT_HINT = ("if it is an older batchscale checkpoint that you trust, convert it once with "
                "`python -m batchscale.engine.checkpoint --convert-trusted {path}`")


# What torch says about a file it cannot load weights-only includes advice to load it with
# weights_only=False, which would run code from an untrusted file: never passed on.
UNSAFE_ADVICE = ("weights_only", "weights only", "trust", "arbitrary code", "unsafe")


def torch_reason(err: BaseException) -> str:
    """torch's message, one line, less every sentence that advises an unsafe load."""
    sentences = " ".join(str(err).split()).split(". ")
    kept = [s.strip().rstrip(".") for s in sentences
            if s.strip() and not any(word in s.lower() for word in UNSAFE_ADVICE)]
    return "; ".join(kept)[:200] or type(err).__name__


def load(path: Path) -> dict:
    """Read a checkpoint with `weights_only=True`: tensors, numbers, strings, lists, tuples and
    dicts only. Anything else (a class, a function, a numpy object) is refused unexecuted."""
    damaged = f"checkpoint {path} cannot be read (damaged, or not a batchscale checkpoint)"
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": a second line
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"no checkpoint at {path}") from None
    except pickle.UnpicklingError as err:
        if "global" not in str(err).lower():  # no class or function named: a damaged file
            raise UserError(f"{damaged}: {torch_reason(err)}") from None
        if "numpy" in str(err):  # what checkpoints before the weights-only format held
            raise UserError(f"checkpoint {path} holds numpy objects, refused unopened; "
                            + CONVERT_HINT.format(path=path)) from None
        raise UserError(f"checkpoint {path} holds objects other than tensors, numbers, strings, "
                        f"lists and dicts; refused unopened (loading it could run code)") from None
    except Exception as err:  # noqa: BLE001 (a truncated or foreign file)
        raise UserError(f"{damaged}: {torch_reason(err)}") from None


def convert_trusted(path: Path) -> None:
    """Rewrite an older checkpoint (numpy RNG state) in the weights-only format. It unpickles
    the file fully, so only for a file the user trusts; the conversion is atomic."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    rng = state.get("rng", {})
    if isinstance(rng.get("numpy"), tuple):
        kind, key, pos, has_gauss, cached = rng["numpy"]
        rng["numpy"] = {"key": torch.from_numpy(np.asarray(key, dtype=np.int64)), "pos": int(pos),
                        "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    save(state, path)
    load(path)  # proves it now opens weights-only


# ---------------------------------------------------------------------- random-number state
def rng_state() -> dict:
    """Every generator's state as tensors and plain numbers (weights-only loadable)."""
    _, key, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": [version, list(internal), gauss_next]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["key"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def main(argv: list[str] | None = None) -> int:
    """`python -m batchscale.engine.checkpoint --convert-trusted PATH...`"""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--convert-trusted", nargs="+", type=Path, required=True,
                        metavar="CHECKPOINT", help="older checkpoints you trust, rewritten in "
                        "place in the weights-only format")
    for path in parser.parse_args(argv).convert_trusted:
        convert_trusted(path)
        print(f"converted {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

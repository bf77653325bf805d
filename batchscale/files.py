"""Files written whole or not at all: a crash or kill mid-write leaves the previous file (or none),
never half of the new one."""

from __future__ import annotations

import os
from pathlib import Path


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


def write_text(path: Path, text: str) -> None:
    """`path.write_text(text)`, atomically."""
    atomic_write(path, lambda handle: handle.write(text.encode()))


def save_figure(fig, path: Path, dpi: int) -> None:
    """A Matplotlib figure saved as PNG, atomically."""
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=dpi))

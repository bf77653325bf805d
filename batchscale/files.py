"""Files written whole or not at all: a crash or kill mid-write leaves the previous file (or none),
never half of the new one."""

from __future__ import annotations

import os
from pathlib import Path

from batchscale.errors import UserError


def atomic_write(path: Path, write) -> None:
    """Call `write(file)` on a temporary file beside `path`, fsync it, then rename it to `path`.
    An OSError (a full disk, a folder that cannot be written) names `path`, not the temporary."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except Exception as err:
        cause = os_error_in(err)  # torch.save wraps a full disk's OSError in a RuntimeError
        if cause is not None and cause.filename in (None, str(temporary)):
            raise OSError(cause.errno, cause.strerror, str(path)) from None
        raise
    finally:
        temporary.unlink(missing_ok=True)


def os_error_in(err: BaseException | None) -> OSError | None:
    """The OSError with an errno that `err` is or was raised from, if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno is not None:
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def write_text(path: Path, text: str) -> None:
    """`path.write_text(text)`, atomically."""
    atomic_write(path, lambda handle: handle.write(text.encode()))


def save_figure(fig, path: Path, dpi: int) -> None:
    """A Matplotlib figure saved as PNG, atomically."""
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=dpi))


def check_output_folder(folder: Path | str, option: str) -> Path:
    """Refuse, before anything is computed, an output folder that is a file, cannot be created,
    or cannot be written. Creates it (with its parents) when it is missing."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{option} {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{option} {folder} cannot be created: {err.strerror or err}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{option} {folder} is not writable")
    return folder


def check_output_file(path: Path | str, option: str) -> Path:
    """Refuse, before anything is computed, an output file whose place is a folder or whose
    folder cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; give a file name")
    folder = path.parent
    if not folder.is_dir():
        raise UserError(f"{option} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: the folder {folder} is not writable")
    return path

"""The one exception a user can cause: the CLI turns it into one line and exit code 2."""

from __future__ import annotations

import contextlib
from pathlib import Path


class UserError(Exception):
    """A mistake the user can fix (bad option, missing or corrupt data, existing run directory)."""


def one_line(reason: object) -> str:
    """An exception or message collapsed into a single line."""
    return " ".join(str(reason).split()) or type(reason).__name__


def describe_os_error(err: OSError) -> str:
    """"PATH: No space left on device" (the file named, when the error names one)."""
    reason = err.strerror or one_line(err)
    names = [str(n) for n in (err.filename, getattr(err, "filename2", None)) if n is not None]
    return f"{' -> '.join(names)}: {reason}" if names else reason


@contextlib.contextmanager
def reading(path: Path | str, what: str = ""):
    """Any error raised while reading a user's file becomes a UserError naming the file (a
    UserError raised inside passes through unchanged)."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 (the file is the user's: anything goes wrong)
        detail = describe_os_error(err) if isinstance(err, OSError) else (
            f"{type(err).__name__}: {one_line(err)}")
        raise UserError(f"cannot read {what + ' ' if what else ''}{path} ({detail})") from None

"""One process at a time per folder: a lock file created with O_EXCL, holding who holds it.

    with FolderLock(run_dir, "train"):      # refuses, in one line, while another process holds it
        ...

The lock file (`.batchscale.lock`, JSON) names the holder: pid, hostname, the process's start
time (to tell a reused pid from the holder), what it is doing and when it started. A lock whose
holder is a process of this host that no longer runs (killed with SIGKILL, say) is stale and is
taken over; a live holder, or one on another host (whose liveness cannot be checked from here),
is a UserError naming it. `train` locks its run directory, `study` its study folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from batchscale.errors import UserError

LOCK_NAME = ".batchscale.lock"


def process_start_time(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (Linux), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of stat, counted after the name


def process_alive(pid: int, start_time: str | None) -> bool:
    """Whether process `pid` runs on this host and is the one that started at `start_time`."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    now = process_start_time(pid)
    return start_time is None or now is None or now == start_time


def _read(path: Path) -> dict | None:
    """The holder recorded in a lock file; None if it is empty or not a lock (being written)."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


def describe(holder: dict) -> str:
    return (f"{holder.get('what', 'a process')} (pid {holder['pid']} on {holder.get('host')}, "
            f"since {holder.get('started')})")


def is_stale(holder: dict | None, path: Path) -> bool:
    """A holder that is a dead process of this host, or an unreadable lock older than a minute
    (a live creator writes its lock right after creating it)."""
    if holder is None:
        with contextlib.suppress(OSError):
            return time.time() - path.stat().st_mtime > 60
        return False
    if holder.get("host") != socket.gethostname():
        return False
    return not process_alive(holder["pid"], holder.get("start_time"))


class FolderLock:
    """Exclusive use of `folder` by this process, held from `acquire()` (or `with`) to `release()`.

    The folder is created if missing; if the lock created it and it is still empty at release,
    it is removed again, so a refused or failed start leaves nothing behind."""

    def __init__(self, folder: Path, what: str):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK_NAME
        self.created_folder = False
        self.held = False

    def acquire(self) -> FolderLock:
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(f"{self.folder} is a file, not a folder")
        try:
            self.created_folder = not self.folder.exists()
            self.folder.mkdir(parents=True, exist_ok=True)
            for _ in range(5):
                if self._try_create():
                    self.held = True
                    return self
                self._take_over_if_stale()
        except OSError as err:
            self._remove_created_folder()
            raise UserError(f"cannot write in {self.folder}: {err.strerror or err}") from None
        raise UserError(f"cannot lock {self.folder}: its lock {self.path} keeps changing")

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "start_time": process_start_time(os.getpid()), "what": self.what,
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(holder) + "\n")
        return True

    def _take_over_if_stale(self) -> None:
        """Remove the lock file if its holder is gone; raise UserError if it is live."""
        holder = _read(self.path)
        if not self.path.exists():
            return  # released meanwhile: try again
        if holder is None and not is_stale(holder, self.path):
            time.sleep(0.2)  # being written by its creator: read it again
            return
        if not is_stale(holder, self.path):
            self._remove_created_folder()
            raise UserError(f"{self.folder} is in use by {describe(holder)}; wait for it to "
                            f"end, or stop it (if it is gone, remove {self.path})")
        # move the stale lock aside atomically, so that two processes cannot both take it over
        aside = self.path.with_name(f"{LOCK_NAME}.{os.getpid()}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if _read(aside) != holder:  # another process replaced it in between: put it back
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
        aside.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held:
            holder = _read(self.path)
            if holder and holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False
        self._remove_created_folder()

    def _remove_created_folder(self) -> None:
        if self.created_folder:
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # only if empty

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

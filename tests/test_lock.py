"""Tests of folder locks: one holder at a time, stale locks of dead processes taken over."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from batchscale.engine.lock import LOCK_NAME, FolderLock, process_start_time
from batchscale.errors import UserError

from conftest import ROOT

HOLD = ("import sys, time; from batchscale.engine.lock import FolderLock; "
        "FolderLock(sys.argv[1], 'holder').acquire(); print('held', flush=True); time.sleep(600)")


def dead_process() -> tuple[int, str]:
    """(pid, start time) of a process that has ended. The start time is read while it runs, so
    the lock below names that process even if the system gives its pid to a new one meanwhile
    (the new one starts later: a lock naming it is not stale, this one is)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start_time = process_start_time(process.pid)
    finally:
        process.kill()
        process.wait()
    assert start_time is not None
    return process.pid, start_time


def write_lock(folder, **holder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps(holder))


def test_lock_names_its_holder_and_is_released(tmp_path):
    with FolderLock(tmp_path, "train") as lock:
        holder = json.loads(lock.path.read_text())
        assert holder["host"] == socket.gethostname() and holder["what"] == "train"
        with pytest.raises(UserError, match=rf"in use by train \(pid {holder['pid']} on"):
            FolderLock(tmp_path, "study").acquire()
    assert not (tmp_path / LOCK_NAME).exists()
    FolderLock(tmp_path, "again").acquire().release()


def test_lock_of_another_live_process_is_refused_until_it_dies(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True,
                              env={"PYTHONPATH": str(ROOT), "PATH": ""})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"pid {holder.pid}"):
            FolderLock(tmp_path, "second").acquire()
    finally:
        holder.kill()  # SIGKILL: the lock file stays behind, stale
        holder.wait()
    assert (tmp_path / LOCK_NAME).exists()
    with FolderLock(tmp_path, "after") as lock:
        assert json.loads(lock.path.read_text())["what"] == "after"


def test_stale_and_foreign_locks(tmp_path):
    pid, start_time = dead_process()
    write_lock(tmp_path / "dead", pid=pid, start_time=start_time, host=socket.gethostname(),
               what="old")
    FolderLock(tmp_path / "dead", "new").acquire().release()  # a dead process: taken over
    write_lock(tmp_path / "remote", pid=1, host="another-host", what="train")
    with pytest.raises(UserError, match="another-host"):  # cannot be checked from here
        FolderLock(tmp_path / "remote", "new").acquire()
    # a reused pid: the live process (this one) did not start when the lock says
    write_lock(tmp_path / "reused", pid=os.getpid(), host=socket.gethostname(),
               start_time="1", what="old")
    FolderLock(tmp_path / "reused", "new").acquire().release()


def test_a_lock_being_written_is_not_taken_over(tmp_path, monkeypatch):
    (tmp_path / LOCK_NAME).write_text("")  # created a moment ago, holder not written yet
    monkeypatch.setattr(time, "sleep", lambda s: None)
    with pytest.raises(UserError, match="keeps changing"):
        FolderLock(tmp_path, "new").acquire()


def test_a_refused_lock_leaves_no_folder_behind(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        FolderLock(tmp_path / "afile", "train").acquire()
    with FolderLock(tmp_path / "new" / "run", "train"):
        assert (tmp_path / "new" / "run").is_dir()
    assert not (tmp_path / "new" / "run").exists()  # created by the lock, left empty

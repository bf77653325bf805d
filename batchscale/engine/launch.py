"""`--workers N` on one machine: start `batchscale train` in N processes that meet through a file
store, wait for them, pass SIGTERM on, and stop the others when one fails
(engine/distributed.py has what each worker does).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from batchscale.config import config_flags
from batchscale.engine import rundir
from batchscale.engine.distributed import FILE_STORE_ENV, LAUNCHER_ENV, check_devices, check_world
from batchscale.errors import UserError


def launch(cfg, out: Path, *, resume: bool, overwrite: bool, quiet: bool) -> dict:
    """Run `batchscale train` in `cfg.workers` processes on this machine; wait, and return the
    run's summary.

    The workers meet through a file store in a private temporary folder (no TCP store), and gloo
    (CPU) or NCCL (CUDA) are pinned to the loopback interface: nothing of a one-machine run
    listens beyond 127.0.0.1. One worker failing stops the others. SIGTERM is passed on to every
    worker (each stops at its next check, with a checkpoint); SIGINT from a terminal reaches them
    directly."""
    check_world(cfg, cfg.workers)
    check_devices(cfg, cfg.workers)
    rundir.check(out, resume, overwrite)
    command = [sys.executable, "-m", "batchscale", "train", "--out", str(out),
               *config_flags(cfg)]
    command += [flag for flag, on in (("--resume", resume), ("--overwrite", overwrite),
                                      ("--quiet", quiet)) if on]
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // cfg.workers)
    with tempfile.TemporaryDirectory(prefix="batchscale-store-") as folder:
        env = {"OMP_NUM_THREADS": str(threads), **os.environ, LAUNCHER_ENV: "1",
               FILE_STORE_ENV: str(Path(folder) / "store"), **loopback_env(),
               "WORLD_SIZE": str(cfg.workers), "LOCAL_WORLD_SIZE": str(cfg.workers),
               "MASTER_ADDR": "127.0.0.1"}
        workers = [subprocess.Popen(command, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
                   for r in range(cfg.workers)]
        code, received = wait_all(workers)
    summary_path = Path(out) / rundir.SUMMARY
    summary = rundir.read_json(summary_path) if summary_path.exists() else {}
    if summary.get("status") == "interrupted":
        summary["signal"] = received[-1] if received else signal.SIGTERM
    elif code != 0 or summary.get("status") not in rundir.FINAL_STATUSES:
        raise UserError(f"the {cfg.workers} workers failed (exit code {code}); "
                        f"see their messages above")
    return summary


def loopback_env() -> dict:
    """Pin gloo's and NCCL's sockets to the loopback interface, where this machine has one."""
    if not Path("/sys/class/net/lo").exists():
        return {}
    return {"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo"}


def wait_all(workers: list[subprocess.Popen], grace_s: float = 30.0) -> tuple[int, list[int]]:
    """Wait for every worker; the first to fail has the others terminated (then killed after
    `grace_s`); one that exits 128 + a signal this process passed on stopped as asked.
    Returns (the first non-zero exit code or 0, the signals this process received)."""
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        if signum == signal.SIGTERM:
            for worker in workers:
                if worker.poll() is None:
                    worker.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    code, deadline = 0, None
    try:
        while None in (codes := [worker.poll() for worker in workers]):  # poll every one
            # a worker that stopped as asked (exit 128 + a signal passed on to it) has not
            # failed: terminating the others then would cut rank 0's checkpoint and summary
            stopped = {128 + signum for signum in received}
            failed = [c for c in codes if c not in (None, 0) and c not in stopped]
            if failed and not code:
                code, deadline = failed[0], time.monotonic() + grace_s
                for worker in workers:
                    if worker.poll() is None:
                        worker.terminate()
            if deadline is not None and time.monotonic() > deadline:
                for worker in workers:
                    worker.kill()
            time.sleep(0.05)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return code or next((w.returncode for w in workers if w.returncode), 0), received

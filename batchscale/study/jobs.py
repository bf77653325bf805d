"""A study's jobs: `<out>/jobs.json` (each run's job record, read and checked as one line on
damage, written atomically), the scheduler's word for each job (the controller's live queue for
SLURM, the controller process for submitit's local executor) and the `--status` table.
Whether a job is queued or running is asked of the controller's live queue (`squeue`), never of
accounting (`sacct`): a task cancelled while pending has no sacct row, and a cluster may have no
accounting at all. batchscale/study/launchers.py submits the jobs.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import subprocess
import time
from pathlib import Path

from batchscale import files
from batchscale.engine import rundir
from batchscale.errors import UserError
from batchscale.study.expand import Run, unique_runs

JOBS_FILE = "jobs.json"
WAIT_POLL_S = 10.0
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
                 "SUSPENDED", "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT",
                 "RESV_DEL_HOLD", "POWER_UP_NODE"}
ENDED = "ENDED"  # the job is no longer in the controller's queue
JOB_ID = re.compile(r"^[0-9]+(_[0-9]+)?$")  # a job, or an array task


def summary_of(run_dir: Path) -> dict:
    path = run_dir / rundir.SUMMARY
    return rundir.read_json(path) if path.exists() else {}


def first_error(*texts: str) -> str:
    lines = [line.strip() for text in texts for line in text.splitlines() if line.strip()]
    for line in lines:
        if "error:" in line:
            return line.split("error:", 1)[1].strip()
    return lines[0] if lines else "no message"


# ---------------------------------------------------------------------- jobs.json
def read_jobs(out: Path) -> dict:
    """`<out>/jobs.json`, checked: a damaged file is one line, never a traceback."""
    path = out / JOBS_FILE
    if not path.exists():
        return {}
    try:
        records = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; restore it, or remove it (then its jobs "
                        "are no longer tracked)") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}); restore "
                        "it, or remove it (then its jobs are no longer tracked)") from None
    if not isinstance(records, dict):
        raise UserError(f"{path} must hold an object of run directory -> job record")
    for name, record in records.items():
        problem = _record_problem(record)
        if problem:
            raise UserError(f"{path}: the record of {name} {problem}")
        record["job_id"] = str(record["job_id"])
    return records


def _record_problem(record) -> str | None:
    if not isinstance(record, dict):
        return "is not an object"
    job_id = record.get("job_id")
    if isinstance(job_id, bool) or not isinstance(job_id, str | int) or not JOB_ID.match(
            str(job_id)):
        return f"has job_id {job_id!r}, not a job id (digits, or digits_digits for a task)"
    if record.get("executor") not in ("local", "slurm"):
        return f"has executor {record.get('executor')!r}, not 'local' or 'slurm'"
    if record["executor"] == "local" and not str(job_id).isdigit():
        return f"has job_id {job_id!r}, not a process id"
    if not isinstance(record.get("submitted"), int | float) or isinstance(
            record.get("submitted"), bool):
        return "has no number 'submitted'"
    if not isinstance(record.get("folder"), str):
        return "has no 'folder'"
    earlier = record.get("earlier_jobs", [])
    if not isinstance(earlier, list) or not all(
            isinstance(j, str | int) and JOB_ID.match(str(j)) for j in earlier):
        return "has 'earlier_jobs' that are not job ids"
    return None


def write_jobs(out: Path, jobs: dict) -> None:
    text = json.dumps(jobs, indent=2) + "\n"
    files.write_text(out / JOBS_FILE, text)


# ---------------------------------------------------------------------- job states
def slurm_queue() -> dict[str, str]:
    """The controller's live queue of this user's jobs: job id (`A_T` for an array task) ->
    state (PENDING, RUNNING, ..., or a final one for a job that ended minutes ago)."""
    user = pwd.getpwuid(os.getuid()).pw_name
    command = ["squeue", "--noheader", "--array", "--user", user, "--format", "%i|%T"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as err:
        raise UserError(f"squeue failed ({err}): cannot tell which jobs are queued") from None
    if done.returncode:
        raise UserError(f"squeue failed: {first_error(done.stderr, done.stdout)}; cannot tell "
                        "which jobs are queued")
    return dict(line.split("|", 1) for line in done.stdout.split() if "|" in line)


def job_state(record: dict, queue: dict[str, str] | None = None) -> str:
    """The scheduler's word for a recorded job, in capitals: for SLURM its state in the live
    queue (`queue`, asked of squeue when not given), ENDED once it left the queue."""
    if record["executor"] == "local":  # a local job's id is its controller's process id
        return "RUNNING" if _submitit_process(int(record["job_id"])) else "FINISHED"
    if queue is None:
        queue = slurm_queue()
    return queue.get(record["job_id"], ENDED)


def _submitit_process(pid: int) -> bool:
    try:
        return b"submitit" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def active(record: dict | None, queue: dict[str, str] | None = None) -> bool:
    return record is not None and job_state(record, queue) in ACTIVE_STATES


def queue_for(records: dict) -> dict[str, str] | None:
    """The live queue when any record is a SLURM job (one squeue for a whole table)."""
    return slurm_queue() if any(r["executor"] == "slurm" for r in records.values()) else None


# ---------------------------------------------------------------------- --status
def run_status(run: Run, out: Path, record: dict | None, queue: dict | None = None) -> str:
    """queued / running at epoch e / completed / diverged / failed / interrupted / ..."""
    directory = out / run.directory
    summary = summary_of(directory)
    status = summary.get("status")
    done = len(rundir.read_metrics(directory))
    if status == "completed":
        return f"completed (test acc {summary['final_test_acc']:.4f})"
    if status == "diverged":
        return f"diverged at step {summary['diverged_at_step']}"
    state = job_state(record, queue) if record else None
    if state == "RUNNING":
        return f"running at epoch {min(done + 1, run.cfg.epochs)}/{run.cfg.epochs}"
    if state in ACTIVE_STATES:
        return "queued"
    ended = f" (job {state.lower()})" if state not in (None, ENDED, "FINISHED",
                                                        "COMPLETED") else ""
    if status in ("failed", "interrupted"):
        return f"{status} after epoch {done}/{run.cfg.epochs}{ended}"
    if (directory / rundir.CONFIG).exists():
        return f"unfinished after epoch {done}/{run.cfg.epochs}{ended}"
    return "not started" + ended


def status_table(runs: list[Run], out: Path) -> str:
    records = read_jobs(out)
    queue = queue_for(records)
    rows = [["run", "state", "job"]]
    for run in unique_runs(runs):
        record = records.get(run.directory)
        rows.append([run.directory, run_status(run, out, record, queue),
                     record["job_id"] if record else "-"])
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def study_parallelism(out: Path) -> int | None:
    """The array parallelism the study's jobs were submitted with (the smallest)."""
    given = [r["array_parallelism"] for r in read_jobs(out).values()
             if isinstance(r.get("array_parallelism"), int)]
    return min(given) if given else None


def status_hint(args, out: Path) -> str:
    """The command that shows the study's state, with the options that chose its runs."""
    words = ["batchscale", "study", args.preset, "--out", str(out)]
    for pair in args.set or []:
        words += ["--set", pair]
    if args.seeds is not None:
        words += ["--seeds", str(args.seeds)]
    return " ".join(shlex.quote(w) for w in [*words, "--status"])


def wait_for_jobs(job_ids: list[str], poll_s: float = WAIT_POLL_S) -> None:
    """Until none of the jobs is queued or running (asked of squeue)."""
    while any(slurm_queue().get(job_id, ENDED) in ACTIVE_STATES for job_id in job_ids):
        time.sleep(poll_s)

"""Where a study's runs execute: `local` (the process pool of batchscale.study.sweep) or
`slurm` (one SLURM job per run, through submitit), and the `--status` table of a study folder.

    batchscale study table3 --launcher slurm --slurm-partition gpu --slurm-time 720 \\
        --gpus-per-run 4 --slurm-array-parallelism 8 --slurm-opt account=myproj
    batchscale study table3 --status                     # queued / running at epoch e / ...

The study folder stays the unit of truth. Each submission is recorded in `<out>/jobs.json`
(written atomically): a rerun of the same command skips completed and diverged runs, leaves
alone runs whose job is still queued or running (asked of submitit), and submits the others,
resuming those that hold a checkpoint. Several runs go as one job array. A job with W GPUs runs
`torchrun --standalone --nproc-per-node W -m batchscale train` on its node.

Preemption and time limits: SLURM sends USR2 shortly before (submitit's `--signal`); submitit
calls `TrainJob.checkpoint`, which stops the training at its next step (SIGTERM: the engine
saves a checkpoint) and hands submitit the same job with resume, which it requeues. Job logs are
in `<out>/slurm/`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from batchscale import files
from batchscale.config import config_flags, how_flags
from batchscale.engine import checkpoint, rundir, tensorboard
from batchscale.errors import UserError
from batchscale.results.report import write_report
from batchscale.study.expand import PLAN_FILE, Run, unique_runs

try:
    import submitit
except ImportError:  # the slurm extra is optional
    submitit = None

JOBS_FILE = "jobs.json"
JOBS_FOLDER = "slurm"  # submitit's scripts, pickles and logs, under the study folder
STOP_WAIT_S = 80.0  # a preempted run's time to reach its next step and save (SLURM gives 90 s)
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
                 "SUSPENDED", "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT"}
RECENT_S = 600.0  # sacct may not know a job for a moment after it is submitted
MISSING = ("--launcher slurm needs the submitit package: pip install 'batchscale[slurm]' "
           "(or pip install submitit)")
SLURM_ONLY = ("slurm_partition", "slurm_time", "gpus_per_run", "slurm_array_parallelism",
              "slurm_opt", "wait")


# ---------------------------------------------------------------------- the job
class TrainJob:
    """What a job runs: `batchscale train` for one run directory, under torchrun with `gpus`
    workers when gpus > 1. Submitit's checkpointing protocol: `checkpoint()` returns the job to
    requeue (a submitit DelayedSubmission of the same job, resuming)."""

    def __init__(self, run_dir: str, flags: list[str], how_flags: list[str], gpus: int = 1,
                 resume: bool = False):
        self.run_dir, self.flags, self.how_flags = str(run_dir), flags, how_flags
        self.gpus, self.resume = gpus, resume
        self._process, self._waiter = None, None

    def __getstate__(self):
        return {k: v for k, v in vars(self).items() if k not in ("_process", "_waiter")}

    def __setstate__(self, state):
        vars(self).update(state, _process=None, _waiter=None)

    def command(self, threads: int | None = None) -> list[str]:
        """The command line that trains (or resumes) the run."""
        if self.gpus > 1:
            head = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes",
                    "1", "--nproc-per-node", str(self.gpus), "-m", "batchscale"]
        else:
            head = [sys.executable, "-m", "batchscale"]
        head += ["train", "--out", self.run_dir, "--quiet"]
        if self.resume or (Path(self.run_dir) / rundir.CONFIG).exists():
            tail = ["--resume", *self.how_flags]
        else:  # a directory without config.yaml holds nothing to keep
            tail = [*self.flags, "--overwrite"]
        return head + tail + (["--threads", str(threads)] if threads else [])

    def __call__(self) -> dict:
        """Train; the run's summary status, or an error when it failed."""
        threads = max(1, len(os.sched_getaffinity(0)) // self.gpus)
        command = self.command(threads)
        print("batchscale job:", " ".join(command), flush=True)
        # SLURM signals every process of the job; USR2 is this process's to turn into SIGTERM
        self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, preexec_fn=_ignore_usr2)
        self._waiter = threading.Thread(target=self._process.wait, daemon=True)
        self._waiter.start()
        self._waiter.join()
        code = self._process.returncode
        status = _summary(Path(self.run_dir)).get("status", "failed")
        if code and status != "interrupted":
            raise RuntimeError(f"batchscale train exited with {code}: status {status}")
        return {"run_dir": self.run_dir, "status": status, "exit_code": code}

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on USR2: stop the run at its next step (it saves a checkpoint),
        wait for it, and return this job, resuming, for submitit to requeue."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            self._waiter.join(STOP_WAIT_S)
        saved = Path(self.run_dir) / checkpoint.NAME
        print(f"batchscale job: stopped for requeue; checkpoint {saved} "
              f"{'saved' if saved.exists() else 'absent'}", flush=True)
        resumed = TrainJob(self.run_dir, self.flags, self.how_flags, self.gpus, resume=True)
        return submitit.helpers.DelayedSubmission(resumed)


def _ignore_usr2() -> None:
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def _summary(run_dir: Path) -> dict:
    path = run_dir / rundir.SUMMARY
    return rundir.read_json(path) if path.exists() else {}


def train_job(run: Run, out: Path, gpus: int) -> TrainJob:
    """The job of one run of a study."""
    if gpus > 1 and run.cfg.workers not in (0, gpus):
        raise UserError(f"{run.name} has workers={run.cfg.workers}; --gpus-per-run {gpus} "
                        "starts that many workers: make them equal")
    how = how_flags(run.cfg) + ["--epochs", str(run.cfg.epochs)]
    return TrainJob(str(out / run.directory), config_flags(run.cfg), how, gpus)


# ---------------------------------------------------------------------- executors
def require_submitit():
    if submitit is None:
        raise UserError(MISSING)
    return submitit


def parse_slurm_opts(pairs: list[str]) -> dict:
    """`--slurm-opt key=value` pairs: submitit's SlurmExecutor parameters where the key is one
    (`mem`, `cpus_per_task`, `account`, `qos`, `constraint`...), raw sbatch options otherwise."""
    known, extra = {}, {}
    valid = require_submitit().SlurmExecutor._valid_parameters()
    for pair in pairs or []:
        if "=" not in pair:
            raise UserError(f"--slurm-opt expects KEY=VALUE, got '{pair}'")
        key, value = (part.strip() for part in pair.split("=", 1))
        name = key.replace("-", "_")
        if name in valid:
            known[name] = int(value) if value.isdigit() else value
        else:
            extra[key] = value
    if extra:
        known["additional_parameters"] = extra
    return known


def slurm_executor(out: Path, partition: str | None, time_min: int, gpus: int,
                   array_parallelism: int, opts: list[str] | None = None):
    """A submitit SlurmExecutor writing into `<out>/slurm/`: one task per job, `gpus` GPUs."""
    try:
        executor = require_submitit().SlurmExecutor(folder=str(out / JOBS_FOLDER),
                                                    max_num_timeout=20)
    except RuntimeError as err:  # no srun: not a SLURM machine
        raise UserError(f"--launcher slurm: {err}") from None
    params = {"job_name": "batchscale", "time": time_min, "nodes": 1, "ntasks_per_node": 1,
              "gpus_per_node": gpus or None, "array_parallelism": array_parallelism,
              "signal_delay_s": 90, "stderr_to_stdout": True}
    if partition:
        params["partition"] = partition
    params.update(parse_slurm_opts(opts))
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor


def sbatch_script(executor, jobs: list[TrainJob]) -> str:
    """The sbatch script submitit would submit for `jobs` (one job, or an array of them)."""
    params = dict(executor.parameters)
    if len(jobs) > 1:
        params["map_count"] = len(jobs)
    lines = [f"# task {i}: {' '.join(job.command())}" for i, job in enumerate(jobs)]
    params["setup"] = [*params.get("setup", []), *lines]
    module = sys.modules[type(executor).__module__]
    return module._make_sbatch_string(command=executor._submitit_command_str,
                                      folder=executor.folder, **params)


# ---------------------------------------------------------------------- jobs.json
def read_jobs(out: Path) -> dict:
    """The recorded jobs; a jobs.json that is cut or holds other than job records is a
    UserError naming it."""
    path = out / JOBS_FILE
    if not path.exists():
        return {}
    try:
        jobs = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {err}".splitlines()[0]) from None
    for name, record in (jobs.items() if isinstance(jobs, dict) else [("", None)]):
        if not (isinstance(record, dict) and record.get("executor") in ("local", "slurm")
                and isinstance(record.get("job_id"), str)
                and record["job_id"].replace("_", "").isdigit()
                and isinstance(record.get("submitted", 0), (int, float))):
            raise UserError(f"cannot read {path}: the record of {name or 'its runs'} is not a "
                            "job (executor local or slurm, a numeric job_id); remove the file "
                            "to forget the jobs")
    return jobs


def write_jobs(out: Path, jobs: dict) -> None:
    text = json.dumps(jobs, indent=2) + "\n"
    files.write_text(out / JOBS_FILE, text)


def job_state(record: dict) -> str:
    """The scheduler's word for a recorded job, in capitals (submitit asks sacct for SLURM)."""
    if record["executor"] == "local":  # a local job's id is its controller's process id
        return "RUNNING" if _submitit_process(int(record["job_id"])) else "FINISHED"
    job = require_submitit().SlurmJob(folder=record["folder"], job_id=record["job_id"])
    state = str(job.state).upper().split()[0]
    if state == "UNKNOWN" and time.time() - record["submitted"] < RECENT_S:
        return "PENDING"
    return state


def _submitit_process(pid: int) -> bool:
    try:
        return b"submitit" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def active(record: dict | None) -> bool:
    return record is not None and job_state(record) in ACTIVE_STATES


# ---------------------------------------------------------------------- submitting
def submit(runs: list[Run], out: Path, executor, gpus: int = 1) -> dict[str, list[str]]:
    """Submit every run that is not final and has no queued or running job; record the jobs.
    Returns the run names by what happened: submitted, resumed, skipped, queued."""
    out.mkdir(parents=True, exist_ok=True)
    records = read_jobs(out)
    outcome = {"submitted": [], "resumed": [], "skipped": [], "queued": []}
    todo = []
    for run in unique_runs(runs):
        directory = out / run.directory
        if _summary(directory).get("status") in rundir.FINAL_STATUSES:
            outcome["skipped"].append(run.directory)
        elif active(records.get(run.directory)):
            outcome["queued"].append(run.directory)
        else:
            resume = (directory / rundir.CONFIG).exists()
            todo.append((run, train_job(run, out, gpus), resume))
    if not todo:
        return outcome
    with executor.batch():
        pending = [executor.submit(job) for _, job, _ in todo]
    kind = "local" if type(executor).__name__ == "LocalExecutor" else "slurm"
    for (run, _, resume), submitted in zip(todo, pending, strict=True):
        previous = records.get(run.directory, {})
        records[run.directory] = {
            "job_id": str(submitted.job_id), "executor": kind, "folder": str(executor.folder),
            "submitted": time.time(), "resume": resume,
            "earlier_jobs": previous.get("earlier_jobs", []) + (
                [previous["job_id"]] if previous else [])}
        outcome["resumed" if resume else "submitted"].append(run.directory)
    write_jobs(out, records)
    outcome["jobs"] = pending
    return outcome


# ---------------------------------------------------------------------- --status
def run_status(run: Run, out: Path, record: dict | None) -> str:
    """queued / running at epoch e / completed / diverged / failed / interrupted / ..."""
    directory = out / run.directory
    summary = _summary(directory)
    status = summary.get("status")
    done = len(rundir.read_metrics(directory))
    if status == "completed":
        return f"completed (test acc {summary['final_test_acc']:.4f})"
    if status == "diverged":
        return f"diverged at step {summary['diverged_at_step']}"
    state = job_state(record) if record else None
    if state == "RUNNING":
        return f"running at epoch {min(done + 1, run.cfg.epochs)}/{run.cfg.epochs}"
    if state in ACTIVE_STATES:
        return "queued"
    if status in ("failed", "interrupted"):
        return f"{status} after epoch {done}/{run.cfg.epochs}"
    if (directory / rundir.CONFIG).exists():
        return f"unfinished after epoch {done}/{run.cfg.epochs}"
    return "not started"


def status_table(runs: list[Run], out: Path) -> str:
    records = read_jobs(out)
    rows = [["run", "state", "job"]]
    for run in unique_runs(runs):
        record = records.get(run.directory)
        rows.append([run.directory, run_status(run, out, record),
                     record["job_id"] if record else "-"])
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


# ---------------------------------------------------------------------- command line
def check_options(args, runs: list[Run]) -> None:
    """The launcher options fit together and the extras they need are installed."""
    defaults = {"slurm_time": 1440, "gpus_per_run": 1, "slurm_array_parallelism": 256,
                "slurm_opt": [], "wait": False, "slurm_partition": None}
    if args.launcher == "local" and not args.status:
        given = [n for n in SLURM_ONLY if getattr(args, n) != defaults[n]]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} needs --launcher slurm")
    if args.launcher == "slurm":
        require_submitit()
        for name in ("slurm_time", "gpus_per_run", "slurm_array_parallelism"):
            if getattr(args, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    for run in runs:
        tensorboard.check(run.cfg)


def launcher_command(args, runs: list[Run], out: Path, plan: dict) -> int:
    """`--status`, or `--launcher slurm`: submit, print what happened (and wait with --wait)."""
    if args.status:
        print(status_table(runs, out))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    files.write_text(out / PLAN_FILE, yaml.safe_dump(plan, sort_keys=False))
    executor = slurm_executor(out, args.slurm_partition, args.slurm_time, args.gpus_per_run,
                              args.slurm_array_parallelism, args.slurm_opt)
    outcome = submit(runs, out, executor, args.gpus_per_run)
    records = read_jobs(out)
    for key in ("submitted", "resumed", "queued"):
        for name in outcome[key]:
            print(f"{name}: {key} (job {records[name]['job_id']})")
    print("runs: " + ", ".join(f"{len(v)} {k}" for k, v in outcome.items()
                               if k != "jobs" and v), flush=True)
    if not args.wait:
        print(f"follow with: batchscale study {args.preset} --out {out} --status")
        return 0
    for job in outcome.get("jobs", []):
        job.wait()
    print(status_table(runs, out))
    if all(_summary(out / r.directory).get("status") in rundir.FINAL_STATUSES
           for r in unique_runs(runs)):
        print(f"report: {write_report(out)}")
        return 0
    return 1

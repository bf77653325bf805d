"""Where a study's runs execute: `local` (the process pool of batchscale.study.sweep) or
`slurm` (one SLURM job per run, through submitit), and the `--status` table of a study folder.

    batchscale study table3 --launcher slurm --slurm-partition gpu --slurm-time 720 \\
        --gpus-per-run 4 --slurm-array-parallelism 8 --slurm-opt account=myproj
    batchscale study table3 --out runs/table3 --status     # queued / running at epoch e / ...

The study folder stays the unit of truth: `<out>/study.yaml` is its plan (`--status` and reruns
read it) and each submission is recorded in `<out>/jobs.json` (written atomically). A rerun
skips completed and diverged runs, leaves alone runs whose job is still queued or running and
submits the others, resuming those that hold a checkpoint (job states: study/jobs.py). Several
runs go as one job array; while earlier jobs of the study are queued or running, a new array
waits for them (`--dependency=afterany`), so `--slurm-array-parallelism` holds for the study.
Each job asks for the CPUs its run uses (threads x workers); `--gpus-per-run 0` (the default on
a partition without GPUs, or for device=cpu runs) asks for no GPU. A job with W GPUs runs
`torchrun --standalone --nproc-per-node W -m batchscale train` on its node.

Preemption and time limits: SLURM sends USR2 shortly before (submitit's `--signal`); submitit
calls `TrainJob.checkpoint`, which stops the training at its next step (SIGTERM: the engine
saves a checkpoint) and hands submitit the same job with resume, which it requeues. Job logs are
in `<out>/slurm/` (`<array>_<task>_0_log.out`, or `<job>_0_log.out` for a single job).
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import shutil
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
from batchscale.study.jobs import (
    ACTIVE_STATES,
    first_error,
    job_state,
    read_jobs,
    slurm_queue,
    status_hint,
    status_table,
    study_parallelism,
    summary_of,
    wait_for_jobs,
    write_jobs,
)

try:
    import submitit
except ImportError:  # the slurm extra is optional
    submitit = None

JOBS_FOLDER = "slurm"  # submitit's scripts, pickles and logs, under the study folder
STOP_WAIT_S = 80.0  # a preempted run's time to reach its next step and save (SLURM gives 90 s)
DEFAULT_PARALLELISM = 256
MISSING = ("--launcher slurm needs the submitit package: pip install 'batchscale[slurm]' "
           "(or pip install submitit)")
SLURM_ONLY = ("slurm_partition", "slurm_time", "gpus_per_run", "slurm_array_parallelism",
              "slurm_opt", "wait")
DEFAULTS = {"slurm_time": 1440, "gpus_per_run": None, "slurm_array_parallelism": None,
            "slurm_opt": [], "wait": False, "slurm_partition": None}


# ---------------------------------------------------------------------- the job
class TrainJob:
    """What a job runs: `batchscale train` for one run directory with `threads` threads per
    process, under torchrun with `gpus` workers when gpus > 1. Submitit's checkpointing
    protocol: `checkpoint()` returns the job to requeue (a DelayedSubmission, resuming)."""

    def __init__(self, run_dir: str, flags: list[str], how_flags: list[str], gpus: int = 1,
                 resume: bool = False, threads: int = 0):
        self.run_dir, self.flags, self.how_flags = str(run_dir), flags, how_flags
        self.gpus, self.resume, self.threads = gpus, resume, threads
        self._process, self._waiter = None, None

    def __getstate__(self):
        return {k: v for k, v in vars(self).items() if k not in ("_process", "_waiter")}

    def __setstate__(self, state):
        vars(self).update({"threads": 0, **state}, _process=None, _waiter=None)

    def command(self, threads: int | None = None) -> list[str]:
        """The command line that trains (or resumes) the run, `--threads` given once."""
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
        threads = threads or self.threads
        if threads:
            tail = _without_option(tail, "--threads") + ["--threads", str(threads)]
        return head + tail

    def __call__(self) -> dict:
        """Train; the run's summary status, or an error when it failed."""
        threads = self.threads or max(1, len(os.sched_getaffinity(0)) // max(self.gpus, 1))
        command = self.command(threads)
        print("batchscale job:", " ".join(command), flush=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        # SLURM signals every process of the job; USR2 is this process's to turn into SIGTERM
        self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, env=env,
                                         preexec_fn=_ignore_usr2)
        self._waiter = threading.Thread(target=self._process.wait, daemon=True)
        self._waiter.start()
        self._waiter.join()
        code = self._process.returncode
        status = summary_of(Path(self.run_dir)).get("status", "failed")
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
        resumed = TrainJob(self.run_dir, self.flags, self.how_flags, self.gpus, resume=True,
                           threads=self.threads)
        return submitit.helpers.DelayedSubmission(resumed)


def _without_option(flags: list[str], option: str) -> list[str]:
    """`flags` without `option VALUE` (and `option=VALUE`)."""
    kept, skip = [], False
    for flag in flags:
        if skip:
            skip = False
        elif flag == option:
            skip = True
        elif not flag.startswith(option + "="):
            kept.append(flag)
    return kept


def _ignore_usr2() -> None:
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def train_job(run: Run, out: Path, gpus: int) -> TrainJob:
    """The job of one run of a study."""
    if gpus > 1 and run.cfg.workers not in (0, gpus):
        raise UserError(f"{run.name} has workers={run.cfg.workers}; --gpus-per-run {gpus} "
                        "starts that many workers: make them equal")
    if gpus == 0 and run.cfg.device == "cuda":
        raise UserError(f"{run.name} has device=cuda; --gpus-per-run 0 gives its job no GPU")
    how = how_flags(run.cfg) + ["--epochs", str(run.cfg.epochs)]
    return TrainJob(str(out / run.directory), config_flags(run.cfg), how, gpus,
                    threads=run.cfg.threads)


def run_cpus(run: Run, gpus: int) -> int:
    """The CPUs a run's job uses: its threads in each of its processes."""
    return max(run.cfg.threads, 1) * max(run.cfg.workers, gpus, 1)


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
                   array_parallelism: int, opts: list[str] | None = None,
                   cpus: int | None = None):
    """A submitit SlurmExecutor writing into `<out>/slurm/`: one task per job, `gpus` GPUs
    (none asked for when 0), `cpus` CPUs; `--slurm-opt` values take precedence."""
    try:
        executor = require_submitit().SlurmExecutor(folder=str(out / JOBS_FOLDER),
                                                    max_num_timeout=20)
    except RuntimeError as err:  # no srun: not a SLURM machine
        raise UserError(f"--launcher slurm: {err}") from None
    params = {"job_name": "batchscale", "time": time_min, "nodes": 1, "ntasks_per_node": 1,
              "gpus_per_node": gpus or None, "cpus_per_task": cpus,
              "array_parallelism": array_parallelism, "signal_delay_s": 90,
              "stderr_to_stdout": True}
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


def _after(executor, job_ids: list[str]) -> None:
    """Let the executor's next submission start only when these jobs have ended."""
    arrays = sorted({job_id.split("_")[0] for job_id in job_ids}, key=int)
    extra = dict(executor.parameters.get("additional_parameters") or {})
    dependency = "afterany:" + ":".join(arrays)
    extra["dependency"] = (f"{extra['dependency']},{dependency}" if extra.get("dependency")
                           else dependency)
    executor.update_parameters(additional_parameters=extra)


def _submit_all(executor, jobs: list[TrainJob]) -> list:
    """Submit `jobs` as one array (or one job). When sbatch refuses: one line, and the files
    this submission wrote into the jobs folder are removed."""
    folder = Path(executor.folder)
    existed = folder.exists()
    before = set(folder.iterdir()) if existed else set()
    errors = io.StringIO()
    failures = (submitit.core.utils.FailedJobError, OSError, subprocess.SubprocessError)
    try:
        with contextlib.redirect_stderr(errors):  # submitit prints sbatch's stderr itself
            with executor.batch():
                return [executor.submit(job) for job in jobs]
    except failures as err:
        for path in (set(folder.iterdir()) if folder.exists() else set()) - before:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        if not existed and folder.exists():
            folder.rmdir()
        raise UserError(f"sbatch refused the jobs: {first_error(str(err), errors.getvalue())}"
                        ) from None


# ---------------------------------------------------------------------- submitting
def submit(runs: list[Run], out: Path, executor, gpus: int = 1) -> dict[str, list[str]]:
    """Submit every run that is not final and has no queued or running job; record the jobs.
    Returns the run names by what happened: submitted, resumed, skipped, running, queued."""
    out.mkdir(parents=True, exist_ok=True)
    records = read_jobs(out)
    kind = "local" if type(executor).__name__ == "LocalExecutor" else "slurm"
    queue = slurm_queue() if kind == "slurm" else None
    outcome = {"submitted": [], "resumed": [], "skipped": [], "running": [], "queued": []}
    todo = []
    for run in unique_runs(runs):
        directory = out / run.directory
        record = records.get(run.directory)
        state = job_state(record, queue) if record else None
        if summary_of(directory).get("status") in rundir.FINAL_STATUSES:
            outcome["skipped"].append(run.directory)
        elif state in ACTIVE_STATES:
            outcome["running" if state == "RUNNING" else "queued"].append(run.directory)
        else:
            resume = (directory / rundir.CONFIG).exists()
            todo.append((run, train_job(run, out, gpus), resume))
    if not todo:
        return outcome
    busy = [r["job_id"] for r in records.values()
            if r["executor"] == "slurm" and job_state(r, queue) in ACTIVE_STATES]
    if kind == "slurm" and busy:  # the study's array parallelism holds across submissions
        _after(executor, busy)
    pending = _submit_all(executor, [job for _, job, _ in todo])
    for (run, _, resume), submitted in zip(todo, pending, strict=True):
        previous = records.get(run.directory, {})
        records[run.directory] = {
            "job_id": str(submitted.job_id), "executor": kind, "folder": str(executor.folder),
            "submitted": time.time(), "resume": resume,
            "array_parallelism": executor.parameters.get("array_parallelism"),
            "earlier_jobs": previous.get("earlier_jobs", []) + (
                [previous["job_id"]] if previous else [])}
        outcome["resumed" if resume else "submitted"].append(run.directory)
    write_jobs(out, records)
    outcome["jobs"] = pending
    return outcome


def check_private(out: Path) -> None:
    """Refuse a study folder that others may write: its jobs unpickle `<out>/slurm/*.pkl`."""
    for path in (out, out / JOBS_FOLDER):
        if path.exists() and path.stat().st_mode & 0o022:
            raise UserError(f"{path} is group- or world-writable (mode "
                            f"{path.stat().st_mode & 0o777:o}) and its jobs run the pickles in "
                            f"{out / JOBS_FOLDER}: chmod go-w {shlex.quote(str(path))}")


def default_gpus(runs: list[Run], partition: str | None) -> int:
    """GPUs per job when --gpus-per-run is not given: none for device=cpu runs or on a
    partition without GPUs (sinfo's gres), else one."""
    if all(run.cfg.device == "cpu" for run in runs):
        return 0
    try:
        done = subprocess.run(["sinfo", "--noheader", "--format", "%P|%G"], capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return 1
    rows = [line.split("|", 1) for line in done.stdout.split() if "|" in line]
    if done.returncode or not rows:
        return 1
    chosen = [g for p, g in rows if (p.rstrip("*") == partition if partition else
                                     p.endswith("*"))]
    return 1 if any("gpu" in g for g in chosen) else 0


# ---------------------------------------------------------------------- command line
def check_options(args, runs: list[Run]) -> None:
    """The launcher options fit together and the extras they need are installed."""
    if args.launcher == "local" and not args.status:
        given = [n for n in SLURM_ONLY if getattr(args, n) != DEFAULTS[n]]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} needs --launcher slurm")
    if args.launcher == "slurm":
        require_submitit()
        for name, least in (("slurm_time", 1), ("gpus_per_run", 0),
                            ("slurm_array_parallelism", 1)):
            value = getattr(args, name)
            if value is not None and value < least:
                raise UserError(f"--{name.replace('_', '-')} must be at least {least}")
    for run in runs:
        tensorboard.check(run.cfg)


def launcher_command(args, runs: list[Run], out: Path, plan: dict) -> int:
    """`--status`, or `--launcher slurm`: submit, print what happened (and wait with --wait)."""
    if args.status:
        print(status_table(runs, out))
        return 0
    check_private(out)
    gpus = (args.gpus_per_run if args.gpus_per_run is not None
            else default_gpus(runs, args.slurm_partition))
    parallelism = (args.slurm_array_parallelism or study_parallelism(out)
                   or DEFAULT_PARALLELISM)
    cpus = max(run_cpus(run, gpus) for run in unique_runs(runs))
    executor = slurm_executor(out, args.slurm_partition, args.slurm_time, gpus, parallelism,
                              args.slurm_opt, cpus)
    created, jobs_folder = not out.exists(), not (out / JOBS_FOLDER).exists()
    umask = os.umask(0o022)
    os.umask(umask | 0o022)  # submitit's folder and pickles: not writable by others
    try:
        out.mkdir(mode=0o755, parents=True, exist_ok=True)
        (out / JOBS_FOLDER).mkdir(mode=0o755, exist_ok=True)
        outcome = submit(runs, out, executor, gpus)
    except UserError:  # what this command created held nothing before it
        if created or jobs_folder:
            shutil.rmtree(out if created else out / JOBS_FOLDER, ignore_errors=True)
        raise
    finally:
        os.umask(umask)
    files.write_text(out / PLAN_FILE, yaml.safe_dump(plan, sort_keys=False))
    records = read_jobs(out)
    for key in ("submitted", "resumed", "running", "queued"):
        for name in outcome[key]:
            print(f"{name}: {key} (job {records[name]['job_id']})")
    print("runs: " + ", ".join(f"{len(v)} {k}" for k, v in outcome.items()
                               if k != "jobs" and v), flush=True)
    if not args.wait:
        print(f"follow with: {status_hint(args, out)}")
        return 0
    wait_for_jobs([records[n]["job_id"] for k in ("submitted", "resumed", "running", "queued")
                   for n in outcome[k]])
    print(status_table(runs, out))
    if all(summary_of(out / r.directory).get("status") in rundir.FINAL_STATUSES
           for r in unique_runs(runs)):
        print(f"report: {write_report(out)}")
        return 0
    return 1

"""Running a study's runs: each in its own `batchscale train` subprocess, N at once.

    batchscale study demo --jobs 2        # two runs at a time, each with cores/2 threads

Completed and diverged runs are skipped, others resumed from their checkpoint; a run that fails
(non-zero exit) is reported and the sweep goes on. Ctrl-C or SIGTERM stops every run at its next
step with a checkpoint; rerunning the same command resumes. Each run's output goes to
`<out>/logs/<recipe>_b<B>_seed<S>.log`.

The study folder is locked while the sweep runs (a second `study` on it is refused), and each
run's `train` process is told to stop (SIGTERM, so it checkpoints) when the sweep's process
dies, even by SIGKILL (Linux: PR_SET_PDEATHSIG). A study asking for more epochs than its runs
were trained for is refused unless `--extend` (then step/constant schedules are trained on).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from tqdm import tqdm

from batchscale import files
from batchscale.config import RESUMABLE_FIELDS, check_threads, config_flags, how_flags, load_yaml
from batchscale.engine import rundir
from batchscale.engine.lock import FolderLock
from batchscale.errors import UserError
from batchscale.results.report import write_report
from batchscale.study import launchers
from batchscale.study.expand import (
    PLAN_FILE,
    Run,
    cores,
    dry_run_table,
    expand,
    list_presets,
    load_preset,
    parse_overrides,
    plan_document,
    run_status,
    unique_runs,
)
from batchscale.study.gpus import Placement, check_fits, gpus_needed, visible_gpus

POLL_S = 0.5


def check_existing(runs: list[Run], out: Path, extend: bool = False) -> None:
    """Refuse to mix settings: an existing run must have the settings the preset now gives.
    A different number of epochs is refused too, unless `extend` (the runs are trained on)."""
    for run in unique_runs(runs):
        saved = out / run.directory / rundir.CONFIG
        if not saved.exists():
            continue
        old, new = load_yaml(saved).to_dict(), run.cfg.to_dict()
        changed = [k for k in new if k not in RESUMABLE_FIELDS and old.get(k) != new[k]
                   and not (extend and k == "epochs")]
        if "epochs" in changed:
            raise UserError(f"{saved.parent} was run for {old['epochs']} epochs, the study now "
                            f"asks {new['epochs']}: a different length is a different recipe; "
                            f"pass --extend to train the runs on, or use another --out")
        if changed:
            k = changed[0]
            raise UserError(f"{saved.parent} was run with {k}={old.get(k)!r}, the study now "
                            f"asks {k}={new[k]!r}; use another --out or remove that run")
        if extend and new["epochs"] != old["epochs"]:
            rundir.check_extension(saved.parent, load_yaml(saved), new["epochs"])


def saved_epochs(directory: Path) -> int | None:
    saved = directory / rundir.CONFIG
    return load_yaml(saved).epochs if saved.exists() else None


def to_train(run: Run, out: Path) -> bool:
    """Whether a run still needs training: not finished, or planned longer than it ran."""
    directory = out / run.directory
    if run_status(directory) not in rundir.FINAL_STATUSES:
        return True
    return run_status(directory) == "completed" and saved_epochs(directory) != run.cfg.epochs


def train_command(run: Run, directory: Path, resume: bool) -> list[str]:
    command = [sys.executable, "-m", "batchscale", "train", "--out", str(directory), "--quiet"]
    if resume:
        return command + ["--resume", *how_flags(run.cfg)]  # e.g. --set tensorboard=true
    # a directory without config.yaml holds nothing to keep
    return command + config_flags(run.cfg) + ["--overwrite"]


# ---------------------------------------------------------------------- the child processes
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
    except OSError:
        return None


LIBC = _libc()


def die_with_parent(parent: int):
    """A preexec_fn: the child gets SIGTERM (and checkpoints) when the sweep's process dies,
    however it dies; if the parent is already gone, the child ends at once."""
    def preexec() -> None:
        if LIBC is not None:
            LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)
    return preexec


def child_env(jobs: int, threads: int) -> dict:
    """The children's environment: OpenMP threads sleep while waiting (OMP_WAIT_POLICY=PASSIVE)
    only where the runs share cores (jobs x threads > cores); a value set by the user stays."""
    env = dict(os.environ)
    if jobs * max(threads, 1) > cores():
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


@dataclass
class Active:
    run: Run
    process: subprocess.Popen
    log: object
    started: float = field(default_factory=time.perf_counter)
    gpus: list[int] = field(default_factory=list)  # indices into the study's Placement


def start(run: Run, out: Path, jobs: int = 1, gpu_env: dict | None = None) -> Active:
    directory = out / run.directory
    resume = (directory / rundir.CONFIG).exists()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = open(logs / (run.directory.replace("/", "_") + ".log"), "a")
    log.write(f"# {'resume' if resume else 'start'} {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    log.flush()
    command = train_command(run, directory, resume)
    if resume and saved_epochs(directory) != run.cfg.epochs:  # checked by check_existing
        command += ["--extend-epochs", "--epochs", str(run.cfg.epochs)]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL,
                               env={**child_env(jobs, run.cfg.threads), **(gpu_env or {})},
                               preexec_fn=die_with_parent(os.getpid()))
    return Active(run, process, log)


def outcome(active: Active, out: Path) -> tuple[str, str]:
    """How a finished run ended: (status, one line for the user)."""
    directory = out / active.run.directory
    summary_path = directory / rundir.SUMMARY
    try:
        summary = rundir.read_json(summary_path) if summary_path.exists() else {}
    except UserError:
        summary = {}
    status = summary.get("status", "failed")
    code = active.process.returncode
    if code and status in rundir.FINAL_STATUSES:
        status = "failed"
    if code is not None and code < 0 and status == "failed":  # killed by a signal
        status = "interrupted"
    text = f"{active.run.directory}: {status}"
    if status == "completed":
        text += (f", test {summary['final_test_acc']:.4f} train {summary['final_train_acc']:.4f}"
                 f" in {summary['wall_s']:.0f}s")
    elif status == "diverged":
        text += f" at step {summary['diverged_at_step']}"
    elif status != "interrupted":
        log_path = Path(active.log.name)
        lines = [ln for ln in log_path.read_text().splitlines() if ln.strip()]
        text += f" (exit {active.process.returncode}): {lines[-1] if lines else 'no output'}"
    return status, text


def epoch_of(active: Active, out: Path) -> str:
    done = len(rundir.read_metrics(out / active.run.directory))
    return f"{active.run.directory} ep {done}/{active.run.cfg.epochs}"


class _Terminated(Exception):
    pass


def _raise_terminated(signum, frame):
    raise _Terminated


def execute(runs: list[Run], out: Path, jobs: int = 1, stop_after: int | None = None,
            preset_document: dict | None = None, extend: bool = False,
            runs_per_gpu: int = 1) -> dict[str, int]:
    """Run every unfinished run; return counts by outcome. `stop_after` (for tests) stops
    launching new runs once that many have finished, as an interruption would. The study
    folder is locked meanwhile. On a machine with GPUs each run gets its own through
    CUDA_VISIBLE_DEVICES, `runs_per_gpu` per GPU."""
    placement = Placement(visible_gpus(), runs_per_gpu)
    check_fits([gpus_needed(r.cfg) for r in runs], len(placement.gpus), runs_per_gpu)
    with FolderLock(out, "batchscale study"):
        return _execute(runs, out, jobs, stop_after, preset_document, extend, placement)


def _execute(runs, out, jobs, stop_after, preset_document, extend, placement) -> dict[str, int]:
    check_existing(runs, out, extend)
    if preset_document is not None:
        files.write_text(out / PLAN_FILE, yaml.safe_dump(preset_document, sort_keys=False))
    todo = [r for r in unique_runs(runs) if to_train(r, out)]
    total = len(unique_runs(runs))
    counts = {"skipped": total - len(todo), "completed": 0, "diverged": 0, "failed": 0,
              "interrupted": 0}
    bar = tqdm(total=total, initial=counts["skipped"], desc="runs", unit="run",
               dynamic_ncols=True, disable=not sys.stderr.isatty())
    print(f"study {out}: {len(todo)} of {total} runs to train, {jobs} at a time; each run's "
          f"output in {out / 'logs'}/", flush=True)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    active: list[Active] = []
    try:
        _loop(todo, out, jobs, stop_after, active, counts, bar, placement)
    except (KeyboardInterrupt, _Terminated):
        _stop_all(active, out, counts, bar)
    finally:
        signal.signal(signal.SIGTERM, previous)
        bar.close()
    return counts


def _loop(todo, out, jobs, stop_after, active, counts, bar, placement: Placement) -> None:
    queue, finished = list(todo), 0
    while queue or active:
        while queue and len(active) < jobs and (stop_after is None or finished < stop_after):
            gpus = placement.take(queue[0].cfg)
            if gpus is None:  # every GPU it could use is full: wait for a run to end
                break
            gpu_env = {"CUDA_VISIBLE_DEVICES": placement.environment(gpus, {})[
                "CUDA_VISIBLE_DEVICES"]} if gpus else None
            active.append(start(queue.pop(0), out, jobs, gpu_env))
            active[-1].gpus = gpus
        if not active:
            return
        time.sleep(POLL_S)
        for item in [a for a in active if a.process.poll() is not None]:
            active.remove(item)
            placement.release(item.gpus)
            finished += _finish(item, out, counts, bar)
        bar.set_postfix_str("; ".join(epoch_of(a, out) for a in active))


def _finish(item: Active, out: Path, counts: dict, bar) -> int:
    item.log.close()
    status, line = outcome(item, out)
    counts[status] = counts.get(status, 0) + 1
    if bar.disable:
        print(line, flush=True)
    else:
        tqdm.write(line, file=sys.stderr)
    bar.update(1)
    return 1


def _stop_all(active: list[Active], out: Path, counts: dict, bar) -> None:
    """Ask every running run to checkpoint and stop, and wait for it."""
    for item in active:
        if item.process.poll() is None:
            item.process.send_signal(signal.SIGTERM)
    for item in active:
        try:
            item.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            item.process.kill()
            item.process.wait()
        item.log.close()
        print(outcome(item, out)[1], file=sys.stderr)
    counts["interrupted"] += max(len(active), 1)


# ---------------------------------------------------------------------- command line
def folder_plan(args) -> dict | None:
    """`<out>/study.yaml` where it decides which runs a command is about: always for --status,
    and for a --launcher slurm rerun that gives neither --set nor --seeds (the command line
    then names the preset only)."""
    if not (args.status or (args.launcher == "slurm" and not args.set and args.seeds is None)):
        return None
    if not args.out and not args.preset:
        return None
    path = Path(args.out or Path("runs") / args.preset) / PLAN_FILE
    if not path.exists():
        return None
    try:
        plan = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid YAML ({str(err).splitlines()[0]})") from None
    runs = plan.get("runs") if isinstance(plan, dict) else None
    if (not isinstance(plan, dict) or not isinstance(plan.get("preset"), str)
            or not isinstance(plan.get("overrides", {}), dict) or not isinstance(runs, list)
            or not runs or not all(isinstance(r, dict) and isinstance(r.get("seed"), int)
                                   for r in runs)):
        raise UserError(f"{path} is not a study plan (preset, overrides, runs)")
    plan.setdefault("overrides", {})
    if args.preset and args.preset != plan["preset"]:
        raise UserError(f"{path.parent} holds a study of preset {plan['preset']}, "
                        f"not {args.preset}")
    return plan


def check_plan(runs: list[Run], plan: dict, out: Path) -> None:
    """The preset, expanded with the plan's --set and seeds, gives the plan's runs."""
    listed = [(r.get("recipe"), r.get("batch_size"), r.get("seed"), r.get("directory"))
              for r in plan["runs"]]
    if [(r.recipe, r.batch_size, r.seed, r.directory) for r in runs] != listed:
        raise UserError(f"preset {plan['preset']} now gives other runs than {out / PLAN_FILE} "
                        f"lists (was the preset changed?); use another --out")


def study_command(args) -> int:
    """`batchscale study`: list, dry-run, or run a preset's sweep and write its report."""
    if args.list:
        print(list_presets())
        return 0
    if args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {args.jobs}")
    plan = folder_plan(args)
    if plan is not None:  # the study folder's own plan: preset, --set and --seeds
        args.preset = plan["preset"]
        preset, overrides = load_preset(args.preset), plan["overrides"]
        runs = expand(preset, 1 + max(r["seed"] for r in plan["runs"]), overrides, args.jobs)
        check_plan(runs, plan, Path(args.out or Path("runs") / args.preset))
    elif not args.preset:
        raise UserError(f"{Path(args.out) / PLAN_FILE} does not exist: give the study's PRESET"
                        if args.status and args.out else "study needs a PRESET (or --list)")
    else:
        preset = load_preset(args.preset)
        overrides = parse_overrides(args.set)
        runs = expand(preset, args.seeds, overrides, args.jobs)
    check_threads(runs[0].cfg)
    out = Path(args.out or Path("runs") / args.preset)
    if args.dry_run:
        print(dry_run_table(runs, out))
        print(f"{len(unique_runs(runs))} runs to train for {len(runs)} grid cells; out: {out}")
        return 0
    launchers.check_options(args, runs)  # --launcher slurm and --status: launchers.py
    if args.launcher == "slurm":
        check_existing(runs, out, args.extend)
    if args.status or args.launcher == "slurm":
        return launchers.launcher_command(args, runs, out, plan_document(preset, runs, overrides))
    counts = execute(runs, out, args.jobs, extend=args.extend,
                     preset_document=plan_document(preset, runs, overrides),
                     runs_per_gpu=args.runs_per_gpu)
    print("runs: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v), flush=True)
    if counts["interrupted"]:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    if not args.no_report:
        print(f"report: {write_report(out)}")
    return 1 if counts["failed"] else 0

"""The run directory, the unit of truth: config.yaml, metrics.jsonl, summary.json, checkpoint.pt.

Every table and figure is read back from these files; nothing is typed in.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
from pathlib import Path

import torch
import yaml

from batchscale.config import TrainConfig, load_yaml
from batchscale.engine.lock import LOCK_NAME
from batchscale.errors import UserError
from batchscale.files import atomic_write

CONFIG, METRICS, SUMMARY = "config.yaml", "metrics.jsonl", "summary.json"
STUDY_PLAN = "study.yaml"  # a study folder's expanded plan, beside its run directories
FINAL_STATUSES = ("completed", "diverged")


def check(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start a run over an existing one (without --overwrite), to overwrite a folder
    that is not a run directory, or to resume nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a run directory")
    if resume and not (out / CONFIG).exists():
        raise UserError(f"cannot resume: {out} holds no run (no {CONFIG})")
    if resume or not out.exists() or not contents(out):
        return
    if not overwrite:
        raise UserError(f"run directory {out} exists; pass --resume to continue it or "
                        f"--overwrite to replace it")
    foreign = foreign_entries(out)
    if foreign:
        raise UserError(f"--overwrite refused: {out} is not a run directory (it holds "
                        f"{foreign[0]}); only a run directory is deleted")


# What a run and its analyses write into a run directory; --overwrite deletes nothing else.
RUN_FILES = (CONFIG, METRICS, SUMMARY, "checkpoint.pt", "landscape.json", "hessian.json")
RUN_FILE_PATTERNS = ("*.tmp", "*.log", "landscape*.png", "hessian*.png", "interpolation.json",
                     "interpolation.png", "landscape_curves.json")
RUN_FOLDERS = ("tb",)


def contents(out: Path) -> list[Path]:
    """The entries of a run directory, less its lock file."""
    return [p for p in Path(out).iterdir() if p.name != LOCK_NAME]


def foreign_entries(out: Path) -> list[str]:
    """Entries that make `out` not recognisably a run directory (it needs its config.yaml)."""
    out = Path(out)
    if not (out / CONFIG).is_file():
        return [f"no {CONFIG}"] + [p.name for p in contents(out)]
    foreign = []
    for path in sorted(contents(out)):
        if path.is_dir() and not path.is_symlink():
            known = path.name in RUN_FOLDERS
        else:
            known = path.is_file() and (path.name in RUN_FILES or any(
                path.match(pattern) for pattern in RUN_FILE_PATTERNS))
        if not known:
            foreign.append(path.name + ("/" if path.is_dir() else ""))
    return foreign


def create(out: Path, overwrite: bool) -> Path:
    """An empty directory for a new run (an existing run directory's files are removed only
    with overwrite, and only if it is recognisably a run directory; its lock file stays)."""
    out = Path(out)
    check(out, False, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    for path in contents(out):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return out


# Schedules whose lr at every step depends on the total length: a longer run is another recipe.
LENGTH_SHAPED_SCHEDULES = ("cosine", "poly")


def check_extension(out: Path, saved: TrainConfig, epochs: int) -> None:
    """Refuse to extend a run to `epochs` where that is not the same recipe trained longer: a
    shorter run, or a cosine/poly schedule (the lr of steps already taken would change)."""
    if epochs < saved.epochs:
        raise UserError(f"--extend-epochs only lengthens a run: {out} is planned for "
                        f"{saved.epochs} epochs, more than {epochs}")
    if saved.schedule in LENGTH_SHAPED_SCHEDULES:
        raise UserError(f"{out} uses the {saved.schedule} schedule, whose lr at every step "
                        f"depends on the total length: {epochs} epochs is a new run, not an "
                        f"extension (train it into another directory)")


def extend_epochs(out: Path, cfg: TrainConfig, allowed: bool) -> None:
    """Resuming with a different `epochs`: refused unless `allowed` (--extend-epochs) and
    check_extension agrees; then config.yaml is updated to the new length."""
    path = Path(out) / CONFIG
    if not path.exists():
        return  # nothing to resume: rundir.check says so
    saved = load_yaml(path)
    if saved.epochs == cfg.epochs:
        return
    if not allowed:
        raise UserError(f"{out} was planned for {saved.epochs} epochs, not {cfg.epochs}: a "
                        f"different length is a different recipe; pass --extend-epochs to train "
                        f"it on to {cfg.epochs} epochs")
    check_extension(out, saved, cfg.epochs)
    saved.epochs = cfg.epochs
    text = yaml.safe_dump(saved.to_dict(), sort_keys=False)
    atomic_write(path, lambda handle: handle.write(text.encode()))


def write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode()))


def read_json(path: Path) -> dict:
    """A JSON object from `path`; a file that is not one is a UserError naming it."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {err}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise UserError(f"cannot read {path}: not a JSON object")
    return data


def read_metrics(run_dir: Path) -> list[dict]:
    """The metrics rows of a run. A last line cut short (no newline: the process was killed while
    appending it) is dropped; any other line that is not a JSON object is a UserError."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}".splitlines()[0]) from None
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        elif number < len(lines):  # a complete line (newline-terminated) that is not a row
            raise UserError(f"{path} line {number} is not a JSON object of metrics")
    return rows


def append_metrics(run_dir: Path, row: dict) -> None:
    with open(Path(run_dir) / METRICS, "a") as handle:
        handle.write(json.dumps(row) + "\n")


def truncate_metrics(run_dir: Path, epochs: int) -> None:
    """Keep the first `epochs` rows: rows written after the last checkpoint are redone."""
    rows = read_metrics(run_dir)[:epochs]
    text = "".join(json.dumps(row) + "\n" for row in rows)
    atomic_write(Path(run_dir) / METRICS, lambda handle: handle.write(text.encode()))


def git_commit() -> str | None:
    """The commit of the source tree this package runs from (with '+dirty'), if it is a clone."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], text=True,
                                capture_output=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain",
                                "--untracked-files=no"], text=True, capture_output=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def environment(device: torch.device, seed: int, world_size: int = 1) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device.type,
        "device_name": name or platform.machine(),
        "threads": torch.get_num_threads(),
        "world_size": world_size,
        "seed": seed,
        "git_commit": git_commit(),
        "hostname": platform.node(),
    }

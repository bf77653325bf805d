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

from batchscale.engine.checkpoint import atomic_write
from batchscale.errors import UserError

CONFIG, METRICS, SUMMARY = "config.yaml", "metrics.jsonl", "summary.json"
STUDY_PLAN = "study.yaml"  # a study folder's expanded plan, beside its run directories
FINAL_STATUSES = ("completed", "diverged")


def check(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start a run over an existing one (without --overwrite) or to resume nothing."""
    out = Path(out)
    if resume and not (out / CONFIG).exists():
        raise UserError(f"cannot resume: {out} holds no run (no {CONFIG})")
    if not resume and not overwrite and out.exists() and any(out.iterdir()):
        raise UserError(f"run directory {out} exists; pass --resume to continue it or "
                        f"--overwrite to replace it")


def create(out: Path, overwrite: bool) -> Path:
    """An empty directory for a new run (an existing one is removed only with overwrite)."""
    out = Path(out)
    check(out, False, overwrite)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode()))


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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

"""Studies: a preset's grid (recipes × batch sizes × seeds) expanded into runs of the engine.

    batchscale study --list                       # the presets shipped in batchscale/presets/
    batchscale study table3 --dry-run             # each run's peak lr, warmup, BN group G
    batchscale study demo                         # run the sweep into runs/demo, then report
    batchscale study mini --jobs 2 --seeds 3 --set width=16

A run lives in `<out>/<recipe>/b<B>/seed<S>`. Runs that are already `completed` or `diverged` are
skipped and unfinished ones resumed, so rerunning the same command continues a sweep. Runs whose
settings are identical (a recipe at its base batch size, where scaling, warmup and per-worker BN
change nothing) are trained once and shown in every recipe that has them. Execution is in
`batchscale.study.sweep`.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from batchscale.config import HOW_FIELDS, TrainConfig, from_dict, parse_value
from batchscale.engine import rundir
from batchscale.errors import UserError, reading

PRESET_DIR = Path(__file__).parent / "presets"
PLAN_FILE = rundir.STUDY_PLAN  # the expanded plan, written at the top of a sweep's directory
PRESET_KEYS = {"description", "extends", "config", "recipes", "use_recipes", "batch_sizes",
               "seeds", "published_batch_factor", "notes", "ordering", "compare_with"}
KNOWN_TRAIN_IMAGES = {"sample": 5000, "cifar10": 50000}


# ---------------------------------------------------------------------- presets
def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if not p.stem.startswith("_"))


PRESET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
PRESET_SUFFIXES = (".yaml", ".yml")


def preset_path(name: str) -> Path:
    """The file of a preset: a name (letters, digits, `_.+-`) is presets/NAME.yaml; a path to a
    YAML file (ending .yaml or .yml) is that file. Anything else, a name with `../` included, is
    refused: a name never reaches outside presets/."""
    if name.endswith(PRESET_SUFFIXES):
        path = Path(name).expanduser()
        if not path.is_file():
            raise UserError(f"preset file {name} does not exist")
        return path
    if not PRESET_NAME.fullmatch(name):
        raise UserError(f"'{name}' is not a preset name (letters, digits, _.+-; see --list); a "
                        f"preset file is given by its path ending in .yaml")
    path = PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        raise UserError(f"unknown preset '{name}'; known: {', '.join(preset_names())}")
    return path


def _read_preset(name: str) -> dict:
    path = preset_path(name)
    with reading(path, "preset"):
        data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise UserError(f"preset {path}: not a mapping of keys")
    unknown = set(data) - PRESET_KEYS
    if unknown:
        raise UserError(f"preset {name}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    _check_preset(path, data)
    return data


def _check_preset(path: Path, data: dict) -> None:
    """The types of a preset's keys (values of config fields are checked by the config)."""
    def bad(key: str, what: str):
        return UserError(f"preset {path}: {key} must be {what}, got {data_at(key)!r}"[:300])

    def data_at(key: str):
        value = data
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    def int_list(value) -> bool:
        return isinstance(value, list) and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)

    for key, kind in (("description", str), ("notes", str), ("extends", str)):
        if key in data and not isinstance(data[key], kind):
            raise bad(key, "text")
    for key in ("config", "recipes"):
        if key in data and not isinstance(data[key], dict):
            raise bad(key, "a mapping")
    if "batch_sizes" in data and not int_list(data["batch_sizes"]):
        raise bad("batch_sizes", "a list of positive integers")
    seeds = data.get("seeds", 1)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise bad("seeds", "a positive integer")
    factor = data.get("published_batch_factor", 1)
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
        raise bad("published_batch_factor", "a positive number")
    for key in ("use_recipes", "ordering", "compare_with"):
        if key in data and not (isinstance(data[key], list)
                                and all(isinstance(v, str) for v in data[key])):
            raise bad(key, "a list of names")
    for name, recipe in data.get("recipes", {}).items():
        if not isinstance(recipe, dict):
            raise bad(f"recipes.{name}", "a mapping")
        if not isinstance(recipe.get("config", {}), dict):
            raise bad(f"recipes.{name}.config", "a mapping")
        if "batch_sizes" in recipe and not int_list(recipe["batch_sizes"]):
            raise bad(f"recipes.{name}.batch_sizes", "a list of positive integers")


def _merge_recipes(parent: dict, child: dict) -> dict:
    merged = copy.deepcopy(parent)
    for name, recipe in child.items():
        old = merged.get(name, {})
        merged[name] = {**old, **recipe,
                        "config": {**old.get("config", {}), **recipe.get("config", {})}}
    return merged


def load_preset(name: str, _seen: tuple = ()) -> dict:
    """A preset with its `extends` chain resolved: config and recipes merged, the rest replaced.
    `extends` names a preset in presets/ (never a path)."""
    if name in _seen:
        raise UserError(f"preset {_seen[0]}: extends itself ({' -> '.join((*_seen, name))})")
    data = _read_preset(name)
    if data.get("extends", "").endswith(PRESET_SUFFIXES):
        raise UserError(f"preset {name}: extends names a preset, not a file "
                        f"({data['extends']!r})")
    parent = load_preset(data["extends"], (*_seen, name)) if data.get("extends") else {}
    merged = {**parent, **data}
    merged["config"] = {**parent.get("config", {}), **data.get("config", {})}
    merged["recipes"] = _merge_recipes(parent.get("recipes", {}), data.get("recipes", {}))
    merged["name"] = preset_path(name).stem
    for key in ("use_recipes", "batch_sizes"):
        if key not in merged and not _seen:
            raise UserError(f"preset {name} has no {key} (nor does what it extends)")
    merged.pop("extends", None)
    return merged


# ---------------------------------------------------------------------- the grid
@dataclass
class Run:
    recipe: str
    batch_size: int
    seed: int
    cfg: TrainConfig
    directory: str  # relative to the sweep's directory; shared by equivalent runs

    @property
    def name(self) -> str:
        return f"{self.recipe}/b{self.batch_size}/seed{self.seed}"


def parse_overrides(pairs: list[str]) -> dict:
    """`--set FIELD=VALUE` pairs, each checked against the config's fields and types."""
    overrides = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UserError(f"--set expects FIELD=VALUE, got '{pair}'")
        key, value = pair.split("=", 1)
        name = key.strip().replace("-", "_")
        overrides[name] = parse_value(name, value.strip())
    return overrides


def equivalence_key(cfg: TrainConfig) -> tuple:
    """Settings that decide the training: fields that change nothing are normalized away."""
    values = cfg.to_dict()
    for name in HOW_FIELDS:
        values.pop(name)
    if cfg.peak_lr == cfg.lr:  # no scaling at this B: warmup ramps from lr to lr
        values.update(scale_rule="none", warmup_epochs=0.0, base_batch_size=0)
    if cfg.group_size >= cfg.batch_size:  # one group is the whole batch
        values.update(bn_group=0, bn_impl="ghost")
    return tuple(sorted(values.items()))


def expand(preset: dict, seeds: int | None = None, overrides: dict | None = None,
           jobs: int = 1) -> list[Run]:
    """Every run of the grid, recipes outermost, in the preset's order."""
    count = seeds if seeds is not None else preset.get("seeds", 1)
    if count < 1:
        raise UserError(f"--seeds must be at least 1, got {count}")
    recipes = preset["recipes"]
    missing = [r for r in preset["use_recipes"] if r not in recipes]
    if missing:
        raise UserError(f"preset {preset['name']}: unknown recipe(s) {', '.join(missing)}")
    runs, owners = [], {}
    for recipe in preset["use_recipes"]:
        for batch_size in recipes[recipe].get("batch_sizes", preset["batch_sizes"]):
            for seed in range(count):
                values = {**preset["config"], **recipes[recipe].get("config", {}),
                          "batch_size": batch_size, "seed": seed, **(overrides or {})}
                if not values.get("threads"):
                    values["threads"] = default_threads(jobs)
                run = Run(recipe, batch_size, seed, from_dict(values), "")
                run.directory = owners.setdefault(equivalence_key(run.cfg), run.name)
                runs.append(run)
    return runs


def cores() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_threads(jobs: int) -> int:
    """The cores this process may use, shared among `jobs` runs at once."""
    return max(1, cores() // max(jobs, 1))


def unique_runs(runs: list[Run]) -> list[Run]:
    """One run per directory: the runs that are actually trained."""
    return [run for run in runs if run.directory == run.name]


# ---------------------------------------------------------------------- effective settings
def train_images(cfg: TrainConfig) -> int | None:
    """Training images a config sees, without loading the data (None when unknown)."""
    total = KNOWN_TRAIN_IMAGES.get(cfg.dataset)
    path = Path(cfg.dataset).expanduser()
    if total is None and path.suffix == ".zip" and path.exists():
        with zipfile.ZipFile(path) as archive:
            total = sum(1 for n in archive.namelist()
                        if n.startswith("train/") and n.count("/") == 2 and not n.endswith("/"))
    elif total is None and (path.name.endswith(".tar.gz") or (path / "data_batch_1").exists()):
        total = 50000
    if total is not None and cfg.train_subset:
        total = min(total, cfg.train_subset)
    return total


def settings(run: Run) -> dict:
    """The effective settings of a run, as `--dry-run` shows them."""
    cfg = run.cfg
    images = train_images(cfg)
    steps = images // cfg.batch_size if images else None
    return {
        "run": run.name, "B": cfg.batch_size, "peak_lr": cfg.peak_lr,
        "warmup_epochs": cfg.warmup_epochs,
        "warmup_steps": round(cfg.warmup_epochs * steps) if steps else None,
        "G": cfg.group_size, "steps_per_epoch": steps,
        "total_steps": steps * cfg.epochs if steps else None,
        "B_fraction": cfg.batch_size / images if images else None,
        "shared_with": None if run.directory == run.name else run.directory,
    }


def _cell(value) -> str:
    if value is None:
        return "?"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def dry_run_table(runs: list[Run], out: Path) -> str:
    """A fixed-width table of every run, its settings and its state in `out`."""
    header = ["run", "B", "peak lr", "warmup ep", "warmup steps", "G", "steps/ep",
              "steps", "B/N", "state"]
    lines = []
    for run in runs:
        s = settings(run)
        state = (f"= {s['shared_with']}" if s["shared_with"]
                 else run_status(out / run.directory))
        lines.append([s["run"], s["B"], s["peak_lr"], s["warmup_epochs"], s["warmup_steps"],
                      s["G"], s["steps_per_epoch"], s["total_steps"], s["B_fraction"], state])
    cells = [header] + [[_cell(v) for v in line] for line in lines]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


def run_status(directory: Path) -> str:
    """new | completed | diverged | resume (an interrupted, failed or unfinished run)."""
    if not (directory / rundir.CONFIG).exists():
        return "new"
    summary = directory / rundir.SUMMARY
    status = rundir.read_json(summary).get("status") if summary.exists() else None
    return status if status in rundir.FINAL_STATUSES else "resume"


def plan_document(preset: dict, runs: list[Run], overrides: dict | None = None) -> dict:
    """What the report needs to know about the sweep, written to `<out>/study.yaml`. `--set`
    overrides are recorded, and the description says that they changed the preset."""
    description = preset.get("description", "")
    if overrides:
        changed = ", ".join(f"{k}={v}" for k, v in overrides.items())
        description = (f"{description.rstrip()} — changed for this study with --set {changed} "
                       f"(the preset's description above is of the preset as shipped).")
    return {
        "preset": preset["name"],
        "description": description,
        "overrides": dict(overrides or {}),
        "published_batch_factor": preset.get("published_batch_factor", 1),
        "notes": preset.get("notes", ""),
        "ordering": list(preset.get("ordering", [])),
        "compare_with": list(preset.get("compare_with", [])),
        "recipes": {name: {"published": preset["recipes"][name].get("published")}
                    for name in preset["use_recipes"]},
        "runs": [{"recipe": r.recipe, "batch_size": r.batch_size, "seed": r.seed,
                  "directory": r.directory} for r in runs],
    }


# ---------------------------------------------------------------------- command line
def add_study_parser(commands) -> None:
    """The `study` subcommand's options (run by batchscale.study.sweep.study_command)."""
    study = commands.add_parser(
        "study", help="run a preset's sweep of runs, then its report",
        description="Run a preset's sweep of runs, then its report.",
        epilog="presets:\n" + list_presets() + "\n\nexample: batchscale study demo --jobs 2 "
               "--set width=16",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    study.add_argument("preset", nargs="?", help="a preset name (see --list)")
    study.add_argument("--list", action="store_true", help="list the presets and exit")
    study.add_argument("--out", help="sweep directory (default: runs/PRESET)")
    study.add_argument("--seeds", type=int, help="seeds per setting (default: the preset's)")
    study.add_argument("--jobs", type=int, default=1,
                       help="runs at once; each gets cores/jobs threads (default: 1)")
    study.add_argument("--runs-per-gpu", type=int, default=1, metavar="K",
                       help="with GPUs: each run gets its own (CUDA_VISIBLE_DEVICES, round "
                            "robin), at most K runs on one GPU at a time (default: 1)")
    study.add_argument("--dry-run", action="store_true",
                       help="list the runs and their effective settings; run nothing")
    study.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="override a config field for every run (repeatable)")
    study.add_argument("--no-report", action="store_true", help="skip the report at the end")
    # ---- where the runs execute (batchscale.study.launchers) ----
    study.add_argument("--launcher", choices=("local", "slurm"), default="local",
                       help="local: a process pool on this machine (default); slurm: one "
                            "SLURM job per run through submitit (pip install 'batchscale[slurm]')")
    study.add_argument("--status", action="store_true",
                       help="show each run's state (and SLURM job) in --out; run nothing")
    study.add_argument("--slurm-partition", help="SLURM partition")
    study.add_argument("--slurm-time", type=int, default=1440, metavar="MIN",
                       help="time limit of each job in minutes; a run that needs longer is "
                            "checkpointed and requeued (default: 1440)")
    study.add_argument("--gpus-per-run", type=int, metavar="W",
                       help="GPUs of each job; 0 for a CPU partition; W > 1 runs torchrun with "
                            "W workers (default: 0 for device=cpu runs or a partition without "
                            "GPUs, else 1)")
    study.add_argument("--slurm-array-parallelism", type=int, metavar="N",
                       help="the study's jobs running at once, across reruns (default: the "
                            "study's earlier value, else 256)")
    study.add_argument("--slurm-opt", action="append", default=[], metavar="KEY=VALUE",
                       help="another sbatch option, e.g. account=proj or mem=64G (repeatable)")
    study.add_argument("--wait", action="store_true",
                       help="with --launcher slurm: wait for the jobs, then write the report")
    study.add_argument("--extend", action="store_true",
                       help="train finished runs on to a larger --set epochs=N (step and "
                            "constant schedules only); without it a changed length is refused")


def list_presets() -> str:
    return "\n".join(f"{name:<12} {load_preset(name).get('description', '')}"
                     for name in preset_names())

"""The measurements of scripts/gpu_check.sh: throughput per batch size and mode, per-worker BN
against whole-batch BN, runs packed on one GPU, and Table III rows at full scale.

    PYTHONPATH=. python scripts/gpu_bench.py --dataset gpu_data/cifar10 --json out.json \
        --suite "412 passed, 9 skipped" --budget-s 300
    PYTHONPATH=. python scripts/gpu_bench.py --cpu-smoke --json /tmp/smoke.json

Every img/s is the engine's own (metrics.jsonl, the last epoch: steady, compile time excluded).
Prints one table; writes every number, the commands' configs and the card to --json.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from batchscale.config import config_flags, from_dict
from batchscale.engine import rundir
from batchscale.engine.checkpoint import atomic_write
from batchscale.engine.train import train
from batchscale.results.published import lookup
from batchscale.study.expand import expand, load_preset


def settings(args) -> dict:
    """The fields every measured run shares: full scale on a GPU, tiny in smoke mode."""
    if args.cpu_smoke:
        return dict(dataset="sample", width=4, train_subset=512, device="cpu", amp="none",
                    threads=2, eval_batch_size=500, seed=0)
    return dict(dataset=args.dataset, width=64, device="cuda", amp="bf16", seed=0)


def last_images_per_sec(out: Path) -> float | None:
    rows = rundir.read_metrics(out)
    return rows[-1]["images_per_sec"] if rows else None


SKIPPED = "skipped: time budget spent"


def measure(base: dict, folder: Path, name: str, **fields) -> float | str | None:
    """img/s of the last epoch of one short run (SKIPPED once the budget is spent)."""
    if time.monotonic() > DEADLINE[0]:
        return SKIPPED
    cfg = from_dict({**base, "base_batch_size": 32, "lr": 0.025, "scale_rule": "linear",
                     "schedule": "constant", **fields})
    train(cfg, folder / name, quiet=True)
    return last_images_per_sec(folder / name)


# the run's whole budget ends here (time.monotonic()); set by main
DEADLINE = [float("inf")]


def throughput(args, base: dict, folder: Path,
               modes=(("eager", {"cuda_graphs": "off"}), ("graphs", {"cuda_graphs": "on"}))):
    """img/s at each batch size, eager and from CUDA graphs."""
    result = {}
    modes = dict(modes)
    for batch in args.batch_sizes:
        for mode, fields in modes.items():
            if args.cpu_smoke and mode != "eager":
                result[f"B={batch} {mode}"] = "n/a on cpu"
                continue
            epochs = 1 if args.cpu_smoke else 3 if mode == "compile" else 2
            result[f"B={batch} {mode}"] = measure(base, folder, f"tp-{batch}-{mode}",
                                                  batch_size=batch, epochs=epochs,
                                                  train_subset=args.subset(batch), **fields)
    return result


def compiled(args, base: dict, folder: Path) -> dict:
    """img/s at each batch size with torch.compile (last: its compile time is the longest)."""
    return throughput(args, base, folder, (("compile", {"cuda_graphs": "off", "compile": True}),))


def batch_norm(args, base: dict, folder: Path) -> dict:
    """Per-worker BN (groups of `bn_group`) against whole-batch BN at the largest batch."""
    batch, group = args.bn_batch, args.bn_group
    epochs = 1 if args.cpu_smoke else 2
    whole = measure(base, folder, "bn-whole", batch_size=batch, epochs=epochs,
                    train_subset=args.subset(batch))
    grouped = measure(base, folder, "bn-group", batch_size=batch, bn_group=group, epochs=epochs,
                      train_subset=args.subset(batch))
    numbers = isinstance(whole, float) and isinstance(grouped, float)
    ratio = grouped / whole if numbers and whole else None
    return {f"B={batch} whole-batch BN": whole, f"B={batch} bn_group {group}": grouped,
            "per-worker / whole-batch": round(ratio, 3) if ratio else None}


def start_train(cfg, out: Path, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "batchscale", "train", "--out", str(out), "--quiet",
               *config_flags(cfg)]
    return subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def wait_or_stop(processes: list[subprocess.Popen], deadline: float) -> bool:
    """Wait until all end or the deadline; then SIGTERM (a checkpoint, then exit). True: all
    finished on their own."""
    while time.monotonic() < deadline and any(p.poll() is None for p in processes):
        time.sleep(1)
    finished = all(p.poll() is not None for p in processes)
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        process.wait()
    return finished


def packing(args, base: dict, folder: Path) -> dict:
    """Aggregate img/s of K runs at B = 32 on one GPU at once, K = 1, 2, 4."""
    result = {}
    for k in args.pack:
        if time.monotonic() + args.pack_timeout_s > DEADLINE[0]:
            result[f"K={k} aggregate img/s"] = SKIPPED
            continue
        cfg = from_dict({**base, "batch_size": 32, "base_batch_size": 32, "lr": 0.025,
                         "epochs": 1 if args.cpu_smoke else 2, "train_subset": args.subset(32),
                         "threads": max(1, args.cores // k)})
        outs = [folder / f"pack{k}-{i}" for i in range(k)]
        processes = [start_train(cfg, out, folder / f"pack{k}-{i}.log")
                     for i, out in enumerate(outs)]
        wait_or_stop(processes, time.monotonic() + args.pack_timeout_s)
        rates = [last_images_per_sec(out) for out in outs]
        result[f"K={k} aggregate img/s"] = (round(sum(rates), 1) if all(rates) else None)
    return result


def table3(args, base: dict, folder: Path) -> dict:
    """Table III rows (per-worker BN, G = 32) at 200 epochs with the ImageNet-stem model, all
    at once on the GPU until the budget ends; each beside the published row."""
    overrides = {**base, "model": "resnet18-imagenet", "epochs": args.table_epochs}
    if args.cpu_smoke:
        overrides.update(train_subset=256, warmup_epochs=1)
    runs = [r for r in expand(load_preset("table3"), seeds=1, overrides=overrides)
            if r.cfg.batch_size in args.table_batches]
    outs = [folder / f"table3-b{r.cfg.batch_size}" for r in runs]
    processes = [start_train(r.cfg, out, folder / f"{out.name}.log")
                 for r, out in zip(runs, outs, strict=True)]
    started = time.monotonic()
    wait_or_stop(processes, min(started + args.table_budget_s, DEADLINE[0]))
    result = {"wall_s": round(time.monotonic() - started, 1)}
    for run, out in zip(runs, outs, strict=True):
        rows = rundir.read_metrics(out)
        published = lookup("III", run.cfg.batch_size, run.cfg.lr, run.cfg.weight_decay)
        last = rows[-1] if rows else {}
        result[f"B={run.cfg.batch_size}"] = {
            "epochs": f"{len(rows)}/{run.cfg.epochs}",
            "test_acc": last.get("test_acc"), "train_acc": last.get("train_acc"),
            "published_test_acc": published.test_acc if published else None,
            "published_train_acc": published.train_acc if published else None,
            "config": run.cfg.to_dict()}
    return result


def card() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def print_table(report: dict) -> None:
    print(f"\n{'measurement':<44} value")
    for section in ("suite", "throughput", "batch_norm", "packing", "table3", "compiled"):
        values = report.get(section)
        if isinstance(values, str):
            print(f"{section:<44} {values}")
            continue
        for key, value in (values or {}).items():
            if isinstance(value, dict):
                value = ", ".join(f"{k} {v}" for k, v in value.items() if k != "config")
            print(f"{section + ': ' + key:<44} {value}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="sample", help="--dataset of the runs")
    parser.add_argument("--json", required=True, help="where the results go")
    parser.add_argument("--suite", default="not run", help="the test suite's result line")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny width, 1 epoch, on the CPU: checks the script end to end")
    parser.add_argument("--budget-s", type=float, default=330,
                        help="seconds for all measurements; what is left out is marked skipped")
    parser.add_argument("--table-budget-s", type=float, default=120,
                        help="seconds for the Table III rows (they stop with a checkpoint)")
    parser.add_argument("--cores", type=int, default=16)
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        args.batch_sizes, args.bn_batch, args.bn_group, args.pack = [64], 128, 32, [1, 2]
        args.table_batches, args.table_epochs = [256], 1
        args.subset = lambda batch: 256
        args.pack_timeout_s, args.cores = 120, 2
    else:
        args.batch_sizes, args.bn_batch, args.bn_group, args.pack = [32, 128, 512, 2048], 2048, \
            128, [1, 2, 4]
        args.table_batches, args.table_epochs = [512, 1024, 2048], 200
        # small batches are launch-bound: 10,000 images an epoch say their rate in seconds
        args.subset = lambda batch: 10_000 if batch <= 128 else 0
        args.pack_timeout_s = 60
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    base = settings(args)
    DEADLINE[0] = time.monotonic() + args.budget_s
    report = {"card": card(), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
              "mode": "cpu-smoke" if args.cpu_smoke else "gpu", "dataset": args.dataset,
              "suite": args.suite}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        folder = Path(tmp)
        for section in (throughput, batch_norm, packing, table3, compiled):
            started = time.monotonic()
            report[section.__name__] = section(args, base, folder)
            report[f"{section.__name__}_s"] = round(time.monotonic() - started, 1)
            atomic_write(Path(args.json), lambda h: h.write(json.dumps(report, indent=1).encode()))
    print_table(report)
    print(f"\nwritten: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

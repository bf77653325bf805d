"""Launch many tiny two-worker runs (`batchscale train --workers 2`, gloo) and count those that
fail: the check that a worker's exit never aborts (issue 24: rare SIGABRT, "terminate called
without an active exception", exit code -6).

    python scripts/worker_exits.py --launches 200 --json docs/results/bench/worker-exits.json
    python scripts/worker_exits.py --launches 50 --busy 1     # with a busy loop beside
    python scripts/worker_exits.py --launches 500 --max-seconds 3000  # as many as fit
    python scripts/worker_exits.py --lightning ddp_spawn --launches 100   # Lightning's workers

With `--lightning STRATEGY` each launch is instead examples/lightning_fit.py with two CPU devices
under that Lightning strategy (ddp_fork, the example's, or ddp_spawn: Lightning's own workers,
which batchscale's exit does not reach).

Each launch is `python -m batchscale train --workers 2` (the workers leave through
distributed.run_main), a 2-epoch local-SGD run of a width-4 model on 256 images (the shape of
tests/test_localsgd.py's real runs), with PYTHONFAULTHANDLER=1 so that an abort prints every
thread's Python stack. With 0 failures in n launches the failure rate per launch is below 3/n at
95% confidence (the rule of three: (1 - p)^n = 0.05 gives p = -ln(0.05)/n ~ 3/n)."""

from __future__ import annotations

import argparse
import io
import math
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from batchscale.bench import emit
from batchscale.engine.data import balanced_subset, load_dataset

ROOT = Path(__file__).resolve().parents[1]


def tiny_zip(path: Path, train: int = 256, test: int = 200) -> Path:
    """`train` and `test` images of the embedded sample as an image-folder zip (fast to read)."""
    from PIL import Image

    train_split, test_split, classes = load_dataset("sample")
    with zipfile.ZipFile(path, "w") as archive:
        for name, split, size in (("train", train_split, train), ("test", test_split, test)):
            part = balanced_subset(split, size, 0)
            for i, (image, label) in enumerate(zip(part.images, part.labels, strict=True)):
                buffer = io.BytesIO()
                Image.fromarray(image.numpy()).save(buffer, format="PNG")
                archive.writestr(f"{name}/{classes[int(label)]}/{i:04d}.png", buffer.getvalue())
    return path


def train_args(data: Path, out: Path, workers: int = 2, epochs: int = 2) -> list[str]:
    return [sys.executable, "-m", "batchscale", "train", "--out", str(out), "--quiet",
            "--dataset", str(data), "--width", "4", "--epochs", str(epochs), "--batch-size", "64",
            "--base-batch-size", "64", "--lr", "0.05", "--threads", "1", "--seed", "3",
            "--device", "cpu", "--workers", str(workers), "--local-steps", "3",
            "--local-start-epoch", "1", "--log-every", "1"]


def worker_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
            "PYTHONFAULTHANDLER": "1"}


def busy_loop() -> None:
    while True:
        pass


def upper_bound(failures: int, launches: int, confidence: float = 0.95) -> float:
    """The one-sided upper confidence bound on the failure rate (Clopper-Pearson)."""
    if failures >= launches:
        return 1.0
    if failures == 0:
        return 1 - (1 - confidence) ** (1 / launches)
    lo, hi = failures / launches, 1.0  # bisect P(X <= failures | p) = 1 - confidence
    for _ in range(60):
        p = (lo + hi) / 2
        tail = sum(math.comb(launches, k) * p**k * (1 - p) ** (launches - k)
                   for k in range(failures + 1))
        lo, hi = (p, hi) if tail > 1 - confidence else (lo, p)
    return hi


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--busy", type=int, default=0, help="busy-loop processes beside")
    parser.add_argument("--max-seconds", type=float, default=0,
                        help="stop launching after this long (0: no limit); the count so far")
    parser.add_argument("--lightning", metavar="STRATEGY",
                        help="launch examples/lightning_fit.py --devices 2 --strategy STRATEGY")
    parser.add_argument("--json", help="write the result here (bench.save_json)")
    args = parser.parse_args(argv)
    busy = [multiprocessing.Process(target=busy_loop, daemon=True) for _ in range(args.busy)]
    for process in busy:
        process.start()
    codes, failures, started = [], [], time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="worker-exits-") as folder:
            data = None if args.lightning else tiny_zip(Path(folder) / "tiny.zip")
            for k in range(args.launches):
                if args.max_seconds and time.monotonic() - started > args.max_seconds:
                    break
                out = Path(folder) / f"run{k}"
                command = (train_args(data, out, epochs=args.epochs) if not args.lightning else
                           [sys.executable, str(ROOT / "examples" / "lightning_fit.py"), str(out),
                            "--devices", "2", "--strategy", args.lightning])
                result = subprocess.run(command,
                                        env=worker_env(), cwd=folder, capture_output=True,
                                        text=True, timeout=600)
                codes.append(result.returncode)
                if result.returncode != 0:
                    failures.append({"launch": k, "exit_code": result.returncode,
                                     "stderr_tail": result.stderr[-6000:]})
                    print(f"launch {k}: exit code {result.returncode}\n{result.stderr[-6000:]}",
                          flush=True)
                elif (k + 1) % 10 == 0:
                    print(f"{k + 1} launches, {len(failures)} failed", flush=True)
    finally:
        for process in busy:
            process.kill()
    n = len(codes)
    emit({"launches": n, "workers_per_launch": 2, "failures": len(failures),
          "exit_codes": {str(c): codes.count(c) for c in sorted(set(codes))},
          "failure_rate_upper_95": round(upper_bound(len(failures), n), 4),
          "launch": (f"examples/lightning_fit.py --devices 2 --strategy {args.lightning}"
                     if args.lightning else "batchscale train --workers 2"),
          "busy_loops_beside": args.busy,
          "epochs_per_launch": 4 if args.lightning else args.epochs,
          "wall_s": round(time.monotonic() - started, 1), "failed": failures}, args.json)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

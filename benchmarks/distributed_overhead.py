"""Real workers' communication overhead: step time of 2 workers (gloo, 1 thread each, DDP) vs
1 worker (1 thread, no DDP) at the same per-worker batch, on CPU.

    python benchmarks/distributed_overhead.py [--width 16 --per-worker-batch 64 --steps 20]

Two processes are started. Step by step, (1) rank 0 takes a step of a single worker alone
(rank 1 waits at a barrier), (2) both take a single-worker step at the same time, without
communicating, (3) both take a DDP step of the global batch 2 x b. All three are timed in the
same moments, so machine noise hits them alike. `two_over_one`, the ratio of the median step
times of (3) and (1), is what a second worker costs per step (1.0 = free); `two_over_concurrent`,
(3) over (2), isolates the gradient all-reduce from the two processes' contention for the cores.
Writes the result as JSON (--json).
"""

import argparse
import json
import os
import platform
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from batchscale.bench import emit
from batchscale.config import from_dict
from batchscale.engine import distributed
from batchscale.engine.data import EpochLoader
from batchscale.engine.setup import build
from batchscale.engine.step import prepare_input, train_step


def timed_step(setup, images, labels) -> float:
    start = time.perf_counter()
    loss, _ = train_step(setup, prepare_input(setup, images), labels)
    loss.item()
    return time.perf_counter() - start


def worker(rank: int, args, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    b = args.per_worker_batch
    values = dict(width=args.width, device="cpu", threads=1, dataset=args.dataset)
    pair = build(from_dict({**values, "batch_size": 2 * b}), progress=False, world_size=2,
                 rank=rank)
    pair.train_model = distributed.wrap(pair.model, pair.device, sync_bn=False)
    loader = EpochLoader(pair.train, 2 * b, 0, 0, rank=rank, world_size=2)
    alone = build(from_dict({**values, "batch_size": b}), progress=False)
    alone_loader = EpochLoader(alone.train, b, 0, 0)
    times = {"one_worker": [], "concurrent": [], "two_workers": []}
    for step in range(args.steps + 2):  # two warm-up steps
        batch = alone_loader.batch(step % len(alone_loader))
        if rank == 0:
            times["one_worker"].append(timed_step(alone, *batch))
        dist.barrier()
        times["concurrent"].append(timed_step(alone, *batch))
        dist.barrier()
        times["two_workers"].append(timed_step(pair, *loader.batch(step % len(loader))))
        dist.barrier()
    times = {name: samples[2:] for name, samples in times.items()}
    if rank == 0:
        Path(out).write_text(json.dumps(times))
    dist.destroy_process_group()
    os._exit(0)  # not a plain exit: gloo's exit race (docs/distributed.md, Leaving)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--per-worker-batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each")
    parser.add_argument("--dataset", default="sample")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "times.json")
        mp.spawn(worker, args=(args, free_port(), out), nprocs=2)
        times = json.loads(Path(out).read_text())
    one, concurrent, two = (statistics.median(times[k])
                            for k in ("one_worker", "concurrent", "two_workers"))
    result = {
        "one_worker_step_s": round(one, 4),
        "concurrent_step_s": round(concurrent, 4),
        "two_workers_step_s": round(two, 4),
        "two_over_one": round(two / one, 3),
        "two_over_concurrent": round(two / concurrent, 3),
        "per_worker_batch": args.per_worker_batch, "width": args.width, "steps": args.steps,
        "threads_per_worker": 1, "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2), "torch": torch.__version__,
        "machine": platform.machine(),
    }
    emit(result, args.json)


if __name__ == "__main__":
    main()

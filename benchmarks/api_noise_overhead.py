"""Cost of `batchscale.NoiseScale` in a user's loop: step time with and without it.

    python benchmarks/api_noise_overhead.py --mode ddp   [--workers 2 --batch 64 --steps 40]
    python benchmarks/api_noise_overhead.py --mode micro [--micro 4 --batch 64 --steps 40]

ddp: two gloo workers on the CPU (1 thread each) train a small vision transformer under DDP;
the small batch is each worker's gradient before the all-reduce (no extra pass), the cost is the
hooks' squared norms, the big gradient's norm and one scalar all-reduce per step. micro: one
process accumulates --micro micro-batches per step (the user's own gradient accumulation); the
cost is the hooks and the big gradient's norm. Steps alternate between NoiseScale on (hooks
registered, `step()` called) and off (no hooks), the switch outside the timed region, so that
machine noise hits both alike. Prints the median step time (wall clock, and the process's CPU
time, which a loaded machine distorts less) of each and their ratios; --json PATH writes them
(bench.save_json: command, commit, machine, load).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from batchscale import NoiseScale
from batchscale.bench import save_json
from batchscale.engine.noise import BackwardNorms


class ViT(nn.Module):
    """A small vision transformer on 32x32 images: 4x4 patches (64 tokens), `depth` pre-norm
    blocks of width `dim`."""

    def __init__(self, dim: int = 64, depth: int = 2, heads: int = 4, classes: int = 10):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, 4)
        self.pos = nn.Parameter(torch.zeros(64, dim))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True,
                                       norm_first=True) for _ in range(depth))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x.mean(1)))


def timed_steps(model, train_model, batches, micro: int, steps: int) -> dict:
    """Median step times with NoiseScale off and on, alternating step by step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    noise = NoiseScale(train_model, batch_size=len(batches[0][0]) // micro)
    noise.hooks.remove()
    times = {"off": [], "on": []}
    cpu = {"off": [], "on": []}
    for step in range(2 * steps + 4):
        setting = "on" if step % 2 else "off"
        if setting == "on":
            noise.hooks = BackwardNorms(noise.parameters)
        x, y = batches[step % len(batches)]
        started, started_cpu = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        for i, (xs, ys) in enumerate(zip(x.chunk(micro), y.chunk(micro), strict=True)):
            last = i == micro - 1
            sync = (train_model.no_sync() if not last and
                    isinstance(train_model, DistributedDataParallel) else contextlib.nullcontext())
            with sync:
                (F.cross_entropy(train_model(xs), ys) / micro).backward()
        if setting == "on":
            noise.step()
        optimizer.step()
        if step >= 4:  # the first steps warm up
            times[setting].append(time.perf_counter() - started)
            cpu[setting].append(time.process_time() - started_cpu)
        if setting == "on":
            noise.hooks.remove()
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    estimate = noise.estimate()
    cpu_off, cpu_on = statistics.median(cpu["off"]), statistics.median(cpu["on"])
    return {"step_s_off": off, "step_s_on": on, "ratio": on / off,
            "cpu_s_off": cpu_off, "cpu_s_on": cpu_on, "cpu_ratio": cpu_on / cpu_off,
            "small_batch": estimate.small_batch, "big_batch": estimate.big_batch,
            "b_simple": estimate.b_simple}


def data(batch: int, count: int = 8, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, 32, 32, generator=generator),
             torch.randint(0, 10, (batch,), generator=generator)) for _ in range(count)]


def worker(rank: int, workers: int, init: str, args, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=workers)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ViT(args.dim, args.depth)
    result = timed_steps(model, DistributedDataParallel(model), data(args.batch, seed=rank),
                         1, args.steps)
    if rank == 0:
        torch.save(result, out)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("ddp", "micro"), required=True)
    parser.add_argument("--workers", type=int, default=2, help="ddp: gloo workers")
    parser.add_argument("--micro", type=int, default=4, help="micro: micro-batches per step")
    parser.add_argument("--batch", type=int, default=64,
                        help="samples per step and worker (ddp) or per step (micro)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per setting")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.mode == "ddp":
        with tempfile.TemporaryDirectory() as folder:
            out = os.path.join(folder, "result.pt")
            mp.spawn(worker, args=(args.workers, os.path.join(folder, "init"), args, out),
                     nprocs=args.workers, join=True)
            result = torch.load(out)
        setting = f"{args.workers} gloo workers x {args.batch} samples, 1 thread each"
    else:
        torch.set_num_threads(1)
        torch.manual_seed(0)
        model = ViT(args.dim, args.depth)
        result = timed_steps(model, model, data(args.batch), args.micro, args.steps)
        setting = f"one process, {args.micro} micro-batches of {args.batch // args.micro}, 1 thread"
    result = {"mode": args.mode, "setting": setting, "model": f"ViT dim {args.dim} depth "
              f"{args.depth}", "params": sum(p.numel() for p in ViT(args.dim, args.depth)
                                             .parameters()),
              **result, "overhead": result["ratio"] - 1}
    print(f"{setting}: step {result['step_s_off'] * 1000:.1f} ms off, "
          f"{result['step_s_on'] * 1000:.1f} ms on, ratio {result['ratio']:.3f} "
          f"(overhead {result['overhead']:+.1%}); process CPU time ratio "
          f"{result['cpu_ratio']:.3f}; B_simple "
          f"{'undefined' if result['b_simple'] is None else format(result['b_simple'], '.3g')}")
    assert math.isfinite(result["ratio"])
    save_json(result, args.json)


if __name__ == "__main__":
    main()

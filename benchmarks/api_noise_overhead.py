"""Cost of `batchscale.NoiseScale` in a user's loop: step time with and without it.

    python benchmarks/api_noise_overhead.py --mode ddp   [--workers 2 --batch 64 --steps 40]
    python benchmarks/api_noise_overhead.py --mode micro [--micro 4 --batch 64 --steps 40]

ddp: two gloo workers on the CPU (1 thread each) train a small vision transformer under DDP;
the small batch is each worker's gradient before the all-reduce (no extra pass), the cost is the
hooks' squared norms, the big gradient's norm and one scalar all-reduce per step. micro: one
process accumulates --micro micro-batches per step (the user's own gradient accumulation); the
cost is the hooks and the big gradient's norm. Steps alternate between NoiseScale on (hooks
registered, `step()` called) and off (no hooks), the switch outside the timed region, so that
machine noise hits both alike: each on step is paired with its neighbouring off step (which one
comes first alternates between repetitions). --repeats R runs R such runs (fresh workers each).
Prints the median of the paired ratios on/off over all pairs with a 95% distribution-free
interval (order statistics of the median), for the wall clock and for the process's CPU time
(which a loaded machine distorts less), and each repetition's median; --json PATH writes them
(bench.save_json: command, commit, machine, load) with the load at the start.
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


def timed_steps(model, train_model, batches, micro: int, steps: int, on_first: bool = False
                ) -> dict:
    """Step times with NoiseScale off and on, alternating step by step (`on_first`: each pair
    starts with the on step)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    noise = NoiseScale(train_model, batch_size=len(batches[0][0]) // micro)
    noise.hooks.remove()
    times = {"off": [], "on": []}
    cpu = {"off": [], "on": []}
    for step in range(2 * steps + 4):
        setting = "on" if (step % 2 == 0) == on_first else "off"
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
    estimate = noise.estimate()
    return {"wall_off": times["off"], "wall_on": times["on"], "cpu_off": cpu["off"],
            "cpu_on": cpu["on"], "small_batch": estimate.small_batch,
            "big_batch": estimate.big_batch, "b_simple": estimate.b_simple}


def median_interval(values: list[float], z: float = 1.96) -> tuple[float, float, float]:
    """The median and a distribution-free 95% interval for it: the order statistics at
    n/2 ∓ z √n / 2 (the sign test's normal approximation)."""
    ordered = sorted(values)
    n = len(ordered)
    half = z * math.sqrt(n) / 2
    low, high = max(0, math.floor(n / 2 - half)), min(n - 1, math.ceil(n / 2 + half) - 1)
    return statistics.median(ordered), ordered[low], ordered[high]


def summarize(runs: list[dict]) -> dict:
    """Paired ratios on/off over every repetition, for the wall clock and the CPU time."""
    out = {"repeats": len(runs), "pairs": sum(len(r["wall_on"]) for r in runs)}
    for clock in ("wall", "cpu"):
        ratios = [on / off for r in runs
                  for on, off in zip(r[f"{clock}_on"], r[f"{clock}_off"], strict=True)]
        median, low, high = median_interval(ratios)
        out[clock] = {"ratio_median": median, "ratio_ci95": [low, high],
                      "overhead": median - 1,
                      "step_s_off_median": statistics.median(
                          [t for r in runs for t in r[f"{clock}_off"]]),
                      "step_s_on_median": statistics.median(
                          [t for r in runs for t in r[f"{clock}_on"]]),
                      "per_repeat_ratio": [
                          statistics.median([on / off for on, off in zip(
                              r[f"{clock}_on"], r[f"{clock}_off"], strict=True)])
                          for r in runs]}
    return out


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
                         1, args.steps, on_first=args.on_first)
    if rank == 0:
        torch.save(result, out)
    dist.destroy_process_group()
    os._exit(0)  # not a plain exit: gloo's exit race (docs/distributed.md, Leaving)


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
    parser.add_argument("--repeats", type=int, default=1,
                        help="independent runs (fresh workers), pairs' order alternating")
    parser.add_argument("--note", default="", help="a word on the machine (into the JSON)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    runs = []
    for repeat in range(args.repeats):
        args.on_first = repeat % 2 == 1
        if args.mode == "ddp":
            with tempfile.TemporaryDirectory() as folder:
                out = os.path.join(folder, "result.pt")
                mp.spawn(worker, args=(args.workers, os.path.join(folder, "init"), args, out),
                         nprocs=args.workers, join=True)
                runs.append(torch.load(out))
            setting = f"{args.workers} gloo workers x {args.batch} samples, 1 thread each"
        else:
            torch.set_num_threads(1)
            torch.manual_seed(0)
            model = ViT(args.dim, args.depth)
            runs.append(timed_steps(model, model, data(args.batch), args.micro, args.steps,
                                    on_first=args.on_first))
            setting = (f"one process, {args.micro} micro-batches of "
                       f"{args.batch // args.micro}, 1 thread")
        wall = summarize(runs[-1:])["wall"]["ratio_median"]
        print(f"repeat {repeat + 1}/{args.repeats}: paired wall ratio {wall:.3f}", flush=True)
    summary = summarize(runs)
    last = runs[-1]
    result = {"mode": args.mode, "setting": setting, "model": f"ViT dim {args.dim} depth "
              f"{args.depth}", "params": sum(p.numel() for p in ViT(args.dim, args.depth)
                                             .parameters()),
              "steps_per_setting_per_repeat": args.steps, **summary,
              "small_batch": last["small_batch"], "big_batch": last["big_batch"],
              "b_simple": last["b_simple"], "load_1m_at_start": round(load_start, 2),
              "note": args.note}
    for clock, name in (("wall", "wall clock"), ("cpu", "process CPU time")):
        c = summary[clock]
        print(f"{setting}, {name}: step {c['step_s_off_median'] * 1000:.1f} ms off, "
              f"{c['step_s_on_median'] * 1000:.1f} ms on; median paired ratio "
              f"{c['ratio_median']:.3f} (95% CI {c['ratio_ci95'][0]:.3f}-"
              f"{c['ratio_ci95'][1]:.3f}; repeats "
              f"{', '.join(f'{r:.3f}' for r in c['per_repeat_ratio'])})")
    print(f"B_simple {'undefined' if result['b_simple'] is None else result['b_simple']:.3g}"
          if result["b_simple"] is not None else "B_simple undefined (random labels)")
    assert math.isfinite(summary["wall"]["ratio_median"])
    save_json(result, args.json)


if __name__ == "__main__":
    main()

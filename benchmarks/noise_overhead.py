"""Cost of `--track-noise-scale`: training step time with and without the noise-scale hook.

    python benchmarks/noise_overhead.py [--batch-size 256 --group 32 --width 16 --steps 6]

One model, one process; steps alternate between tracking off and on (the hook draws no random
numbers and restores the BN statistics, so both see the same kind of step), so that machine
noise hits both alike. Prints the median step time of each and their ratio; --json PATH writes
them. The hook's extra work is one forward + backward over one small group (--group samples,
or a quarter of the batch with --group 0) per step.
"""

import argparse
import platform
import statistics
import time

import torch

from batchscale.bench import save_json
from batchscale.config import from_dict
from batchscale.engine import noise_hook
from batchscale.engine.data import EpochLoader
from batchscale.engine.setup import build
from batchscale.engine.step import prepare_input, train_step
from batchscale.engine.train import Position


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--group", type=int, default=32, help="BN group (0 = whole batch)")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per setting")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    cfg = from_dict(dict(dataset="sample", width=args.width, batch_size=args.batch_size,
                         bn_group=args.group, device=args.device, threads=args.threads,
                         track_noise_scale=True, epochs=1))
    setup = build(cfg, progress=False)
    tracker = noise_hook.attach(setup, Position())
    loader = EpochLoader(setup.train, cfg.batch_size, cfg.seed, 0)
    times = {"off": [], "on": []}
    for step in range(2 * args.steps + 2):
        setting = "on" if step % 2 else "off"
        setup.noise = tracker if setting == "on" else None
        images, labels = loader.batch(step % len(loader))
        if setup.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        loss, _ = train_step(setup, prepare_input(setup, images), labels)
        loss.item()
        if step >= 2:  # the first two steps warm up
            times[setting].append(time.perf_counter() - started)
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    result = {"batch_size": cfg.batch_size, "small_batch": tracker.small_batch,
              "width": cfg.width, "device": str(setup.device), "threads": torch.get_num_threads(),
              "step_s_off": off, "step_s_on": on, "overhead": on / off - 1,
              "machine": platform.processor() or platform.machine()}
    print(f"B {cfg.batch_size}, small batch {tracker.small_batch}, width {cfg.width}, "
          f"{result['device']} ({result['threads']} threads): step {off * 1000:.0f} ms off, "
          f"{on * 1000:.0f} ms on, overhead {result['overhead']:+.1%}")
    save_json(result, args.json)


if __name__ == "__main__":
    main()

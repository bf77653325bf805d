"""Per-worker batch norm: step time of `ghost` (one vectorized pass) vs `loop` (Algorithm 1).

    python benchmarks/ghost_vs_loop.py [--batch-size 1024 --group 32 --width 16 --steps 4]

Both implementations train the same model on the same batches, in one process, alternating
step by step so that machine noise hits both alike. Prints images/s of each and the ratio, and
writes them as JSON (--json PATH).
"""

import argparse
import json
import platform
import statistics
import time

import torch

from batchscale.config import from_dict
from batchscale.data import EpochLoader
from batchscale.train import build, prepare_input, train_step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--group", type=int, default=32)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per implementation")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    setups = {impl: build(from_dict(dict(width=args.width, batch_size=args.batch_size,
                                         bn_group=args.group, bn_impl=impl,
                                         device=args.device)), progress=False)
              for impl in ("ghost", "loop")}
    loader = EpochLoader(setups["ghost"].train, args.batch_size, seed=0, epoch=0)
    times = {impl: [] for impl in setups}
    for step in range(args.steps + 1):  # step 0 warms up
        images, labels = loader.batch(step % len(loader))
        for impl, setup in setups.items():
            if setup.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            loss, _ = train_step(setup, prepare_input(setup, images), labels)
            loss.item()
            if step:
                times[impl].append(time.perf_counter() - start)
    result = {impl: args.batch_size / statistics.median(t) for impl, t in times.items()}
    result = {
        "ghost_images_per_sec": round(result["ghost"], 1),
        "loop_images_per_sec": round(result["loop"], 1),
        "ghost_over_loop": round(result["ghost"] / result["loop"], 3),
        "batch_size": args.batch_size, "group": args.group, "width": args.width,
        "device": args.device, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.machine(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()

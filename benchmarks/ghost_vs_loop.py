"""Per-worker batch norm: step time of `ghost` (one vectorized pass) vs `loop` (Algorithm 1).

    python benchmarks/ghost_vs_loop.py [--batch-size 1024 --group 32 --width 16 --steps 4]

Both implementations train the same model on the same batches, in one process, alternating
step by step so that machine noise hits both alike (batchscale.bench.bench_ghost, also run by
`batchscale bench --what ghost`). Prints images/s of each and the ratio, and writes them as JSON
(--json PATH).
"""

import argparse

from batchscale.bench import bench_ghost, emit
from batchscale.config import from_dict


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--group", type=int, default=32)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per implementation")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--channels-last", default="auto")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    cfg = from_dict(dict(width=args.width, batch_size=args.batch_size,
                         base_batch_size=args.batch_size, bn_group=args.group,
                         device=args.device, channels_last=args.channels_last))
    result = bench_ghost(cfg, args.steps)
    emit(result, args.json)


if __name__ == "__main__":
    main()

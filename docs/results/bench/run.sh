#!/bin/sh
# The benchmarks behind docs/results/bench/*.json not written by `batchscale bench` (those have
# their commands in README.md here). Run from the repository root on an idle machine, venv active:
#   sh docs/results/bench/run.sh
# Each script alternates its two sides in one process (or, for the workers, in the same moments),
# so machine noise hits both alike; each JSON records its command, commit, machine and load.
set -e
D=docs/results/bench
# --track-noise-scale: step time with and without it, one thread, every step measured
python benchmarks/noise_overhead.py --batch-size 128 --group 8 --width 8 --threads 1 \
  --steps 10 --json $D/noise-overhead-b128-g8.json
python benchmarks/noise_overhead.py --batch-size 256 --group 32 --width 16 --threads 1 \
  --steps 6 --json $D/noise-overhead-b256-g32.json
python benchmarks/noise_overhead.py --batch-size 256 --group 0 --width 16 --threads 1 \
  --steps 6 --json $D/noise-overhead-b256-whole.json
python benchmarks/noise_overhead.py --batch-size 32 --group 0 --width 16 --threads 1 \
  --steps 20 --json $D/noise-overhead-b32-whole.json
# a second worker's cost per step (gloo, 1 thread each, 64 images per worker)
python benchmarks/distributed_overhead.py --json $D/distributed-overhead.json

"""The issue-6 speed benchmarks in one go: `batchscale bench` with the issue's settings.

    python benchmarks/speed.py [--json speed.json] [any `batchscale bench` option]

Runs, each in this one process and each side by side with its plain-PyTorch counterpart:
engine epochs (width 16, B = 128; the run's own metrics.jsonl images/s) vs the reference
DataLoader loop, the augmented-batch pipeline alone, and ghost vs loop BN at B = 1024, G = 32.
"""

import sys

from batchscale.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--what", "all", *sys.argv[1:]]))

"""batchscale: large-batch data-parallel training of ResNet-18 on CIFAR-10, and why it breaks."""

import os

__version__ = "0.1.0"

# Issue 6: OpenMP threads that sleep instead of spinning while they wait. On a CPU shared with
# other processes, spinning threads steal the cores the working thread needs (measured 3x slower
# steps on 2 busy cores); idle, it costs nothing measurable. Takes effect only if torch is not
# imported yet (the `batchscale` command); set OMP_WAIT_POLICY yourself to choose otherwise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

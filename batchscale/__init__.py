"""batchscale: large-batch data-parallel training of ResNet-18 on CIFAR-10, and why it breaks;
its diagnostics (noise scale, collapse) for any PyTorch model: `from batchscale import NoiseScale`.
"""

__version__ = "0.1.0"

# the Python API for any model and training loop (docs/api.md)
from batchscale.api import CollapseMonitor, Estimate, NoiseScale, advise  # noqa: E402

__all__ = ["CollapseMonitor", "Estimate", "NoiseScale", "__version__", "advise"]

# OpenMP's wait policy is left at its default (threads spin briefly while they wait): on cores a
# run has to itself, that measured 1.26x faster than OMP_WAIT_POLICY=PASSIVE. Where runs share
# cores (a study's jobs x threads > cores), the study sets PASSIVE for its runs
# (batchscale.study.sweep.child_env). Set OMP_WAIT_POLICY yourself to choose otherwise.

"""batchscale: large-batch data-parallel training of ResNet-18 on CIFAR-10, and why it breaks."""

__version__ = "0.1.0"

"""A run's set-up: the device, the data, the model, the optimizer and the lr plan, built once
from a config into one `Setup` that the step, the loop and the analyses share."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from batchscale.config import TrainConfig
from batchscale.engine import noise as noise_scale
from batchscale.engine.data import Split, balanced_subset, load_dataset
from batchscale.engine.models import build_model
from batchscale.engine.optim import build_optimizer
from batchscale.engine.schedule import LearningRatePlan, plan_from_config
from batchscale.errors import UserError, one_line


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


# oneDNN's channels_last convolutions on CPU (torch 2.13, seen on an AMD EPYC) crash or hang when a
# layer has fewer than 8 channels; `auto` keeps such narrow models contiguous on CPU.
MIN_CPU_CHANNELS_LAST_WIDTH = 8


def use_channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    """auto: on (1.4x faster on CPU, faster on CUDA) except for CPU models narrower than 8."""
    if cfg.channels_last == "auto":
        return device.type != "cpu" or cfg.width >= MIN_CPU_CHANNELS_LAST_WIDTH
    return cfg.channels_last == "on"


# cuBLAS reads this when its first handle is made (the first CUDA matmul): set before that, it
# makes cuBLAS reductions reproducible (NVIDIA's cuBLAS docs, "Results reproducibility").
CUBLAS_WORKSPACE = ":4096:8"


def set_deterministic(on: bool) -> None:
    """With `on`: deterministic algorithms (a warning, not an error, for the few CUDA kernels
    without a deterministic variant: max-pool and adaptive-pool backward), cuDNN deterministic
    without autotuning, no TF32, and CUBLAS_WORKSPACE_CONFIG. Harmless on CPU."""
    if not on:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


@dataclass
class Setup:
    """Everything a run is made of, built from a config."""

    cfg: TrainConfig
    device: torch.device
    train: Split
    test: Split
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    plan: LearningRatePlan
    channels_last: bool
    world_size: int = 1
    rank: int = 0
    train_model: torch.nn.Module | None = None  # the DDP wrapper with several workers
    noise: noise_scale.NoiseScaleTracker | None = None  # with cfg.track_noise_scale
    graph: object | None = None  # a graphs.GraphedStep when the step replays a CUDA graph
    local: object | None = None  # local SGD's replicas and period (engine.localsgd.LocalSGD)
    loss_fn: Callable | None = None  # loss(output, labels) -> scalar; None: cross-entropy
    classes: int | None = None  # the number of classes (None: the largest training label + 1)


def build(cfg: TrainConfig, progress: bool = True, world_size: int = 1, rank: int = 0, *,
          data: tuple[Split, int] | None = None,
          model_factory: Callable[[int], torch.nn.Module] | None = None,
          make_optimizer: Callable | None = None, loss_fn: Callable | None = None) -> Setup:
    """The setup of `cfg`; a user's pieces replace batchscale's where given: `data` (a
    prepared training Split and its number of classes, engine.data.split_from; it is also the
    test split), `model_factory(classes)`, `make_optimizer(params, lr)` and `loss_fn(output,
    labels)`. Without them the behaviour is the config's alone."""
    set_deterministic(cfg.deterministic)  # before anything touches CUDA
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if data is None:
        train, test, classes = load_dataset(cfg.dataset, cfg.data_dir, progress)
    else:
        train, test, classes = data[0], data[0], range(data[1])
    train = balanced_subset(train, cfg.train_subset, cfg.seed)
    if cfg.batch_size > len(train):
        raise UserError(f"batch_size {cfg.batch_size} exceeds the {len(train)} training images")
    if not math.isfinite(cfg.peak_lr * len(train)):  # the noise scale G of the summary
        raise UserError(f"the peak lr {cfg.peak_lr:g} x the {len(train)} training images "
                        "overflows; lr is not a usable number")
    torch.manual_seed(cfg.seed)
    try:
        model = (user_model(model_factory, len(classes),
                            train.inputs(torch.arange(min(2, len(train)))))
                 if model_factory is not None else
                 build_model(cfg.model, cfg.width, len(classes), cfg.bn_momentum,
                             cfg.group_size if cfg.bn_impl == "ghost" else 0))
    except (RuntimeError, MemoryError) as err:  # the allocator: a width this machine cannot hold
        if not isinstance(err, MemoryError) and "alloc" not in str(err).lower():
            raise
        raise UserError(f"a width-{cfg.width} {cfg.model} does not fit in this machine's "
                        f"memory ({type(err).__name__})") from None
    channels_last = use_channels_last(cfg, device)
    model = model.to(device, memory_format=torch.channels_last if channels_last else
                     torch.contiguous_format)
    optimizer = build_optimizer(cfg, model, make_optimizer)
    plan = plan_from_config(cfg, len(train) // cfg.batch_size, len(train))
    return Setup(cfg, device, train.to(device), test.to(device), model, optimizer, plan,
                 channels_last, world_size, rank, loss_fn=loss_fn,
                 classes=None if data is None else data[1])


def user_model(factory: Callable[[int], torch.nn.Module], classes: int,
               inputs: torch.Tensor) -> torch.nn.Module:
    """`factory(classes)`, checked (else a UserError): an nn.Module whose output on `inputs`
    (a few training inputs; eval mode, no gradient, no state changed) is (samples, classes)."""
    model = factory(classes)
    name = getattr(factory, "__qualname__", type(factory).__name__)
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"model factory {name}({classes}) returned {type(model).__name__}, "
                        "not an nn.Module")
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(inputs)
    except Exception as err:  # noqa: BLE001 (a user's model can raise anything)
        raise UserError(f"model factory {name}: a forward pass on the training inputs "
                        f"{tuple(inputs.shape)} failed: {one_line(err)}") from None
    finally:
        model.train(training)
    if not torch.is_tensor(output) or tuple(output.shape) != (len(inputs), classes):
        shape = tuple(output.shape) if torch.is_tensor(output) else type(output).__name__
        raise UserError(f"model factory {name}: {len(inputs)} inputs gave an output of "
                        f"{shape}; a classifier's is (samples, classes) = "
                        f"({len(inputs)}, {classes})")
    return model

"""One dataclass holds every setting of a training run; each field says what it is.

Config files and `--set` overrides are type-checked against the dataclass, unknown keys are
rejected, and `validate()` checks the cross-field rules before anything runs (pycls style);
those of the derived values, local SGD and batch growth are in config_checks.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from batchscale import files
from batchscale.config_checks import (  # noqa: F401 (config.X is the public name)
    MAX_WIDTH,
    check_batch_growth,
    check_derived,
    check_local_sgd,
    first_decay_epoch,
    local_start,
)
from batchscale.errors import UserError, reading


def _opt(default: Any, help: str, choices: tuple | None = None, affects_result: bool = True):
    """A dataclass field with its help text, allowed values, and whether it changes what is
    computed (False: it changes only how: where, how fast, how often it is shown)."""
    return field(default=default, metadata={"help": help, "choices": choices,
                                            "affects_result": affects_result})


@dataclass
class TrainConfig:
    # ---- data ----
    dataset: str = _opt(
        "sample",
        "sample (embedded 5k/1k real CIFAR-10 subset) | cifar10 (official archive, downloaded "
        "and MD5-checked) | a path to an image folder or zip (train/<class>/*, test/<class>/*) "
        "or to the official .tar.gz / extracted cifar-10-batches-py folder",
    )
    data_dir: str = _opt("", "cache folder for downloads (default: $BATCHSCALE_DATA or "
                             "~/.cache/batchscale)")
    train_subset: int = _opt(0, "class-balanced, seed-determined subset of the training split "
                                "(0 = all)")
    # ---- model ----
    model: str = _opt("resnet18", "resnet18 (CIFAR stem: 3x3 conv, no max-pool) | "
                                  "resnet18-imagenet (7x7/2 stem + max-pool) | MODULE:FACTORY "
                                  "(your FACTORY(num_classes) returning an nn.Module; --width "
                                  "unused)")
    width: int = _opt(64, "channels of the first stage (64 = standard ResNet-18)")
    # ---- optimizer ----
    optimizer: str = _opt("sgd", "sgd | rmsprop | lars (layer-wise trust ratio) | lamb "
                                 "(Adam + layer-wise trust ratio)",
                          ("sgd", "rmsprop", "lars", "lamb"))
    lr: float = _opt(0.025, "learning rate at --base-batch-size")
    base_batch_size: int = _opt(32, "batch size at which --lr is the rate")
    momentum: float = _opt(0.9, "momentum (SGD, RMSProp and LARS)")
    nesterov: bool = _opt(False, "Nesterov momentum (SGD)")
    weight_decay: float = _opt(5e-4, "L2 weight decay, added to the gradient")
    rmsprop_alpha: float = _opt(0.99, "RMSProp smoothing constant of the squared gradient")
    rmsprop_eps: float = _opt(1e-8, "RMSProp epsilon")
    trust_coefficient: float = _opt(0.001, "LARS: eta in the trust ratio "
                                           "eta*|w| / (|grad| + wd*|w|)")
    lamb_beta1: float = _opt(0.9, "LAMB: decay of the first moment (Adam beta1)")
    lamb_beta2: float = _opt(0.999, "LAMB: decay of the second moment (Adam beta2)")
    lamb_eps: float = _opt(1e-6, "LAMB: epsilon added to the root of the second moment")
    exclude_bn_bias_wd: bool = _opt(False, "no weight decay on BN parameters and biases "
                                           "(sgd, rmsprop; lars and lamb always exclude them)")
    label_smoothing: float = _opt(0.0, "label smoothing of the training loss (0 = none)")
    # ---- learning-rate plan ----
    batch_size: int = _opt(32, "global batch size B (all workers together)")
    scale_rule: str = _opt("linear", "peak lr = lr * rule(B / base_batch_size)",
                           ("none", "linear", "sqrt"))
    warmup_epochs: float = _opt(0.0, "ramp per step, linearly, from lr to the peak lr")
    schedule: str = _opt("step", "step | cosine | poly (power-2 polynomial to 0) | constant "
                                 "(after warmup)", ("step", "cosine", "poly", "constant"))
    decay_every: float = _opt(50.0, "step schedule: epochs between decays, counted from the start")
    decay_factor: float = _opt(0.1, "step schedule: multiply the lr by this at each decay")
    epochs: int = _opt(200, "training epochs")
    # -- growing the batch instead of decaying the rate (Smith et al. 2018) --
    batch_growth: int = _opt(1, "step schedule: at each decay multiply the batch by this instead "
                                "(the rate then changes by decay_factor x batch_growth; 1 = off)")
    max_batch_size: int = _opt(0, "with batch_growth: the largest batch; past it the rate decays "
                                  "as usual (0 = the training set bounds it)")
    # ---- batch norm ----
    bn_group: int = _opt(0, "samples per batch-norm group, as one worker's batch "
                            "(0 = the whole batch)")
    bn_impl: str = _opt("ghost", "ghost (one vectorized pass) | loop (the study's Algorithm 1)",
                        ("ghost", "loop"))
    bn_momentum: float = _opt(0.1, "running-statistics momentum of batch norm")
    # ---- workers (real data parallelism, torchrun; see distributed.py) ----
    workers: int = _opt(0, "worker processes started through torchrun on this machine, each "
                           "taking batch_size / workers (0 = no launcher: one process, or as "
                           "many as an outer torchrun started)")
    sync_bn: bool = _opt(False, "with several workers, batch norm over the global batch instead "
                                "of each worker's own share (needs bn_group 0)")
    dist_timeout: float = _opt(600.0, "seconds a worker waits for its peers (to join, or in a "
                                      "collective) before the run ends with an error",
        affects_result=False)
    # -- local SGD / post-local SGD (Lin et al. 2020) --
    local_steps: int = _opt(1, "local SGD: each worker takes H steps on its own batch, then the "
                               "workers average their models (1 = synchronous training)")
    local_start_epoch: int = _opt(0, "local SGD from this epoch on, synchronous before it (-1 = "
                                     "post-local SGD: from the step schedule's first decay)")
    local_workers: int = _opt(0, "simulate this many workers in one process, each with its own "
                                 "model replica, optimizer state and B/W share (0 = off)")
    # ---- run ----
    seed: int = _opt(0, "seeds the weights, the data order and the augmentation")
    device: str = _opt("auto", "auto | cpu | cuda", ("auto", "cpu", "cuda"),
        affects_result=False)
    amp: str = _opt("none", "none | bf16 (autocast; CUDA, or a CPU with bf16 instructions)",
                    ("none", "bf16"))
    channels_last: str = _opt("auto", "auto (on: it is faster on CUDA and on CPU) | on | off",
                              ("auto", "on", "off"),
        affects_result=False)
    threads: int = _opt(0, "CPU threads for torch (0 = torch's default)",
        affects_result=False)
    compile: bool = _opt(False, "torch.compile the model for training (the first steps pay the "
                                "compile time; evaluation stays eager)",
        affects_result=False)
    eval_batch_size: int = _opt(1000, "batch size for evaluation",
        affects_result=False)
    log_every: int = _opt(20, "steps between progress-bar updates (each one reads the loss)",
        affects_result=False)
    track_noise_scale: bool = _opt(False, "log the gradient noise scale B_simple per epoch "
                                          "(McCandlish et al.; costs one small-batch pass a step)")
    noise_scale_every: int = _opt(1, "with track_noise_scale: measure it on every N-th step "
                                     "(its cost divided by N; the trajectory is unchanged)")
    # ---- TensorBoard ----
    tensorboard: bool = _opt(False, "write TensorBoard event files into <run>/tb/ (loss and lr "
                                    "every log_every steps, the metrics of every epoch); needs "
                                    "the tensorboard extra", affects_result=False)
    # ---- on the GPU: CUDA graphs and deterministic kernels ----
    cuda_graphs: str = _opt("auto", "replay the whole training step from a CUDA graph: auto (on "
                                    "for CUDA where supported: sgd/rmsprop, no noise tracking, "
                                    "one worker, no compile) | on (an error where unsupported) "
                                    "| off", ("auto", "on", "off"),
        affects_result=False)
    deterministic: bool = _opt(False, "deterministic algorithms, cuDNN deterministic, no "
                                      "benchmark, no TF32 (exact resume on CUDA; slower)",
        affects_result=False)
    # -- collapse: a run that stops learning (batchscale/engine/collapse.py, docs/collapse.md)
    stop_on_collapse: bool = _opt(False, "end the run as diverged (reason collapse) at the epoch "
                                         "the collapse rule fires, to save compute (off: run on "
                                         "and still mark it collapsed)",
        affects_result=False)

    # ------------------------------------------------------------------ derived values
    @property
    def group_size(self) -> int:
        """Samples per batch-norm group (the whole batch when bn_group is 0)."""
        return self.bn_group or self.batch_size

    @property
    def peak_lr(self) -> float:
        """The learning rate after warmup, from the scaling rule."""
        k = self.batch_size / self.base_batch_size
        factor = {"none": 1.0, "linear": k, "sqrt": math.sqrt(k)}[self.scale_rule]
        return self.lr * factor

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# Fields that change how a run is computed, not what: a study treats runs differing only in
# these as one, and a resumed run may change them.
HOW_FIELDS = tuple(name for name, f in FIELDS.items() if not f.metadata["affects_result"])
# What `--resume` may change: the how-fields only. A different `epochs` is a different recipe
# (`train --resume --extend-epochs` lengthens a step/constant schedule explicitly).
RESUMABLE_FIELDS = HOW_FIELDS


# ---------------------------------------------------------------------- command-line options
def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field; values are checked by the config itself."""
    group = parser.add_argument_group("training options (see README for the full table)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} (default: {f.default!r})"
        if isinstance(f.default, bool):
            group.add_argument(flag, nargs="?", const="true", default=argparse.SUPPRESS,
                               metavar="BOOL", help=help_text)
        else:
            group.add_argument(flag, default=argparse.SUPPRESS, metavar=f.name.upper(),
                               help=help_text)


def given_fields(args: argparse.Namespace) -> dict:
    """The config fields given as options (those left out are absent)."""
    return {name: getattr(args, name) for name in FIELDS if hasattr(args, name)}


def config_flags(cfg: TrainConfig, names=None) -> list[str]:
    """Every field (or those `names`) as command-line options: how a config is handed to a child
    process."""
    values = cfg.to_dict()
    return [flag for name in (values if names is None else names)
            for flag in ("--" + name.replace("_", "-"), str(values[name]))]


def how_flags(cfg: TrainConfig) -> list[str]:
    """The how-fields as options: what a resumed run takes from the command that resumes it."""
    return config_flags(cfg, HOW_FIELDS)


# ---------------------------------------------------------------------- parsing values
def parse_value(name: str, text: Any) -> Any:
    """Convert `text` to the type of field `name`; a bad key or value is a UserError."""
    if name not in FIELDS:
        raise UserError(f"unknown config field '{name}'")
    default = FIELDS[name].default
    kind = type(default)
    if isinstance(text, bool) and kind is not bool:  # YAML's true/false is not a number
        raise UserError(f"{name} must be {kind.__name__}, got {text!r}")
    if kind is str and not isinstance(text, (str, int, float)):
        raise UserError(f"{name} must be str, got {text!r}"[:200])
    try:
        if kind is bool:
            if isinstance(text, bool):
                return text
            lowered = str(text).lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError
            return lowered in ("1", "true", "yes", "on")
        if kind is int:
            number = float(text)
            if not number.is_integer():
                raise ValueError
            return int(number)
        return kind(text)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be {kind.__name__}, got {text!r}") from None


def from_dict(values: dict) -> TrainConfig:
    """A validated config from a mapping of field names (dashes allowed) to values."""
    cfg = TrainConfig()
    for key, value in values.items():
        name = str(key).replace("-", "_")
        setattr(cfg, name, parse_value(name, value))
    validate(cfg)
    return cfg


def load_yaml(path: Path) -> TrainConfig:
    with reading(path, "config"):
        data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise UserError(f"config {path} is not a mapping of fields")
    return from_dict(data)


def dump_yaml(cfg: TrainConfig, path: Path) -> None:
    files.write_text(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# ---------------------------------------------------------------------- validation
MAX_SEED = 2**32  # a run's seed; the data order seeds a generator with seed * 1_000_003 + epoch
THREADS_PER_CORE = 4  # --threads above cores x this is refused (oversubscription only slows)


def check_threads(cfg: TrainConfig) -> None:
    """Refuse more CPU threads than THREADS_PER_CORE per core of this machine. Checked where a
    run starts, not in validate(): a saved config stays readable on a smaller machine."""
    cores = os.cpu_count() or 1
    if cfg.threads > THREADS_PER_CORE * cores:
        raise UserError(f"threads {cfg.threads} exceeds {THREADS_PER_CORE} x the {cores} cores "
                        f"of this machine")


def validate(cfg: TrainConfig) -> None:
    """Check every field and the rules between fields; raise UserError on the first failure."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{f.name} must be a finite number, got {value}")
        choices = f.metadata.get("choices")
        if choices and getattr(cfg, f.name) not in choices:
            raise UserError(f"{f.name} must be one of {', '.join(choices)}, "
                            f"got {getattr(cfg, f.name)!r}")
    if cfg.model not in ("resnet18", "resnet18-imagenet") and \
            not re.fullmatch(r"[\w.]+:[\w.]+", cfg.model):
        raise UserError(f"model must be resnet18, resnet18-imagenet or MODULE:FACTORY, "
                        f"got {cfg.model!r}")
    positive = ("width", "lr", "base_batch_size", "batch_size", "epochs", "eval_batch_size",
                "decay_every", "log_every", "noise_scale_every")
    for name in positive:
        if not getattr(cfg, name) > 0:
            raise UserError(f"{name} must be positive, got {getattr(cfg, name)}")
    non_negative = ("train_subset", "momentum", "weight_decay", "warmup_epochs", "bn_group",
                    "threads", "rmsprop_eps", "lamb_eps")
    for name in non_negative:
        if getattr(cfg, name) < 0:
            raise UserError(f"{name} must not be negative, got {getattr(cfg, name)}")
    if not 0 <= cfg.seed < MAX_SEED:
        raise UserError(f"seed must be in [0, 2^32), got {cfg.seed}")
    if not 0 < cfg.bn_momentum <= 1:
        raise UserError(f"bn_momentum must be in (0, 1], got {cfg.bn_momentum}")
    if not cfg.trust_coefficient > 0:
        raise UserError(f"trust_coefficient must be positive, got {cfg.trust_coefficient}")
    for name in ("lamb_beta1", "lamb_beta2", "label_smoothing"):
        if not 0 <= getattr(cfg, name) < 1:
            raise UserError(f"{name} must be in [0, 1), got {getattr(cfg, name)}")
    if not 0 < cfg.decay_factor <= 1:
        raise UserError(f"decay_factor must be in (0, 1], got {cfg.decay_factor}")
    if cfg.batch_size % cfg.group_size:
        raise UserError(f"batch_size {cfg.batch_size} is not a multiple of bn_group "
                        f"{cfg.bn_group}")
    if cfg.nesterov and (cfg.optimizer != "sgd" or cfg.momentum == 0):
        raise UserError("nesterov needs optimizer sgd with momentum > 0")
    if cfg.warmup_epochs > cfg.epochs:
        raise UserError(f"warmup_epochs {cfg.warmup_epochs} exceeds epochs {cfg.epochs}")
    if cfg.workers < 0:
        raise UserError(f"workers must not be negative, got {cfg.workers}")
    if not cfg.dist_timeout > 0:
        raise UserError(f"dist_timeout must be positive, got {cfg.dist_timeout}")
    if cfg.workers and cfg.batch_size % cfg.workers:
        raise UserError(f"batch_size {cfg.batch_size} is not a multiple of workers {cfg.workers}")
    if cfg.sync_bn and cfg.group_size != cfg.batch_size:
        raise UserError("sync_bn normalizes over the whole global batch; it needs bn_group 0")
    if cfg.sync_bn and cfg.track_noise_scale:
        raise UserError("track_noise_scale compares each worker's gradient with the global one, "
                        "which sync_bn makes gradients of different functions; drop one of them")
    check_local_sgd(cfg)
    check_batch_growth(cfg)
    check_derived(cfg)

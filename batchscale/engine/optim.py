"""Optimizers, built by name from a config, over named parameter groups.

Parameters are split into `weights` (conv and linear weights) and `no_decay_candidates` (batch-norm
scales and shifts, biases) so that layer-wise optimizers (LARS, LAMB) and options that exclude
BN and bias parameters from weight decay can treat them apart. Each group carries `lr_scale`,
which the training loop multiplies into the planned rate.
"""

from __future__ import annotations

import torch
from torch import nn

from batchscale.engine.lars import build_lamb, build_lars
from batchscale.errors import UserError


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: multi-dimensional weights, and one-dimensional parameters (BN, biases)."""
    weights, others = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (weights if parameter.ndim > 1 else others).append(parameter)
    return [
        {"name": "weights", "params": weights, "weight_decay": weight_decay, "lr_scale": 1.0},
        {"name": "bn_and_bias", "params": others, "weight_decay": weight_decay, "lr_scale": 1.0},
    ]


def build_sgd(cfg, groups):
    return torch.optim.SGD(groups, lr=cfg.peak_lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)


def build_rmsprop(cfg, groups):
    return torch.optim.RMSprop(groups, lr=cfg.peak_lr, alpha=cfg.rmsprop_alpha,
                               eps=cfg.rmsprop_eps, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)


OPTIMIZERS = {"sgd": build_sgd, "rmsprop": build_rmsprop, "lars": build_lars,
              "lamb": build_lamb}


def build_optimizer(cfg, model: nn.Module, factory=None) -> torch.optim.Optimizer:
    """The optimizer named by cfg.optimizer; `exclude_bn_bias_wd` zeroes the decay of
    `bn_and_bias` (LARS and LAMB always exclude that group). A user's `factory(params, lr)`
    (called with the trainable parameters and the peak lr) replaces it."""
    if factory is not None:
        optimizer = factory([p for p in model.parameters() if p.requires_grad], cfg.peak_lr)
        if not isinstance(optimizer, torch.optim.Optimizer):
            name = getattr(factory, "__qualname__", repr(factory))
            raise UserError(f"optimizer factory {name}(params, lr) returned "
                            f"{type(optimizer).__name__}, not a torch.optim.Optimizer")
        return optimizer
    groups = parameter_groups(model, cfg.weight_decay)
    if cfg.exclude_bn_bias_wd:
        for group in groups:
            if group["name"] == "bn_and_bias":
                group["weight_decay"] = 0.0
    return OPTIMIZERS[cfg.optimizer](cfg, groups)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def sgd_momentum(optimizer: torch.optim.Optimizer) -> float | None:
    """β of a plain (heavy-ball) SGD optimizer with one momentum over its groups; None for
    any other optimizer, where the heavy-ball stability bound does not apply."""
    if type(optimizer) is not torch.optim.SGD:
        return None
    betas = {group.get("momentum", 0.0) for group in optimizer.param_groups}
    nesterov = any(group.get("nesterov") for group in optimizer.param_groups)
    return betas.pop() if len(betas) == 1 and not nesterov else None

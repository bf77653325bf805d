"""ResNet-18 with a CIFAR stem or an ImageNet stem, a width multiplier and per-worker batch norm.

    resnet18            3x3 conv stem, no max-pool (He et al. 2016, Sec. 4.2 style for CIFAR)
    resnet18-imagenet   7x7 stride-2 conv + 3x3 stride-2 max-pool, as the common library model
    MODULE:FACTORY      your own: FACTORY(num_classes) -> nn.Module (`--model mynets:make`)

Initialization as the study states: PyTorch defaults, He (Kaiming normal, fan_out) for the convs,
batch norm gamma = 1 and beta = 0 with running mean 0 and variance 1.
"""

from __future__ import annotations

import importlib
import os
import sys
from functools import partial

from torch import nn

from batchscale.engine.norm import GhostBatchNorm2d
from batchscale.errors import UserError


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, stride: int, norm):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = norm(channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), norm(channels))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, width: int = 64, num_classes: int = 10, stem: str = "cifar",
                 bn_momentum: float = 0.1, group_size: int = 0):
        super().__init__()
        norm = partial(GhostBatchNorm2d, group_size=group_size, momentum=bn_momentum)
        if stem == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), norm(width),
                                      nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), norm(width),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        layers, channels = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            out = width * 2 ** i
            layers += [BasicBlock(channels, out, stride, norm), BasicBlock(out, out, 1, norm)]
            channels = out
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))


MODELS = {"resnet18": "cifar", "resnet18-imagenet": "imagenet"}


def build_model(name: str, width: int, num_classes: int = 10, bn_momentum: float = 0.1,
                group_size: int = 0) -> nn.Module:
    """ResNet-18 by name, or a user's model from "MODULE:FACTORY": FACTORY(num_classes) from
    the importable MODULE (the working directory is searched too), an nn.Module."""
    if ":" in name:
        return from_factory(name, num_classes)
    return ResNet18(width, num_classes, MODELS[name], bn_momentum, group_size)


def from_factory(spec: str, num_classes: int) -> nn.Module:
    """The model `FACTORY(num_classes)` of "MODULE:FACTORY"; a UserError (one line) when the
    module does not import, has no such callable, or it returns no nn.Module."""
    module_name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path:  # `batchscale train` runs from its script's folder
        sys.path.append(os.getcwd())
    try:
        factory = importlib.import_module(module_name)
    except Exception as err:
        raise UserError(f"--model {spec}: cannot import {module_name}: "
                        f"{type(err).__name__}: {err}") from None
    for part in attribute.split("."):
        factory = getattr(factory, part, None)
    if not callable(factory):
        raise UserError(f"--model {spec}: {module_name} has no callable {attribute}")
    try:
        model = factory(num_classes)
    except Exception as err:
        raise UserError(f"--model {spec}: {attribute}({num_classes}) failed: "
                        f"{type(err).__name__}: {err}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"--model {spec}: {attribute}({num_classes}) returned "
                        f"{type(model).__name__}, not an nn.Module")
    return model

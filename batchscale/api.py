"""The Python API: batchscale's diagnostics for any PyTorch model, in any training loop.

    from batchscale import NoiseScale, CollapseMonitor

`NoiseScale` estimates the gradient noise scale B_simple = tr(Σ) / |G|² (McCandlish et al. 2018,
App. A) from gradients the loop computes anyway: under DDP each worker's local gradient before the
all-reduce is the small batch and the averaged one the big batch (no extra backward pass); in one
process the micro-batches of gradient accumulation are the small batches (`NoiseScale.backward`
splits a batch into them). The class lives beside the engine's estimator in
`batchscale.engine.noise`, so `batchscale train --track-noise-scale`, `batchscale advise`'s
B_noise and this class compute the same numbers from the same norms. `advise` runs the probe of
`batchscale advise` on a user's model factory, data, loss and optimizer factory.
`CollapseMonitor` is the engine's collapse rule (`batchscale.engine.collapse`) for any
classifier, or for any loss given the loss of the best constant predictor. docs/api.md has the
details.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from batchscale.analysis import advise as advise_probe
from batchscale.config import from_dict
from batchscale.engine import collapse
from batchscale.engine.data import split_from
from batchscale.engine.noise import Estimate, NoiseScale
from batchscale.errors import UserError, one_line

__all__ = ["CollapseMonitor", "Estimate", "NoiseScale", "advise"]


class CollapseMonitor:
    """Whether a run has collapsed: it trains on with finite numbers but has stopped learning
    (`batchscale.engine.collapse`, docs/collapse.md). Feed it each epoch's training mean loss.

    - A classifier (`classes=C`, plus each epoch's training accuracy and number of samples): the
      engine's rule exactly. An epoch is stalled at accuracy ≤ 1/C + margin and loss ≥ ln C −
      0.02, exploded when also loss ≥ 1.25 ln C.
    - Any other loss (`baseline_loss=L0`, the loss of the best constant predictor, e.g. the
      targets' variance for MSE): stalled at loss ≥ L0 − margin (default 1% of L0), exploded at
      loss ≥ 1.25 L0.

    Collapsed after 3 exploded epochs in a row, or after max(3, epochs / 2) stalled ones in a row
    (only with `epochs`, the planned budget). Epochs up to `warmup_epochs` are not judged. A
    non-finite loss is a collapse at once (reason "nonfinite").

    Example::

        monitor = CollapseMonitor(classes=10, epochs=30, warmup_epochs=2)
        for epoch in range(30):
            loss, acc, n = train_one_epoch()
            if monitor.update(loss, acc, n):
                print(monitor.reason); break
    """

    def __init__(self, classes: int | None = None, *, baseline_loss: float | None = None,
                 epochs: int | None = None, warmup_epochs: float = 0.0,
                 margin: float | None = None):
        if (classes is None) == (baseline_loss is None):
            raise ValueError("give classes (a classifier) or baseline_loss (any other loss)")
        if classes is not None and classes < 2:
            raise ValueError(f"classes must be at least 2, got {classes}")
        if baseline_loss is not None and not baseline_loss > 0:
            raise ValueError(f"baseline_loss must be positive, got {baseline_loss}")
        self.classes, self.epochs = classes, epochs
        self.baseline = math.log(classes) if classes is not None else float(baseline_loss)
        self.margin = (margin if margin is not None else
                       collapse.LOSS_MARGIN if classes is not None else 0.01 * self.baseline)
        self.first_epoch = collapse.first_judged_epoch(warmup_epochs)
        self.streaks = collapse.Streaks(collapse.stalled_needed(epochs) if epochs
                                        else math.inf)
        self.epoch = 0
        self.collapsed_epoch: int | None = None
        self.reason: str | None = None

    @property
    def collapsed(self) -> bool:
        return self.collapsed_epoch is not None

    def stalled(self, loss: float, accuracy: float | None = None,
                samples: int | None = None) -> bool:
        """Whether one epoch is at the level of a constant predictor (see the class)."""
        if self.classes is None:
            return loss >= self.baseline - self.margin
        if accuracy is None or samples is None:
            raise ValueError("a classifier's epoch needs its accuracy and number of samples")
        return (accuracy <= 1.0 / self.classes + collapse.accuracy_margin(samples, self.classes)
                and loss >= self.baseline - self.margin)

    def update(self, loss: float, accuracy: float | None = None,
               samples: int | None = None) -> bool:
        """Add one epoch (its training mean loss; for a classifier also its training accuracy
        and the number of samples it is over); True once the run has collapsed.

        Example::

            stop = monitor.update(2.31, 0.1, 50_000)
        """
        self.epoch += 1
        if self.collapsed:
            return True
        if not math.isfinite(loss):
            self.collapsed_epoch, self.reason = self.epoch, collapse.NONFINITE
            return True
        judged = self.epoch >= self.first_epoch
        is_stalled = judged and self.stalled(loss, accuracy, samples)
        if self.streaks.add(is_stalled, is_stalled and loss >= collapse.EXPLODED * self.baseline):
            self.collapsed_epoch, self.reason = self.epoch, collapse.REASON
        return self.collapsed


def factory_spec(model: str | Callable[[int], nn.Module]) -> str:
    """"MODULE:FACTORY" for a factory given as a string or as a module-level callable; a
    description such as "<lambda> (a Python callable)" for any other callable."""
    if isinstance(model, str):
        return model
    name = getattr(model, "__qualname__", "") or type(model).__name__
    if "<" in name or "." in name:
        return f"{name} (a Python callable in {getattr(model, '__module__', '?')})"
    return f"{model.__module__}:{name}"


def _describe_data(split, classes: int) -> str:
    shape = "x".join(str(d) for d in split.images.shape[1:]) or "scalar"
    return f"a user's data set: {len(split)} samples of {shape} {split.images.dtype}, {classes} " \
        "classes"


def advise(batches: Sequence[int], out: str | Path, *,
           model: str | Callable[[int], nn.Module] | None = None,
           dataset: str | Dataset | tuple[torch.Tensor, torch.Tensor] = "sample",
           loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
           optimizer: str | Callable[..., torch.optim.Optimizer] = "sgd",
           classes: int | None = None, budget_images: int = 0, overwrite: bool = False,
           quiet: bool = True, **recipe) -> dict:
    """`batchscale advise` from Python, on a user's pieces: the same probe and the same record,
    written as advice.json/.md/.png into `out` (and returned).

    - `model`: a factory `f(classes) -> nn.Module` (any callable) or "MODULE:FACTORY"; default
      batchscale's ResNet-18.
    - `dataset`: tensors `(x, y)`, or any map-style `torch.utils.data.Dataset` of
      `(input, label)` pairs (held in memory as one tensor each; inputs used as given, neither
      normalized nor augmented), or a batchscale dataset name ("sample", "cifar10", a path).
      Labels are class indices 0..C-1; C is `classes` or the largest label + 1. A regression
      target (float labels) is refused: the trials are judged against chance, ln C.
    - `loss(output, y) -> scalar mean loss`; default cross-entropy (with `label_smoothing`).
    - `optimizer`: a factory `f(params, lr) -> torch.optim.Optimizer` (lr is then set every
      step by the probe's schedule) or a built-in name (sgd, rmsprop, lars, lamb, with the
      config's momentum, weight_decay, ...).
    - the recipe as TrainConfig fields: `lr` (at `base_batch_size`), `base_batch_size`,
      `scale_rule`, `warmup_epochs`, `schedule`, `epochs`, `seed`, `threads`, ...

    Example::

        x, y = torch.randn(512, 20), torch.randint(0, 4, (512,))
        record = advise([16, 64], "advice/", model=lambda c: nn.Linear(20, c), dataset=(x, y),
                        loss=F.cross_entropy, optimizer=lambda p, lr: torch.optim.SGD(p, lr),
                        lr=0.1, base_batch_size=16, scale_rule="linear", warmup_epochs=1,
                        epochs=10)
        print(record["advice"]["batch"])
    """
    fields, user = _user_pieces(recipe, model, dataset, loss, optimizer, classes)
    try:
        cfg = from_dict(fields)
    except (TypeError, ValueError) as err:
        raise UserError(f"advise: {one_line(err)}") from None
    chosen = advise_probe.check_batches(",".join(str(b) for b in batches), cfg)
    return advise_probe.advise(cfg, chosen, Path(out), budget_images=budget_images,
                               overwrite=overwrite, quiet=quiet, user=user)


def _user_pieces(recipe: dict, model: str | Callable[[int], nn.Module] | None,
                 dataset: str | Path | Dataset | tuple[torch.Tensor, torch.Tensor],
                 loss: Callable | None, optimizer: str | Callable[..., torch.optim.Optimizer],
                 classes: int | None) -> tuple[dict, dict]:
    """`advise`'s arguments split in two: the config fields (the recipe, plus the pieces given
    by name) and the user's pieces for `setup.build`, with under "described" what the record's
    config says of them."""
    fields = dict(recipe)
    user: dict = {"described": {}}
    if isinstance(model, str):
        fields["model"] = model
    elif model is not None:
        if not callable(model):
            raise UserError(f"model must be 'MODULE:FACTORY' or a callable returning an "
                            f"nn.Module, got {type(model).__name__}")
        user["model_factory"] = model
        user["described"]["model"] = factory_spec(model)
    if isinstance(optimizer, str):
        fields["optimizer"] = optimizer
    else:
        if not callable(optimizer):
            raise UserError(f"optimizer must be a name or a callable (params, lr) -> "
                            f"torch.optim.Optimizer, got {type(optimizer).__name__}")
        user["make_optimizer"] = optimizer
        user["described"]["optimizer"] = f"{factory_spec(optimizer)} (a user's factory)"
    if loss is not None:
        if not callable(loss):
            raise UserError(f"loss must be a callable (output, y) -> scalar, got "
                            f"{type(loss).__name__}")
        user["loss_fn"] = _checked_loss(loss)
        user["described"]["loss"] = factory_spec(loss)
    if isinstance(dataset, (str, Path)):
        fields["dataset"] = str(dataset)
        if classes is not None:
            raise UserError("classes= is for a user's data set; batchscale's have their own")
    else:
        split, count = split_from(dataset, classes)
        user["data"] = (split, count)
        user["described"]["dataset"] = _describe_data(split, count)
    return fields, user


def _checked_loss(loss: Callable) -> Callable:
    """The user's loss, its value checked once: a scalar tensor with a gradient."""
    checked = False

    def wrapped(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        nonlocal checked
        value = loss(output, y)
        if not checked:
            if not torch.is_tensor(value) or value.ndim != 0:
                shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
                raise UserError(f"loss {factory_spec(loss)} must return a scalar tensor (the "
                                f"batch's mean loss), got {shape}")
            checked = True
        return value

    return wrapped

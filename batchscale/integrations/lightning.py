"""A PyTorch Lightning callback: the gradient noise scale logged through the trainer's loggers,
and training stopped when the run collapses (`pip install batchscale[lightning]`).

    from batchscale.integrations.lightning import BatchscaleCallback
    trainer = Trainer(accumulate_grad_batches=2, callbacks=[BatchscaleCallback(classes=10)])

The small batches are Lightning's own backward passes (`batchscale.NoiseScale`): the DDP workers'
local gradients under a DDP strategy, or the micro-batches of `accumulate_grad_batches` >= 2 in
one process. One backward per step in one process gives no small batch: the callback then says
so once and logs nothing. Logged (on the loggers, every `log_every_n_steps` and at each epoch's
end): `noise/b_simple`, `noise/b_simple_error`, `noise/grad_sq`, `noise/trace_sigma`,
`noise/small_batch`, `noise/big_batch`; with a collapse rule also `collapse/collapsed`.
docs/api.md has the details.
"""

from __future__ import annotations

import warnings

import torch

from batchscale.api import CollapseMonitor, NoiseScale

try:
    import lightning.pytorch as pl
except ImportError as err:  # the optional extra
    raise ImportError("batchscale.integrations.lightning needs PyTorch Lightning: "
                      "pip install 'batchscale[lightning]'") from err


def _samples(batch) -> int:
    """The number of samples of a batch: the first dimension of its first tensor."""
    while isinstance(batch, list | tuple | dict):
        batch = next(iter(batch.values() if isinstance(batch, dict) else batch))
    return len(batch)


class BatchscaleCallback(pl.Callback):
    """Logs the noise scale and stops training on collapse.

    `classes` (a classifier; `training_step` returns `{"loss": loss, "acc": accuracy}`) or
    `baseline_loss` (any loss: that of the best constant predictor) turn on the collapse rule
    (`batchscale.CollapseMonitor`) over each epoch's mean training loss; `epochs` (default: the
    trainer's max_epochs) and `warmup_epochs` as there. Without either only the noise scale is
    logged. `span` and `every` are NoiseScale's.

    Example::

        callback = BatchscaleCallback(classes=10, warmup_epochs=1)
        Trainer(max_epochs=20, accumulate_grad_batches=2, callbacks=[callback]).fit(model, data)
        print(callback.noise.estimate(), callback.monitor.collapsed)
    """

    def __init__(self, classes: int | None = None, *, baseline_loss: float | None = None,
                 epochs: int | None = None, warmup_epochs: float = 0.0, span: float = 100.0,
                 every: int = 1, accuracy_key: str = "acc"):
        super().__init__()
        self.classes, self.baseline_loss = classes, baseline_loss
        self.epochs, self.warmup_epochs = epochs, warmup_epochs
        self.span, self.every, self.accuracy_key = span, every, accuracy_key
        self.noise: NoiseScale | None = None
        self.monitor: CollapseMonitor | None = None
        self._sums: list[torch.Tensor] = []
        self._told = False

    # ------------------------------------------------------------------ set-up
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = trainer.strategy.model  # the DDP wrapper under a DDP strategy
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self.noise = NoiseScale(model if model is not None else pl_module, scaler=scaler,
                                span=self.span, every=self.every)
        if self.classes is not None or self.baseline_loss is not None:
            self.monitor = CollapseMonitor(self.classes, baseline_loss=self.baseline_loss,
                                           epochs=self.epochs or trainer.max_epochs,
                                           warmup_epochs=self.warmup_epochs)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.noise is not None:
            self.noise.close()

    # ------------------------------------------------------------------ each step
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.noise.batch_size = _samples(batch)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.noise.optimizer = optimizer
        try:
            self.noise.step()
        except ValueError as err:  # one pass in one process: no small batch
            if not self._told:
                warnings.warn(f"batchscale: noise scale not measured: {err}", stacklevel=2)
                self._told = True
            return
        if (trainer.global_step + 1) % trainer.log_every_n_steps == 0:
            self._log(trainer, pl_module, on_step=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.monitor is None or not isinstance(outputs, dict | torch.Tensor):
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if pl_module.automatic_optimization:  # Lightning hands it on divided by the accumulation
            loss = loss * trainer.accumulate_grad_batches
        samples = _samples(batch)
        row = [loss.detach().double() * samples, torch.tensor(float(samples), dtype=torch.float64)]
        if self.classes is not None:
            if not isinstance(outputs, dict) or self.accuracy_key not in outputs:
                raise KeyError(f"BatchscaleCallback(classes=...) needs training_step to return "
                               f"{{'loss': ..., {self.accuracy_key!r}: accuracy}}")
            row.append(torch.as_tensor(outputs[self.accuracy_key]).detach().double() * samples)
        row = torch.stack([t.to(row[0].device) for t in row])
        self._sums.append(row)

    # ------------------------------------------------------------------ each epoch
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module, on_step=False)
        if self.monitor is None or not self._sums:
            return
        sums = trainer.strategy.reduce(torch.stack(self._sums).sum(0), reduce_op="sum")
        self._sums = []
        samples = int(sums[1].item())
        loss = sums[0].item() / samples
        accuracy = sums[2].item() / samples if self.classes is not None else None
        collapsed = self.monitor.update(loss, accuracy, samples)
        pl_module.log("collapse/collapsed", float(collapsed), on_step=False, on_epoch=True)
        if collapsed:
            trainer.should_stop = True
            if trainer.is_global_zero:
                warnings.warn(f"batchscale: the run collapsed ({self.monitor.reason}) at epoch "
                              f"{self.monitor.collapsed_epoch}: stopping", stacklevel=2)

    def _log(self, trainer, pl_module, on_step: bool) -> None:
        estimate = self.noise.estimate()
        values = {"noise/b_simple": estimate.b_simple, "noise/b_simple_error": estimate.error,
                  "noise/grad_sq": estimate.grad_sq, "noise/trace_sigma": estimate.trace_sigma,
                  "noise/small_batch": estimate.small_batch, "noise/big_batch": estimate.big_batch}
        if estimate.observations == 0:
            return
        for name, value in values.items():
            if value is not None:  # undefined (|G|² ≤ 0): not logged
                # the same on every worker (estimate() averaged them): no reduction needed
                pl_module.log(name, float(value), on_step=on_step, on_epoch=not on_step,
                              sync_dist=not on_step)

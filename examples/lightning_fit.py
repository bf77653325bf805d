"""PyTorch Lightning with batchscale's callback: the noise scale on the trainer's loggers and a
stop when the run collapses (`pip install 'batchscale[lightning]'`). The small batches are the
micro-batches of `accumulate_grad_batches=2` (under a DDP strategy: the workers' own gradients).

    python examples/lightning_fit.py [LOG_DIR]             # metrics in LOG_DIR/.../metrics.csv
    python examples/lightning_fit.py LOG_DIR --devices 2   # two CPU processes (ddp_fork)

With two devices the workers are forked (`ddp_fork`): a forked worker leaves with `os._exit`,
whereas a spawned one (`--strategy ddp_spawn`) finalizes its interpreter, where gloo's threads can
abort it after the fit finished (docs/api.md; scripts/lightning_exits.py counts both).
"""

import argparse
import tempfile

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from batchscale.integrations.lightning import BatchscaleCallback


class Classifier(pl.LightningModule):
    def __init__(self, inputs: int, classes: int, lr: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(inputs, 64), nn.ReLU(), nn.Linear(64, classes))
        self.lr = lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return {"loss": loss, "acc": (logits.argmax(1) == y).float().mean()}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def main(log_dir: str, lr: float = 0.05, epochs: int = 4, devices: int = 1,
         strategy: str = "ddp_fork") -> BatchscaleCallback:
    torch.manual_seed(0)
    classes, inputs = 4, 20
    labels = torch.randint(0, classes, (2048,))
    images = torch.randn(classes, inputs)[labels] + 2.0 * torch.randn(2048, inputs)
    data = DataLoader(TensorDataset(images, labels), batch_size=32, shuffle=True)
    callback = BatchscaleCallback(classes=classes, span=32)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=devices,
                         strategy=strategy if devices > 1 else "auto",
                         accumulate_grad_batches=1 if devices > 1 else 2, log_every_n_steps=8,
                         logger=pl.loggers.CSVLogger(log_dir), enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[callback])
    trainer.fit(Classifier(inputs, classes, lr), data)
    if devices == 1:  # with several devices the callback lived in the worker processes
        print(callback.noise.estimate(), "collapsed" if callback.monitor.collapsed else "")
    return callback


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Lightning with batchscale's callback")
    parser.add_argument("log_dir", nargs="?", default=None)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--strategy", default="ddp_fork", help="with --devices > 1")
    args = parser.parse_args()
    main(args.log_dir or tempfile.mkdtemp(), devices=args.devices, strategy=args.strategy)

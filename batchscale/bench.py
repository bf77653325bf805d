"""`batchscale bench`: images/s of the engine against a plain PyTorch reference, in one process.

    batchscale bench --width 16 --batch-size 128 --json bench.json     # engine vs reference
    batchscale bench --what data --batch-size 128                       # augmented batches/s
    batchscale bench --what ghost --ghost-batch-size 1024 --ghost-group 32   # ghost vs loop

The reference is what a plain PyTorch user writes: a `DataLoader` over the uint8 images whose
`Dataset` pads, crops, flips and normalizes one image at a time (NCHW float), the same model and
the same optimizer, `loss.item()` each step. The engine is `batchscale train` itself: whole epochs
of `train.train_epoch` written to a real run directory, so its figure is the `images_per_sec` of
that run's own metrics.jsonl. The two alternate epoch by epoch in one process (machine load hits
both alike); the first round is warm-up (and compile time) and is reported apart; the ratio is of
the medians of the rest. Timings are measurements, never assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from batchscale import files
from batchscale.config import (
    FIELDS,
    TrainConfig,
    add_config_options,
    check_threads,
    dump_yaml,
    from_dict,
    given_fields,
    load_yaml,
)
from batchscale.engine import rundir
from batchscale.engine.data import MEAN, STD, EpochLoader, Split
from batchscale.engine.models import build_model
from batchscale.engine.optim import build_optimizer
from batchscale.engine.setup import build
from batchscale.engine.step import compile_model, prepare_input, train_step
from batchscale.engine.train import Position, StopFlag, finish_epoch, train_epoch
from batchscale.errors import UserError
from batchscale.machine import load

# Settings of the targets; any training option given on the command line wins.
BENCH_DEFAULTS = dict(dataset="sample", width=16, batch_size=128, base_batch_size=128, lr=0.1,
                      warmup_epochs=0, schedule="constant", device="auto")


# ---------------------------------------------------------------------- the plain reference
def augment_one(image: np.ndarray, dy: int, dx: int, flip: bool, pad: int = 4) -> np.ndarray:
    """Pad one uint8 (H, W, C) image with zeros, crop at (dy, dx), flip left-right if asked."""
    height, width, _ = image.shape
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    out = padded[dy:dy + height, dx:dx + width]
    return out[:, ::-1] if flip else out


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, C) → normalized float (C, H, W), as ToTensor + Normalize would."""
    mean = np.asarray(MEAN, dtype=np.float32) * 255
    std = np.asarray(STD, dtype=np.float32) * 255
    return torch.from_numpy(((image.astype(np.float32) - mean) / std).transpose(2, 0, 1).copy())


class PerImageDataset(Dataset):
    """CIFAR-style per-image augmentation on uint8 arrays, one sample at a time."""

    def __init__(self, split: Split, pad: int = 4, seed: int = 0):
        self.images, self.labels = split.images.cpu().numpy(), split.labels.cpu().numpy()
        self.pad, self.rng = pad, np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        dy, dx = self.rng.integers(0, 2 * self.pad + 1, size=2)
        image = augment_one(self.images[index], dy, dx, self.rng.random() < 0.5, self.pad)
        return to_tensor(image), int(self.labels[index])


def reference_loader(split: Split, batch_size: int, workers: int = 0, seed: int = 0):
    return DataLoader(PerImageDataset(split, seed=seed), batch_size=batch_size, shuffle=True,
                      drop_last=True, num_workers=workers, persistent_workers=workers > 0,
                      generator=torch.Generator().manual_seed(seed))


class Reference:
    """The same model and optimizer as the engine's, trained by the textbook loop (NCHW)."""

    def __init__(self, cfg: TrainConfig, device: torch.device):
        torch.manual_seed(cfg.seed)
        self.device = device
        self.model = build_model(cfg.model, cfg.width, 10, cfg.bn_momentum).to(device)
        self.optimizer = build_optimizer(cfg, self.model)

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.model(images), labels)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        images, labels = images.to(self.device), labels.to(self.device)
        self.optimizer.zero_grad()
        loss = self.loss(images, labels)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def epoch(self, batches, steps: int) -> float:
        """Images/s of `steps` steps drawn from the iterator `batches`, data loading included."""
        start = time.perf_counter()
        for _ in range(steps):
            images, labels = next(batches)
            self.step(images, labels)
        return steps * len(labels) / (time.perf_counter() - start)


def endless(loader):
    while True:
        yield from loader


# ---------------------------------------------------------------------- engine vs reference
def bench_train(cfg: TrainConfig, rounds: int = 4, ref_workers: int = 0,
                run_dir: Path | None = None) -> dict:
    """Alternate one engine epoch (a real run directory) and one reference epoch, `rounds` times."""

    cfg = from_dict({**cfg.to_dict(), "epochs": rounds})
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(run_dir or Path(scratch) / "run")
        setup = build(cfg, progress=False)
        compile_model(setup)
        rundir.create(run_dir, overwrite=True)
        dump_yaml(cfg, run_dir / rundir.CONFIG)
        reference = Reference(cfg, setup.device)
        batches = endless(reference_loader(setup.train.to("cpu"), cfg.batch_size, ref_workers,
                                           cfg.seed))
        position, steps, ref_rates = Position(), len(setup.train) // cfg.batch_size, []
        with StopFlag() as stop:
            for _ in range(rounds):
                started = time.perf_counter()
                if train_epoch(setup, position, stop, True, None) is not None:
                    raise RuntimeError("the engine's benchmark run diverged or was stopped")
                finish_epoch(setup, run_dir, position, started, True)
                ref_rates.append(reference.epoch(batches, steps))
        engine_rates = [row["images_per_sec"] for row in rundir.read_metrics(run_dir)]
    engine, ref = statistics.median(engine_rates[1:]), statistics.median(ref_rates[1:])
    return {
        "engine_images_per_sec": round(engine, 1),
        "reference_images_per_sec": round(ref, 1),
        "engine_over_reference": round(engine / ref, 3),
        "engine_per_epoch": engine_rates, "reference_per_epoch": [round(r, 1) for r in ref_rates],
        "first_round_is_warmup": True, "steps_per_epoch": steps,
        "reference_loader_workers": ref_workers,
        "engine_settings": {"channels_last": setup.channels_last, "compile": cfg.compile,
                            "amp": cfg.amp, "bn_group": cfg.bn_group, "bn_impl": cfg.bn_impl},
        **settings(cfg, setup.device),
    }


# ---------------------------------------------------------------------- data pipeline alone
def bench_data(split: Split, batch_size: int, rounds: int = 5, device="cpu",
               ref_workers: int = 0) -> dict:
    """Augmented batches/s: the engine's on-device batch crop/flip vs the per-image DataLoader."""
    split = split.to(device)
    batches = endless(reference_loader(split.to("cpu"), batch_size, ref_workers))
    steps = len(split) // batch_size
    engine_rates, ref_rates = [], []
    for epoch in range(rounds + 1):  # round 0 warms up
        start = time.perf_counter()
        loader = EpochLoader(split, batch_size, seed=0, epoch=epoch)
        for step in range(steps):
            images, labels = loader.batch(step)
        synchronize(images.device)
        engine = steps / (time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(steps):
            images, labels = next(batches)
            images, labels = images.to(device), labels.to(device)
        synchronize(images.device)
        ref = steps / (time.perf_counter() - start)
        if epoch:
            engine_rates.append(engine), ref_rates.append(ref)
    engine, ref = statistics.median(engine_rates), statistics.median(ref_rates)
    return {"engine_batches_per_sec": round(engine, 2), "reference_batches_per_sec": round(ref, 2),
            "engine_over_reference": round(engine / ref, 2), "batch_size": batch_size,
            "batches_per_round": steps, "rounds": rounds, "reference_loader_workers": ref_workers,
            "device": str(device), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "machine": platform.machine(), "load": load()}


# ---------------------------------------------------------------------- ghost vs loop
def bench_ghost(cfg: TrainConfig, steps: int = 4) -> dict:
    """Step time of per-worker BN `ghost` vs `loop` on the same batches, step by step in turn."""

    setups = {}
    for impl in ("ghost", "loop"):
        setups[impl] = build(from_dict({**cfg.to_dict(), "bn_impl": impl}), progress=False)
        compile_model(setups[impl])
    loader = EpochLoader(setups["ghost"].train, cfg.batch_size, seed=0, epoch=0)
    times = {impl: [] for impl in setups}
    for step in range(steps + 1):  # step 0 warms up
        images, labels = loader.batch(step % len(loader))
        order = list(setups.items())
        for impl, setup in order if step % 2 else order[::-1]:  # who goes first alternates
            synchronize(setup.device)
            start = time.perf_counter()
            loss, _ = train_step(setup, prepare_input(setup, images), labels)
            loss.item()
            if step:
                times[impl].append(time.perf_counter() - start)
    rates = {impl: cfg.batch_size / statistics.median(t) for impl, t in times.items()}
    return {"ghost_images_per_sec": round(rates["ghost"], 1),
            "loop_images_per_sec": round(rates["loop"], 1),
            "ghost_over_loop": round(rates["ghost"] / rates["loop"], 3), "steps": steps,
            **settings(cfg, setups["ghost"].device)}


# ---------------------------------------------------------------------- helpers
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def settings(cfg: TrainConfig, device: torch.device) -> dict:
    return {"model": cfg.model, "width": cfg.width, "batch_size": cfg.batch_size,
            "bn_group": cfg.bn_group, "optimizer": cfg.optimizer, "device": str(device),
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "machine": platform.machine(), "load": load()}


# ---------------------------------------------------------------------- command line
def add_bench_parser(commands) -> None:

    parser = commands.add_parser("bench", help="images/s of the engine vs a plain PyTorch loop")
    parser.add_argument("--what", choices=("train", "data", "ghost", "all"), default="train",
                        help="train: engine vs reference step; data: the augmented-batch "
                             "pipeline alone; ghost: per-worker BN ghost vs loop")
    parser.add_argument("--rounds", type=int, default=4,
                        help="epochs (train, data) or steps (ghost) per side; train and ghost "
                             "drop the first as warm-up")
    parser.add_argument("--ref-workers", type=int, default=0,
                        help="DataLoader workers of the reference (0: in the training process)")
    parser.add_argument("--ghost-batch-size", type=int, default=1024,
                        help="batch size of the ghost-vs-loop benchmark")
    parser.add_argument("--ghost-group", type=int, default=32,
                        help="samples per BN group of the ghost-vs-loop benchmark")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--config", help="YAML file of config fields")
    add_config_options(parser)


def bench_command(args: argparse.Namespace) -> int:

    if args.rounds < 2:
        raise UserError("--rounds must be at least 2 (the first is warm-up)")
    if not 0 <= args.ref_workers <= 4 * (os.cpu_count() or 1):
        raise UserError(f"--ref-workers must be 0 (in the training process) to 4 x the cores of "
                        f"this machine, got {args.ref_workers}")
    for name in ("ghost_batch_size", "ghost_group"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got "
                            f"{getattr(args, name)}")
    check_json_path(args.json)
    base = load_yaml(Path(args.config)).to_dict() if args.config else BENCH_DEFAULTS
    cfg = from_dict({**base, **given_fields(args)})
    check_threads(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    results = {}
    if args.what in ("train", "all"):
        results["train"] = bench_train(cfg, args.rounds, args.ref_workers)
    if args.what in ("data", "all"):
        setup = build(cfg, progress=False)
        results["data"] = bench_data(setup.train, cfg.batch_size, args.rounds, setup.device,
                                     args.ref_workers)
    if args.what in ("ghost", "all"):
        size = args.ghost_batch_size
        ghost = from_dict({**cfg.to_dict(), "batch_size": size, "base_batch_size": size,
                           "bn_group": args.ghost_group,
                           "train_subset": cfg.train_subset if cfg.train_subset >= size else 0})
        results["ghost"] = bench_ghost(ghost, args.rounds)
    emit(results, args.json)
    return 0


def check_json_path(path: str | None) -> None:
    """Refuse a --json path that cannot be written, before the benchmark runs."""
    if not path:
        return
    target = Path(path)
    folder = target.parent
    if target.is_dir():
        raise UserError(f"--json {path} is a folder; give a file name")
    if not folder.is_dir():
        raise UserError(f"--json {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UserError(f"--json {path}: the folder {folder} is not writable")


def save_json(result: dict, path: str | None) -> None:
    """Write a benchmark's result to `path` (its --json option), if one was given, with where it
    came from: the command, the commit, the machine and its load when the result was in."""
    if path:
        program = sys.argv[0] if not Path(sys.argv[0]).is_absolute() else Path(sys.argv[0]).name
        provenance = {"command": " ".join([program, *sys.argv[1:]]),
                      "git_commit": rundir.git_commit(), "date": time.strftime("%Y-%m-%d %H:%M"),
                      "machine": platform.processor() or platform.machine(),
                      "cpu_count": os.cpu_count(), "torch": torch.__version__,
                      "load_1m_at_end": load()}
        record = {**result, "provenance": provenance}
        files.write_text(Path(path), json.dumps(record, indent=2) + "\n")


def emit(result: dict, path: str | None) -> None:
    """Print a benchmark's result as JSON, and write it to `path` if one was given."""
    print(json.dumps(result, indent=2))
    save_json(result, path)


assert set(BENCH_DEFAULTS) <= set(FIELDS)

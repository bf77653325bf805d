"""The training loop: data → model → optimizer + lr plan → run directory, with exact resume.

    batchscale train --dataset sample --width 16 --epochs 5 --batch-size 128 --out runs/a
    batchscale train --out runs/a --resume          # continue after a kill or Ctrl-C

Metrics are accumulated on the device and read once per `log_every` steps and once per epoch.
A non-finite loss ends the run with status `diverged` (exit code 0: a sweep goes on), reason
`nonfinite`; a run that stops learning (batchscale/engine/collapse.py) is `diverged` with reason
`collapse`, ended at that epoch with `--stop-on-collapse`, otherwise trained to the end.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
from pathlib import Path

from tqdm import tqdm

from batchscale.config import TrainConfig, dump_yaml
from batchscale.engine import (
    checkpoint,
    collapse,
    distributed,
    graphs,
    launch,
    localsgd,
    noise_hook,
    rundir,
    tensorboard,
)
from batchscale.engine.data import EpochLoader
from batchscale.engine.lock import FolderLock
from batchscale.engine.optim import set_lr
from batchscale.engine.resume import Position, checkpoint_state, restore
from batchscale.engine.setup import Setup, build
from batchscale.engine.step import (
    Meter,
    compile_model,
    evaluate,
    prepare_input,
    run_step,
    use_batch,
)
from batchscale.engine.summary import class_count, summarize


# ---------------------------------------------------------------------- stopping on a signal
class StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step."""

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


# ---------------------------------------------------------------------- the first hour
class RunScale:
    """A large run on a CPU (width >= 32, >= 50 epochs: hours to days) says so: its steps when
    it starts, and after the first ESTIMATE_AFTER steps how long its steps will take, with the
    options that make a first look take minutes."""

    MIN_WIDTH, MIN_EPOCHS, ESTIMATE_AFTER = 32, 50, 20
    SMALLER = "--width 16 --epochs 20"

    @classmethod
    def wanted(cls, setup: Setup, quiet: bool) -> bool:
        cfg = setup.cfg
        return (not quiet and setup.rank == 0 and setup.device.type == "cpu"
                and cfg.width >= cls.MIN_WIDTH and cfg.epochs >= cls.MIN_EPOCHS)

    def __init__(self, setup: Setup, position: Position):
        cfg, steps_per_epoch = setup.cfg, setup.plan.steps_per_epoch
        self.total = steps_per_epoch * cfg.epochs
        self.first_step: int | None = None
        self.started = 0.0
        self.reported = False
        print(f"this run is {self.total:,} steps ({cfg.epochs} epochs x {steps_per_epoch} steps "
              f"of {cfg.batch_size} images) of a width-{cfg.width} {cfg.model} on the CPU: "
              f"hours to days; a first look in minutes: {self.SMALLER}", flush=True)

    def step_done(self, global_step: int) -> None:
        """Called after each step; times the steps after the first (which pays the warm-up)."""
        if self.reported:
            return
        if self.first_step is None:
            self.first_step, self.started = global_step, time.perf_counter()
            return
        timed = global_step - self.first_step
        if timed < self.ESTIMATE_AFTER:
            return
        per_step = (time.perf_counter() - self.started) / timed
        left_h = per_step * (self.total - global_step - 1) / 3600
        print(f"estimate after {timed} steps: {per_step:.3g} s a step, about {left_h:.1f} h of "
              f"training steps left (plus evaluation); smaller: {self.SMALLER}", flush=True)
        self.reported = True


# ---------------------------------------------------------------------- the run
def has_collapsed(setup: Setup, run_dir: Path) -> bool:
    """Whether the run's metrics so far meet the collapse rule (rank 0 reads, all agree)."""
    return distributed.from_rank0(lambda: collapse.collapsed_at(
        rundir.read_metrics(run_dir), setup.cfg, class_count(setup)) is not None)


PAUSE_ENV = "BATCHSCALE_PAUSE_AFTER_EPOCH"  # tests: a process that is surely alive to be killed
PAUSE_LIMIT_S = 300.0


def pause_for_test(epoch: int, stop: StopFlag) -> None:
    """With BATCHSCALE_PAUSE_AFTER_EPOCH=N, wait after epoch N's checkpoint until a signal
    arrives (at most PAUSE_LIMIT_S), so a test's kill always finds the run at that point."""
    if os.environ.get(PAUSE_ENV) != str(epoch):
        return
    deadline = time.monotonic() + PAUSE_LIMIT_S
    while not stop.signum and time.monotonic() < deadline:
        time.sleep(0.01)


def train(cfg: TrainConfig, out: Path, *, resume: bool = False, overwrite: bool = False,
          quiet: bool = False, stop_at_step: int | None = None,
          extend_epochs: bool = False) -> dict:
    """Train (or resume) the run in `out`; return its summary. `stop_at_step` is for tests:
    it behaves as a SIGTERM arriving after that global step. With `cfg.workers` this starts
    torchrun; under torchrun every worker runs this, and only rank 0 touches `out`. The run
    directory is locked for as long as this runs; a resumed run trains to a different number of
    epochs only with `extend_epochs` (see rundir.extend_epochs)."""
    run_dir = Path(out)
    tensorboard.check(cfg)
    with run_dir_lock(run_dir):
        if resume and speaks_for_run_dir():
            rundir.extend_epochs(run_dir, cfg, extend_epochs)
        if cfg.workers and not distributed.launched():
            return launch.launch(cfg, run_dir, resume=resume, overwrite=overwrite,
                                      quiet=quiet)
        with distributed.process_group(cfg) as world:
            return run(cfg, run_dir, world, resume=resume, overwrite=overwrite, quiet=quiet,
                       stop_at_step=stop_at_step)


def speaks_for_run_dir() -> bool:
    """Whether this process owns the run directory: a plain run, the `--workers` launcher, or
    rank 0 under an outer torchrun (the launcher's own workers leave it to the launcher)."""
    if os.environ.get(distributed.LAUNCHER_ENV):
        return False
    return not distributed.launched() or os.environ.get("RANK") == "0"


def run_dir_lock(run_dir: Path):
    """The run directory's lock, held by the process that owns it (see speaks_for_run_dir)."""
    if not speaks_for_run_dir():
        return contextlib.nullcontext()
    return FolderLock(run_dir, "batchscale train")


def run(cfg: TrainConfig, run_dir: Path, world: distributed.World, *, resume: bool,
        overwrite: bool, quiet: bool, stop_at_step: int | None) -> dict:
    """The run of one process; `world` says which worker it is."""
    main = world.rank == 0

    def check_run_dir() -> bool:  # after a torchrun restart, go on from the checkpoint
        if distributed.restarted_run(world, run_dir):
            return True
        rundir.check(run_dir, resume, overwrite)
        return resume

    resume = distributed.from_rank0(check_run_dir)
    if main and not quiet:
        print(f"loading data: {cfg.dataset} ...", flush=True)
    # user errors in the data surface before any write
    setup = distributed.local_rank0_first(
        lambda: build(cfg, not quiet and main, world.size, world.rank))

    def create_run_dir() -> None:
        rundir.create(run_dir, overwrite)
        dump_yaml(cfg, run_dir / rundir.CONFIG)

    if not resume:
        distributed.from_rank0(create_run_dir)
    position = restore(setup, run_dir) if resume else Position()
    setup.train_model = distributed.wrap(setup.model, setup.device, cfg.sync_bn)
    setup.noise = noise_hook.attach(setup, position)  # before compile: it hooks the DDP module
    compile_model(setup)
    setup.board = tensorboard.Board(cfg.tensorboard and main, run_dir, resumed_at=(
        position.epoch * setup.plan.steps_per_epoch + position.step))
    setup.local = localsgd.attach(setup, position)  # after the DDP wrap
    setup.graph = graphs.attach(setup, quiet)  # the step from a CUDA graph where supported
    notice = RunScale(setup, position) if RunScale.wanted(setup, quiet) else None
    try:
        with StopFlag() as stop:
            status, bad_step = epochs(setup, run_dir, position, stop, quiet, stop_at_step,
                                      notice)
    except Exception as err:
        if main:
            summary = summarize(setup, "failed", position, rundir.read_metrics(run_dir),
                                error=f"{type(err).__name__}: {err}")
            try:
                rundir.write_json(run_dir / rundir.SUMMARY, summary)
            except OSError:  # the disk that failed the run fails this too: report the first
                pass
        raise
    finally:
        setup.board.close()
    summary = {"status": status, "rank": world.rank}  # the other workers write nothing
    if main:
        summary = summarize(setup, status, position, rundir.read_metrics(run_dir), bad_step)
        if world.size > 1:
            summary["environment"]["torchrun_restarts"] = world.restarts
        rundir.write_json(run_dir / rundir.SUMMARY, summary)
    if status == "interrupted":
        summary["signal"] = stop.signum or signal.SIGTERM
    return summary


def epochs(setup: Setup, run_dir: Path, position: Position, stop: StopFlag, quiet: bool,
           stop_at_step: int | None, notice: RunScale | None = None) -> tuple[str, int | None]:
    """Run the remaining epochs; return (status, diverged_at_step). With cfg.stop_on_collapse
    a run whose metrics meet the collapse rule ends `diverged` (also when resumed after it)."""
    cfg = setup.cfg
    if cfg.stop_on_collapse and position.epoch and has_collapsed(setup, run_dir):
        return "diverged", None
    while position.epoch < cfg.epochs:
        started = time.perf_counter()
        outcome = train_epoch(setup, position, stop, quiet, stop_at_step, notice)
        if outcome is None or outcome == "interrupted":
            localsgd.keep_state(setup, position)  # every worker: rank 0 gathers
        if outcome is not None:
            position.wall_s += time.perf_counter() - started
        if outcome == "interrupted":
            if setup.rank == 0:
                checkpoint.save(checkpoint_state(setup, position), run_dir / checkpoint.NAME)
            return "interrupted", None
        if outcome is not None:
            return "diverged", outcome
        finish_epoch(setup, run_dir, position, started, quiet)
        pause_for_test(position.epoch, stop)
        if cfg.stop_on_collapse and has_collapsed(setup, run_dir):
            return "diverged", None
    return "completed", None


def train_epoch(setup: Setup, position: Position, stop: StopFlag, quiet: bool,
                stop_at_step: int | None, notice: RunScale | None = None):
    """Steps of one epoch from `position`; None when done, 'interrupted', or a diverged step."""
    cfg, plan = setup.cfg, setup.plan
    batch = plan.batch_in(position.epoch, cfg.batch_size)  # batch growth changes it
    if plan.epoch_batches:
        use_batch(setup, batch)
    loader = EpochLoader(setup.train, batch, cfg.seed, position.epoch,
                         rank=setup.rank, world_size=setup.world_size)
    meter = (Meter.from_state(position.meter_state, setup.device) if position.meter_state
             else Meter.zeros(setup.device))
    position.meter_state = None
    bar = tqdm(total=len(loader), initial=position.step, leave=False, dynamic_ncols=True,
               desc=f"epoch {position.epoch + 1}/{cfg.epochs}",
               disable=quiet or setup.rank != 0 or not sys.stderr.isatty())
    tick, first_step = time.perf_counter(), position.step
    for step in range(position.step, len(loader)):
        global_step = plan.epoch_start(position.epoch) + step
        images, labels = loader.batch(step)
        if setup.local is not None:  # local SGD: replicas, or DDP without its all-reduce
            set_lr(setup.optimizer, plan.lr_at(global_step))
            loss, logits = localsgd.train_step(setup, prepare_input(setup, images), labels,
                                               global_step)
            meter.add(loss, logits, labels, global_step)
        else:
            run_step(setup, meter, prepare_input(setup, images), labels, global_step,
                     plan.lr_at(global_step))
        if notice is not None:
            notice.step_done(global_step)
        position.step = step + 1
        stopping = bool(stop.signum) or (stop_at_step is not None
                                         and global_step + 1 >= stop_at_step)
        if position.step % cfg.log_every == 0 or position.step == len(loader):
            bar.update(position.step - bar.n)
            # every worker gets the same answer, so all stop together (no one waits forever)
            bad_step, stopping = distributed.agree(meter.first_bad_step, stopping)
            if bad_step >= 0:
                bar.close()
                return bad_step
            running_loss = meter.loss_sum.item() / meter.count
            bar.set_postfix(loss=f"{running_loss:.3f}")
            tensorboard.Board.of(setup).step(global_step + 1, running_loss, plan.lr_at(global_step))
        elif setup.world_size > 1:
            stopping = False  # workers stop only where they agree: at the next update
        if stopping:
            bar.close()
            distributed.reduce_meter(meter)
            position.meter_state = meter.state()
            return "interrupted"
    bar.close()
    distributed.reduce_meter(meter)  # all workers' sums: rank 0 reports the global numbers
    position.meter_state = meter.state()
    position.meter_state["images_per_sec"] = (
        (len(loader) - first_step) * batch / max(time.perf_counter() - tick, 1e-9))
    return None


def finish_epoch(setup: Setup, run_dir: Path, position: Position, started: float,
                 quiet: bool) -> None:
    """Evaluate, append the epoch's metrics row, and checkpoint (rank 0 only)."""
    cfg, meter = setup.cfg, position.meter_state
    if setup.rank != 0:
        position.epoch, position.step, position.meter_state = position.epoch + 1, 0, None
        return
    test_loss, test_acc = evaluate(setup, setup.test)
    position.wall_s += time.perf_counter() - started
    end_step = setup.plan.epoch_start(position.epoch + 1)
    row = {
        "epoch": position.epoch + 1,
        "step": end_step,
        "lr": setup.plan.lr_at(end_step - 1),
        "train_loss": meter["loss_sum"].item() / meter["count"],
        "train_acc": meter["correct"].item() / meter["count"],
        "test_loss": test_loss,
        "test_acc": test_acc,
        "images_per_sec": round(meter["images_per_sec"], 1),
        "wall_s": round(position.wall_s, 3),
    }
    if not math.isfinite(row["train_loss"]):
        raise RuntimeError("non-finite training loss escaped the divergence check")
    if setup.noise is not None:
        row.update(setup.noise.row())
    row.update(localsgd.epoch_row(setup, position.epoch))
    rundir.append_metrics(run_dir, row)
    tensorboard.Board.of(setup).epoch(row)
    position.epoch, position.step, position.meter_state = position.epoch + 1, 0, None
    position.best_test_acc = max(position.best_test_acc, test_acc)
    checkpoint.save(checkpoint_state(setup, position), run_dir / checkpoint.NAME)
    if not quiet:
        print(f"epoch {row['epoch']:>3}/{cfg.epochs}  lr {row['lr']:.4g}  "
              f"train loss {row['train_loss']:.3f} acc {row['train_acc']:.3f}  "
              f"test loss {test_loss:.3f} acc {test_acc:.3f}  "
              f"{row['images_per_sec']:.0f} img/s  {row['wall_s']:.1f}s", flush=True)

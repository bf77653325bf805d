"""Real data-parallel workers on PyTorch's own engine: torchrun's environment, the process group,
DDP wrapping, rank-0 gating, and the few collectives the training loop needs.

    torchrun --nproc-per-node 2 -m batchscale train --batch-size 128 --out runs/ddp
    batchscale train --workers 2 --batch-size 128 --out runs/ddp    # starts torchrun for you
    # two machines; run on each, HOST = an address of the first one:
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \
        --rdzv-id run1 -m batchscale train --batch-size 4096 --out runs/big

`--batch-size` stays the global batch; each of the W workers takes its own contiguous B/W share
of every global batch (data.EpochLoader), gloo on CPU, NCCL on CUDA. Batch norm is local to each
worker (the study's scheme: groups of bn_group inside a worker's B/W, or its whole B/W when
bn_group is 0) unless `--sync-bn`. Running statistics stay each worker's own (DDP's per-forward
buffer broadcast is off); rank 0's are the ones evaluated and checkpointed. Only rank 0 reads or
writes the run directory; it sends what it read (the checkpoint) to the others.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import traceback
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from batchscale.engine import rundir
from batchscale.errors import UserError

LAUNCHER_ENV = "BATCHSCALE_LAUNCHER"  # set by `--workers`: the launcher prints the closing line
FILE_STORE_ENV = "BATCHSCALE_FILE_STORE"  # set by `--workers`: the workers meet in this file
_joined = False  # whether this process joined a group of several workers (see `leave`)


# ---------------------------------------------------------------------- the environment
@dataclass(frozen=True)
class World:
    """Where this process stands: a world of one without torchrun."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    restarts: int = 0  # times torchrun restarted the group (--max-restarts)


def launched() -> bool:
    """Whether a launcher (torchrun, or the same variables set by hand) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def world_from_env() -> World:
    if not launched():
        return World()
    env = os.environ
    return World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                 int(env.get("TORCHELASTIC_RESTART_COUNT", 0)))


def active() -> bool:
    """Whether a process group of more than one worker is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def check_world(cfg, size: int) -> None:
    """The rules between the config and the number of workers; a UserError on the first broken."""
    if size <= 1:
        return
    if cfg.workers and cfg.workers != size:
        raise UserError(f"workers is {cfg.workers} but the launcher started {size} processes")
    if cfg.batch_size % size:
        raise UserError(f"batch_size {cfg.batch_size} is not a multiple of the {size} workers")
    local = cfg.batch_size // size
    if cfg.sync_bn:
        return
    if cfg.bn_group > local:
        raise UserError(f"bn_group {cfg.bn_group} exceeds the per-worker batch {local} "
                        f"(batch_size {cfg.batch_size} / {size} workers): batch norm is local "
                        "to each worker; --sync-bn normalizes over the global batch")
    if cfg.bn_group and local % cfg.bn_group:
        raise UserError(f"the per-worker batch {local} is not a multiple of bn_group "
                        f"{cfg.bn_group}")


def _uses_cuda(cfg) -> bool:
    return cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())


@contextlib.contextmanager
def process_group(cfg):
    """Join the workers torchrun started (gloo on CPU, NCCL on CUDA); yield this process's World.

    A peer that does not arrive within `dist_timeout` seconds ends the run with a UserError."""
    world = world_from_env()
    if world.size <= 1:
        if cfg.workers > 1:
            raise UserError(f"workers is {cfg.workers} but the launcher started 1 process")
        if cfg.local_steps > 1 and not cfg.local_workers:
            raise UserError(f"local_steps {cfg.local_steps} needs several workers: real ones "
                            "(--workers W, or torchrun) or simulated ones (--local-workers W)")
        yield world
        return
    check_world(cfg, world.size)
    cuda = _uses_cuda(cfg)
    if cuda:
        check_devices(cfg, int(os.environ.get("LOCAL_WORLD_SIZE", world.size)))
        torch.cuda.set_device(world.local_rank)
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    timeout = timedelta(seconds=cfg.dist_timeout)
    try:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout,
                                store=_attempt_store(world, timeout),
                                rank=world.rank, world_size=world.size)
        dist.barrier()  # every peer is here, or the timeout ends the wait
    except (RuntimeError, TimeoutError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"rank {world.rank}: the {world.size} workers did not all join at "
                        f"{where} within {cfg.dist_timeout:g} s ({reason})") from None
    global _joined
    _joined = True
    try:
        yield world
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------- leaving
def run_main(main) -> None:
    """`sys.exit(main())`, except that a process that joined a group of workers leaves through
    `leave`: an uncaught exception there prints its traceback and ends the process with 1."""
    try:
        code = main()
    except BaseException:
        if not _joined:
            raise
        traceback.print_exc()
        code = 1
    leave(code)


def leave(code) -> None:
    """End the process with `code`. One that joined a group of workers runs its exit functions
    and flushes its output while the interpreter is whole, then ends with os._exit: it never
    finalizes the interpreter. gloo's worker threads outlive destroy_process_group (DDP's
    reducer still holds the group), and one that drops the last reference to a tensor whose
    Python object C++ owns (the input of a collective that just ended) takes the GIL to release
    it. If the interpreter is finalizing by then, Python ends that thread with pthread_exit,
    whose unwinding through the tensor's noexcept destructor calls std::terminate: the worker
    dies of SIGABRT ("terminate called without an active exception", exit code -6) after its
    run had finished (tests/test_distributed.py forces that race; docs/distributed.md, Leaving)."""
    if not _joined:
        sys.exit(code)
    code = code if isinstance(code, int) else (0 if code is None else 1)
    atexit._run_exitfuncs()  # tempfile, logging, TensorBoard: with the interpreter whole
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _attempt_store(world: World, timeout: timedelta):
    """torchrun's own store, its keys kept apart per restart; None: torch's default (env://).

    Since torch 2.4 torchrun hands the workers its rendezvous store, where a restarted group
    can read the addresses of the group that died (pytorch/pytorch#135712). On one machine
    the restart count names the attempt on every worker, so a prefix keeps attempts apart;
    across machines it does not, and TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 is the cure."""
    env = os.environ
    if env.get(FILE_STORE_ENV):  # batchscale's own one-machine launcher: nothing listens
        return dist.FileStore(env[FILE_STORE_ENV], world.size)
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or env.get("GROUP_WORLD_SIZE") != "1":
        return None
    store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), world.size,
                          is_master=False, timeout=timeout)
    return dist.PrefixStore(f"batchscale/attempt_{world.restarts}", store)


# ---------------------------------------------------------------------- rank-0 gating
def from_rank0(fn):
    """fn() on rank 0 only; every rank gets its result, or raises the UserError it raised."""
    if not active():
        return fn()
    box = [None, None]
    if dist.get_rank() == 0:
        try:
            box[0] = fn()
        except UserError as err:
            box[1] = str(err)
    dist.broadcast_object_list(box, src=0)
    if box[1] is not None:
        raise UserError(box[1])
    return box[0]


def local_rank0_first(fn):
    """fn() on every rank, each machine's local rank 0 first (it fills the data cache the others
    then read); a UserError on any rank is raised on every rank."""
    if not active():
        return fn()
    first = int(os.environ.get("LOCAL_RANK", 0)) == 0
    result, error = None, None
    for turn in (True, False):
        if first == turn:
            try:
                result = fn()
            except UserError as err:
                error = str(err)
        if turn:
            dist.barrier()
    errors = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    message = next((e for e in errors if e is not None), None)
    if message is not None:
        raise UserError(message)
    return result


def restarted_run(world: World, out: Path) -> bool:
    """Whether torchrun restarted this group and the run directory holds the run to go on with."""
    return world.restarts > 0 and (Path(out) / rundir.CONFIG).exists()


# ---------------------------------------------------------------------- the model
class SyncBatchNorm2d(nn.BatchNorm2d):
    """Batch norm over the global batch of all workers, on any device (torch's own SyncBatchNorm
    is GPU-only): per-channel sums are all-reduced with autograd, so the output and the gradients
    equal plain batch norm on the workers' batches put together. Sums are taken around the
    running mean (the same on every worker) to keep float32 cancellation small."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not active():
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        n, c, h, w = x.shape
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        shift = self.running_mean.detach().clone().to(xf.dtype)
        centred = xf - shift.view(1, c, 1, 1)
        total = all_reduce(torch.cat([centred.sum((0, 2, 3)), centred.square().sum((0, 2, 3))]))
        count = n * h * w * dist.get_world_size()
        offset = total[:c] / count
        mean, var = shift + offset, total[c:] / count - offset.square()
        y = (xf - mean.view(1, c, 1, 1)) * torch.rsqrt(var.view(1, c, 1, 1) + self.eps)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(m * mean.to(self.running_mean.dtype))
                unbiased = var * count / max(count - 1, 1)
                self.running_var.mul_(1 - m).add_(m * unbiased.to(self.running_var.dtype))
                self.num_batches_tracked.add_(1)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d under `module` by SyncBatchNorm2d sharing its parameters and
    buffers (the optimizer and the state-dict keys stay as they were)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SyncBatchNorm2d):
            synced = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats)
            synced._parameters, synced._buffers = child._parameters, child._buffers
            synced.train(child.training)
            setattr(module, name, synced)
        else:
            convert_sync_batchnorm(child)
    return module


def wrap(model: nn.Module, device: torch.device, sync_bn: bool) -> nn.Module:
    """The module the training step calls: `model` itself in a world of one, else its DDP wrapper
    (gradients averaged over workers, no buffer broadcast: running statistics stay local)."""
    if not active():
        return model
    if sync_bn:
        convert_sync_batchnorm(model)
    from torch.nn.parallel import DistributedDataParallel

    ids = [torch.cuda.current_device()] if device.type == "cuda" else None
    with warnings.catch_warnings():  # newer torch renames it; the old name keeps its meaning
        warnings.filterwarnings("ignore", ".*broadcast_buffers", FutureWarning)
        return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


# ---------------------------------------------------------------------- collectives of the loop
def agree(first_bad_step: torch.Tensor, stopping: bool) -> tuple[int, bool]:
    """(the first non-finite step on any worker, or -1; whether any worker is stopping): the same
    answer on every worker, so that all of them stop together."""
    if not active():
        return int(first_bad_step.item()), stopping
    never = torch.iinfo(torch.int64).max
    bad = torch.where(first_bad_step >= 0, first_bad_step, torch.full_like(first_bad_step, never))
    flags = torch.stack([-bad, torch.full_like(bad, int(stopping))])
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    worst, stop = flags.tolist()
    return (-1 if -worst == never else -worst), bool(stop)


def gather_to_rank0(obj) -> list | None:
    """Every worker's `obj` (picklable, on the CPU), in rank order, on rank 0; None elsewhere.
    Local SGD's checkpoint: each worker's own model and optimizer state."""
    if not active():
        return [obj]
    found = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, found, dst=0)
    return found


def reduce_meter(meter) -> None:
    """Turn one worker's sums of loss and correct predictions into the sums over all workers."""
    if not active():
        return
    count = torch.tensor(float(meter.count), dtype=torch.float64, device=meter.loss_sum.device)
    sums = torch.stack([meter.loss_sum, meter.correct.double(), count])
    dist.all_reduce(sums)  # counts too: after a resume, rank 0 alone holds the earlier sums
    loss_sum, correct, count = sums.tolist()
    meter.loss_sum.fill_(loss_sum)
    meter.correct.fill_(round(correct))
    meter.count = round(count)


def check_devices(cfg, workers: int) -> None:
    """With CUDA, one GPU per worker: fewer visible GPUs than workers is a user error."""
    if not _uses_cuda(cfg):
        return
    visible = torch.cuda.device_count()
    if visible < workers:
        raise UserError(f"{workers} workers need {workers} GPUs, torch sees {visible}; run them "
                        "on the CPU (--device cpu), or simulate the per-worker batch norm in "
                        f"one process (--workers 0 --bn-group {cfg.batch_size // workers})")

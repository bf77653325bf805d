"""Real workers: two gloo processes take the same step as the ghost-BN simulation
(float64), synchronized BN the same step as whole-batch BN, workers agree on divergence and on
stopping, a killed worker is restarted by torchrun and the run ends with the same metrics, two
"nodes" on 127.0.0.1 train together, and a peer that never arrives ends in one clear line.

Every process uses 1 thread, a width-4 model and a 256-image set, so the file takes about a
minute on two cores."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from batchscale.config import config_flags
from batchscale.engine import distributed, launch, noise, noise_hook, rundir
from batchscale.engine.data import EpochLoader, balanced_subset, load_dataset
from batchscale.engine.optim import set_lr
from batchscale.engine.setup import build
from batchscale.engine.step import forward_loss, train_step
from batchscale.engine.train import PAUSE_ENV, Position, train
from batchscale.errors import UserError

from conftest import PATIENCE_S, ROOT, tiny_config

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch without distributed")
TIMING = ("images_per_sec", "wall_s")
# Loopback for gloo's own sockets: a machine whose hostname resolves to an address its peers
# cannot reach (seen once in CI: a worker aborted on SIGABRT) still runs these tests.
LOOPBACK = {"GLOO_SOCKET_IFNAME": "lo"} if Path("/sys/class/net/lo").exists() else {}
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **LOOPBACK}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def without_timing(rows):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    """256 training and 200 test images of the embedded sample, as an image-folder zip: every
    worker process reads it in a few milliseconds."""
    from PIL import Image

    train_split, test_split, classes = load_dataset("sample")
    path = tmp_path_factory.mktemp("data") / "tiny.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, split, size in (("train", train_split, 256), ("test", test_split, 200)):
            part = balanced_subset(split, size, 0)
            for i, (image, label) in enumerate(zip(part.images, part.labels, strict=True)):
                buffer = io.BytesIO()
                Image.fromarray(image.numpy()).save(buffer, format="PNG")
                archive.writestr(f"{name}/{classes[int(label)]}/{i:04d}.png", buffer.getvalue())
    return str(path)


def config(data: str, **overrides):
    return tiny_config(**{"dataset": data, "train_subset": 0, "threads": 1, **overrides})


def cli_args(cfg, out: Path, *extra: str) -> list[str]:
    return ["-m", "batchscale", "train", "--out", str(out), "--quiet",
            *config_flags(cfg), *extra]


# ---------------------------------------------------------------------- one step, in float64
def one_step(cfg, world_size: int = 1, rank: int = 0) -> dict:
    """Weights and buffers after one float64 step on global batch 0 of epoch 0 (and with
    cfg.track_noise_scale, the tracker's estimates as `noise`)."""
    setup = build(cfg, progress=False, world_size=world_size, rank=rank)
    setup.model.double()
    setup.train_model = distributed.wrap(setup.model, setup.device, cfg.sync_bn)
    setup.noise = noise_hook.attach(setup, Position())
    loader = EpochLoader(setup.train, cfg.batch_size, cfg.seed, 0, rank=rank,
                         world_size=world_size)
    images, labels = loader.batch(0)
    set_lr(setup.optimizer, setup.plan.lr_at(0))
    train_step(setup, images.double(), labels)
    state = {k: v.detach().clone() for k, v in setup.model.state_dict().items()}
    return {**state, "noise": setup.noise.values()} if setup.noise else state


NOISE = dict(batch_size=64, bn_group=32, track_noise_scale=True)
CASES = {"local": dict(batch_size=64), "sync": dict(batch_size=64, sync_bn=True), "tracked": NOISE}


def squared_gradient_norms(cfg) -> tuple[float, list[float]]:
    """|g|² of the whole batch 0 and of each group of 32, in one float64 process."""
    setup = build(cfg, progress=False)
    setup.model.double()
    images, labels = EpochLoader(setup.train, cfg.batch_size, cfg.seed, 0).batch(0)
    params = [p for p in setup.model.parameters() if p.requires_grad]

    def norm(x, y) -> float:
        grads = torch.autograd.grad(forward_loss(setup, x.double(), y)[0], params)
        return noise.squared_norm(grads).item()

    return norm(images, labels), [norm(x, y) for x, y in zip(images.split(32),
                                                               labels.split(32), strict=True)]


def _worker(rank: int, port: int, data: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2,
                            timeout=timedelta(seconds=PATIENCE_S))
    try:
        results = {name: one_step(config(data, **over), 2, rank) for name, over in CASES.items()}
        # rank 1 saw a non-finite loss at step 5, only rank 0 was asked to stop
        bad = torch.tensor(5 if rank == 1 else -1)
        results["agree"] = distributed.agree(bad, stopping=rank == 0)
        results["agree_none"] = distributed.agree(torch.tensor(-1), stopping=False)
        # after a mid-epoch resume rank 0 holds the earlier global sums, rank 1 only its own
        meter = SimpleNamespace(loss_sum=torch.tensor(6.0 if rank == 0 else 2.0,
                                                      dtype=torch.float64),
                                correct=torch.tensor(5 if rank == 0 else 1), count=96 - 64 * rank)
        distributed.reduce_meter(meter)
        results["meter"] = (meter.loss_sum.item(), meter.correct.item(), meter.count)
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def spawned(data, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("spawned")
    context = mp.start_processes(_worker, args=(free_port(), data, str(out)), nprocs=2,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + PATIENCE_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError(f"the spawned workers did not finish in {PATIENCE_S} s")
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


def assert_close(actual: dict, expected: dict, names) -> None:
    for name in names:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-6, atol=1e-12,
                                   msg=lambda m, n=name: f"{n}: {m}")


def test_two_workers_take_the_same_step_as_the_ghost_simulation(spawned, data):
    simulated = one_step(config(data, batch_size=64, bn_group=32, bn_impl="ghost"))
    weights = [n for n, _ in build(config(data), progress=False).model.named_parameters()]
    for rank in range(2):
        assert_close(spawned[rank]["local"], simulated, weights)
    assert not torch.equal(simulated["fc.weight"], one_step(config(data))["fc.weight"])


def test_running_statistics_stay_each_workers_own(spawned, data):
    """Rank 0's running statistics are those of its own 32 samples (no buffer broadcast): the
    same as one process at batch 32, whose batch 0 is rank 0's half of global batch 0."""
    own = one_step(config(data, batch_size=32))
    buffers = [n for n in own if n.endswith(("running_mean", "running_var"))]
    assert_close(spawned[0]["local"], own, buffers)
    assert not torch.allclose(spawned[1]["local"]["stem.1.running_mean"],
                              own["stem.1.running_mean"])


def test_workers_measure_the_noise_scale_from_their_own_gradients(spawned, data):
    """The DDP hook's local squared norms, averaged over the workers, against the per-group
    gradients of one process: McCandlish's estimates with b_small = 32, b_big = 64."""
    whole, groups = squared_gradient_norms(config(data, **NOISE))
    grad_sq, trace = noise.unbiased_estimates(sum(groups) / 2, 32, whole, 64)
    for worker in spawned:
        assert worker["tracked"]["noise"]["noise_grad_sq"] == pytest.approx(grad_sq, rel=1e-6)
        assert worker["tracked"]["noise"]["noise_trace_sigma"] == pytest.approx(trace, rel=1e-6)
    assert abs(groups[0] - groups[1]) > 1e-3 * whole  # the average is not one worker's own


def test_sync_bn_takes_the_same_step_as_whole_batch_bn(spawned, data):
    whole = one_step(config(data, batch_size=64))
    for rank in range(2):
        assert_close(spawned[rank]["sync"], whole, list(whole))


def test_workers_agree_on_the_first_bad_step_and_on_stopping(spawned):
    assert [r["agree"] for r in spawned] == [(5, True), (5, True)]
    assert [r["agree_none"] for r in spawned] == [(-1, False), (-1, False)]


def test_metric_sums_and_counts_are_all_reduced(spawned):
    assert [r["meter"] for r in spawned] == [(8.0, 6, 128), (8.0, 6, 128)]


# ---------------------------------------------------------------------- real torchrun launches
def run_config(data: str, **overrides):
    return config(data, **{"epochs": 3, "lr": 0.05, **overrides})


@pytest.fixture(scope="module")
def two_nodes(data, tmp_path_factory) -> Path:
    """Two `torchrun --nnodes 2` launches meeting at a c10d rendezvous on 127.0.0.1.

    Node 0 hosts the rendezvous store and both name 127.0.0.1 as their own address, so the
    workers' MASTER_ADDR does not depend on what the machine's hostname resolves to."""
    out = tmp_path_factory.mktemp("two-nodes") / "run"
    port, args = free_port(), cli_args(run_config(data, track_noise_scale=True), out)
    launches = [subprocess.Popen(
        [*TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node),
         "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "t",
         "--rdzv-conf", f"is_host={int(node == 0)}", "--local-addr", "127.0.0.1",
         *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for node in (0, 1)]
    logs = [launch.communicate(timeout=PATIENCE_S)[0] for launch in launches]
    assert [launch.returncode for launch in launches] == [0, 0], "\n".join(logs)
    return out


def test_two_nodes_train_together_and_report_global_metrics(two_nodes, data, tmp_path,
                                                          monkeypatch):
    assert {p.name for p in two_nodes.iterdir()} == {"config.yaml", "metrics.jsonl",
                                                    "summary.json", "checkpoint.pt"}
    summary = rundir.read_json(two_nodes / "summary.json")
    assert summary["status"] == "completed" and summary["environment"]["world_size"] == 2
    # the summed metrics are both workers': the same numbers as Algorithm 1 in one process
    # (a forward per group of 32, exactly what each worker does); float32, so only epoch 1.
    # Its noise scale measures both groups of 32 every step (as the whole-batch-BN measurement
    # does with its quarters): the mean of their squared norms and the squared norm of their
    # mean, the very numbers the workers' local norms and the all-reduced gradient give.
    monkeypatch.setattr(noise_hook, "measured_batches", lambda group, batch: (32, 64, True))
    simulated = train(run_config(data, epochs=1, bn_group=32, bn_impl="loop",
                                 track_noise_scale=True), tmp_path / "s", quiet=True)
    assert simulated["status"] == "completed"
    real, alone = rundir.read_metrics(two_nodes)[0], rundir.read_metrics(tmp_path / "s")[0]
    assert real["train_acc"] == alone["train_acc"]
    assert real["train_loss"] == pytest.approx(alone["train_loss"], rel=1e-5)
    assert (real["noise_small_batch"], real["noise_big_batch"]) == (32, 64)
    measured = ("noise_grad_sq", "noise_trace_sigma", "noise_b_simple")
    assert {k: real[k] for k in measured} == pytest.approx({k: alone[k] for k in measured},
                                                           rel=1e-3)


def worker_pids(parent: int) -> dict[int, int]:
    """{rank: pid} of the worker processes torchrun (`parent`) started."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent:
            rank = [v for v in environ if v.startswith(b"RANK=")]
            if rank:
                found[int(rank[0][5:])] = int(entry.name)
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_killed_worker_is_restarted_and_the_run_ends_with_the_same_metrics(two_nodes, data,
                                                                          tmp_path):
    out = tmp_path / "run"
    launcher = subprocess.Popen(
        [*TORCHRUN, "--standalone", "--local-addr", "127.0.0.1", "--nproc-per-node", "2",
         "--max-restarts", "1",
         *cli_args(run_config(data, track_noise_scale=True), out)],
        env={**ENV, PAUSE_ENV: "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + PATIENCE_S
    while len(rundir.read_metrics(out)) < 1:  # the workers wait after epoch 1 until killed
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.stdout.read()
        time.sleep(0.02)
    while (rank1 := worker_pids(launcher.pid).get(1)) is None:
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.stdout.read()
        time.sleep(0.02)
    os.kill(rank1, signal.SIGKILL)
    log = launcher.communicate(timeout=PATIENCE_S)[0]
    assert launcher.returncode == 0, log
    summary = rundir.read_json(out / "summary.json")
    assert summary["status"] == "completed"
    assert summary["environment"]["torchrun_restarts"] == 1
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    resumed, reference = (without_timing(rundir.read_metrics(d)) for d in (out, two_nodes))
    # training exactly; the noise-scale moving averages to float64 rounding (measured: 1 ulp
    # apart in noise_grad_sq after the restart)
    assert [{k: v for k, v in r.items() if not k.startswith("noise_")} for r in resumed] == [
        {k: v for k, v in r.items() if not k.startswith("noise_")} for r in reference]
    for mine, theirs in zip(resumed, reference, strict=True):
        assert {k: pytest.approx(v, rel=1e-12) for k, v in mine.items()
                if k.startswith("noise_")} == {k: v for k, v in theirs.items()
                                               if k.startswith("noise_")}


def test_nonfinite_loss_on_the_workers_stops_them_all_as_diverged(data, tmp_path):
    """Through the `--workers` launcher: both workers stop at the agreed step, exit 0."""
    cfg = config(data, lr=1e6, log_every=1, epochs=2, workers=2)
    result = subprocess.run([sys.executable, *cli_args(cfg, tmp_path / "run")], env=ENV,
                            capture_output=True, text=True, timeout=PATIENCE_S)
    assert result.returncode == 0, result.stderr
    summary = rundir.read_json(tmp_path / "run" / "summary.json")
    assert summary["status"] == "diverged" and 0 <= summary["diverged_at_step"] < 8
    assert summary["environment"]["world_size"] == 2


def test_a_peer_that_never_arrives_ends_in_one_clear_line(data, tmp_path):
    env = {**ENV, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    result = subprocess.run([sys.executable, *cli_args(config(data, dist_timeout=2),
                                                      tmp_path / "run")],
                            env=env, capture_output=True, text=True, timeout=PATIENCE_S)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "did not all join" in result.stderr
    assert not (tmp_path / "run").exists()


def test_worker_rules_are_checked_before_anything_starts(data, tmp_path):
    with pytest.raises(UserError, match="not a multiple of workers"):
        config(data, batch_size=64, workers=3)
    with pytest.raises(UserError, match="exceeds the per-worker batch 32"):
        train(config(data, batch_size=64, bn_group=64, workers=2), tmp_path / "a", quiet=True)
    with pytest.raises(UserError, match="needs bn_group 0"):
        config(data, batch_size=64, bn_group=32, sync_bn=True)
    with pytest.raises(UserError, match="sync_bn makes gradients of different functions"):
        config(data, batch_size=64, sync_bn=True, track_noise_scale=True)
    with pytest.raises(UserError, match="started 1 process"):
        with distributed.process_group(config(data, workers=2)):
            pass
    assert not (tmp_path / "a").exists()


def test_launcher_passes_every_field(data):
    cfg = config(data, workers=2, sync_bn=True, nesterov=True)
    from batchscale.cli import build_parser, train_config

    args = build_parser().parse_args(cli_args(cfg, Path("x"))[2:])
    assert train_config(args) == cfg
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()


# ---------------------------------------------------------------------- leaving
# Rank 1 leaves while a collective's tensor is held by gloo's thread alone (its Python object
# then owned by C++), and an exit function holding the GIL (sum over a range, in C) keeps that
# thread waiting for the GIL from the moment rank 0's late contribution completes the collective
# until the interpreter would be finalizing. The deterministic form of the rare SIGABRT of real
# runs, where the thread releases a just-finished collective's tensor as its worker exits.
LEAVING = """
import atexit, os, sys, time
from pathlib import Path
atexit.register(sum, range(80_000_000))  # registered first: the last exit function to run
import torch, torch.distributed as dist
from torch import nn
from batchscale.config import from_dict
from batchscale.engine import distributed

rank, flag = int(os.environ["RANK"]), Path(sys.argv[2])
kept = []

def main():
    with distributed.process_group(from_dict({"device": "cpu"})):
        kept.append(distributed.wrap(nn.Linear(2, 2), torch.device("cpu"), False))  # DDP: holds
        if rank == 0:  # the group past destroy_process_group, as a run's model does
            while not flag.exists():
                time.sleep(0.01)
            time.sleep(0.2)  # rank 1 is in its exit functions by now
            dist.all_reduce(torch.ones(1000))
        else:
            tensor = torch.ones(1000)
            work = dist.all_reduce(tensor, async_op=True)
            del tensor, work  # gloo's thread holds the tensor, and releases it when done
    if rank == 1:
        print("x" * 10000)  # buffered: flushing it at exit releases the GIL
        flag.touch()
    return 0

distributed.run_main(main) if sys.argv[1] == "run_main" else sys.exit(main())
"""


def leave_with_a_collective_in_flight(how: str, folder: Path) -> list[tuple[str, int]]:
    """(stderr, exit code) of ranks 0 and 1."""
    store, script = folder / "store", folder / "leaving.py"
    script.write_text(LEAVING)
    env = {**ENV, "WORLD_SIZE": "2", distributed.FILE_STORE_ENV: str(store),
           "MASTER_ADDR": "127.0.0.1"}
    ranks = [subprocess.Popen([sys.executable, str(script), how, str(folder / "leaving")],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    return [(rank.communicate(timeout=PATIENCE_S)[1], rank.returncode) for rank in ranks]


def test_a_worker_leaving_while_gloo_releases_a_tensor_does_not_abort(tmp_path):
    """`python -m batchscale` leaves through distributed.run_main: exit functions and output
    flushed with the interpreter whole, then os._exit. The same race with a plain sys.exit
    aborts (SIGABRT in the gloo thread: pthread_exit at the finalizing interpreter's GIL, unwound
    through the tensor's noexcept destructor), which shows the race was really forced."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain = leave_with_a_collective_in_flight("sys_exit", tmp_path / "a")
    # std::terminate's abort; the stack dump that follows (PYTHONFAULTHANDLER=1, conftest) can
    # itself crash on the dying thread, making it SIGSEGV
    assert plain[1][1] in (-signal.SIGABRT, -signal.SIGSEGV), plain
    assert "terminate called without an active exception" in plain[1][0], plain
    assert "Fatal Python error: Aborted" in plain[1][0], plain
    fixed = leave_with_a_collective_in_flight("run_main", tmp_path / "b")
    assert [code for _, code in fixed] == [0, 0], fixed


STOPS_AS_ASKED = """
import os, signal, sys, time
from pathlib import Path
asked = []
def handle(signum, frame):
    if asked:  # a second SIGTERM: the launcher cut this worker short
        os._exit(99)
    asked.append(signum)
signal.signal(signal.SIGTERM, handle)
print("ready", flush=True)
while not asked:
    time.sleep(0.01)
time.sleep(float(sys.argv[1]))  # rank 0 writes its checkpoint and summary meanwhile
Path(sys.argv[2]).write_text("whole")
sys.exit(128 + signal.SIGTERM)
"""


def test_a_worker_that_stops_as_asked_does_not_cut_the_others_short(tmp_path):
    """SIGTERM passed on by the launcher: the quick worker exits 143 first; that is not a
    failure, so the slow one (rank 0 writing its summary) is not terminated in the middle."""
    import threading

    workers = [subprocess.Popen([sys.executable, "-c", STOPS_AS_ASKED, str(delay),
                                 str(tmp_path / f"done{delay}")], stdout=subprocess.PIPE, text=True)
               for delay in (0.0, 1.5)]
    assert [w.stdout.readline().strip() for w in workers] == ["ready", "ready"]
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
    code, received = launch.wait_all(workers)
    assert received == [signal.SIGTERM] and code == 128 + signal.SIGTERM
    assert [w.returncode for w in workers] == [143, 143]
    assert (tmp_path / "done1.5").read_text() == "whole"

"""The Python API (batchscale/api.py): NoiseScale against hand-computed norms, a brute force of
exact per-sample gradients on two models that are not ResNets, and two DDP workers; the engine's
tracking through the same estimator; CollapseMonitor against the engine's rule."""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn.parallel import DistributedDataParallel

from batchscale import CollapseMonitor, Estimate, NoiseScale, advise, cli
from batchscale.config import TrainConfig
from batchscale.engine import collapse, noise
from batchscale.engine.data import balanced_subset, load_dataset, normalize
from batchscale.engine.train import train
from batchscale.errors import UserError


# ---------------------------------------------------------------------- two small models
class TinyViT(nn.Module):
    """A one-block vision transformer: 8x8 patches of a 32x32 image, pre-norm attention + MLP,
    mean-pooled tokens, a linear head."""

    def __init__(self, classes: int = 10, dim: int = 16, patch: int = 8, heads: int = 2):
        super().__init__()
        self.patch, self.heads = patch, heads
        self.embed = nn.Linear(3 * patch * patch, dim)
        self.pos = nn.Parameter(torch.randn((32 // patch) ** 2, dim) * 0.02)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(dim) for _ in range(3))
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        p, b = self.patch, x.shape[0]
        x = x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(b, -1, 3 * p * p)
        x = self.embed(x) + self.pos
        dim = x.shape[-1]
        q, k, v = self.qkv(self.norm1(x)).reshape(b, -1, 3, self.heads, dim // self.heads) \
            .permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
        x = x + self.proj((attention @ v).transpose(1, 2).reshape(x.shape))
        x = x + self.mlp(self.norm2(x))
        return self.head(self.norm3(x.mean(1)))


def mlp(inputs: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(inputs, 16), nn.Tanh(), nn.Linear(16, 1)).double()


def regression(n: int = 4096, inputs: int = 8):
    """y = tanh(x·w) + noise: a synthetic regression task (MSE loss)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, inputs, dtype=torch.float64, generator=generator)
    w = torch.randn(inputs, 1, dtype=torch.float64, generator=generator)
    return x, torch.tanh(x @ w) + 0.5 * torch.randn(n, 1, dtype=torch.float64,
                                                     generator=generator)


def cifar_sample(images: int = 500):
    train_split, _, _ = load_dataset("sample", "", False)
    split = balanced_subset(train_split, images, 0)
    return normalize(split.images, torch.float64).contiguous(), split.labels


def brute_force(model: nn.Module, loss_fn, x, y) -> float:
    """tr(Σ) / |G|² of the data set itself, from every sample's exact gradient (vmap(grad)):
    G the mean gradient, Σ the per-sample gradients' covariance (population: / N). Batches
    drawn with replacement from the data set have exactly these moments."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def one(p, xi, yi):
        return loss_fn(functional_call(model, p, (xi[None],)), yi[None])

    grads = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)
    flat = torch.cat([g.reshape(len(x), -1) for g in grads.values()], 1)
    mean = flat.mean(0)
    return ((flat - mean).square().sum(1).mean() / mean.square().sum()).item()


def api_estimate(model, loss_fn, x, y, batch: int, parts: int, steps: int, seed: int = 1):
    """NoiseScale over `steps` batches drawn with replacement, at fixed parameters."""
    generator = torch.Generator().manual_seed(seed)
    with NoiseScale(model, span=1e9) as tracked:
        for _ in range(steps):
            pick = torch.randint(0, len(x), (batch,), generator=generator)
            model.zero_grad()
            tracked.backward(lambda a, b: loss_fn(model(a), b), x[pick], y[pick], parts=parts)
            tracked.step()
        return tracked.estimate()


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many tiny passes: a second thread only adds overhead
    yield
    torch.set_num_threads(threads)


def test_vit_on_cifar_sample_agrees_with_per_sample_gradients(one_thread):
    torch.manual_seed(0)
    model = TinyViT().double()
    x, y = cifar_sample()
    truth = brute_force(model, F.cross_entropy, x, y)
    got = api_estimate(model, F.cross_entropy, x, y, batch=64, parts=4, steps=500)
    assert (got.small_batch, got.big_batch, got.observations) == (16, 64, 500)
    assert got.b_simple == pytest.approx(truth, rel=0.05)
    assert 0 < got.error < 0.05 * truth  # the error bar is a few percent, as the agreement


def test_mlp_on_a_synthetic_regression_agrees_with_per_sample_gradients(one_thread):
    model, (x, y) = mlp(), regression()
    truth = brute_force(model, F.mse_loss, x, y)
    got = api_estimate(model, F.mse_loss, x, y, batch=64, parts=4, steps=2000)
    assert got.b_simple == pytest.approx(truth, rel=0.05)
    assert abs(got.b_simple - truth) < 4 * got.error


# ---------------------------------------------------------------------- exact, one step
def per_part_norms(model, loss_fn, x, y, parts: int):
    """(mean over parts of |g_part|², |mean g_part|²) by autograd, float64."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [torch.autograd.grad(loss_fn(model(a), b), params, allow_unused=True)
             for a, b in zip(x.chunk(parts), y.chunk(parts), strict=True)]
    grads = [[torch.zeros_like(p) if g is None else g for p, g in zip(params, gs, strict=True)]
             for gs in grads]
    small = sum(noise.squared_norm(g).item() for g in grads) / parts
    big = noise.squared_norm([sum(gs) / parts for gs in zip(*grads, strict=True)]).item()
    return small, big


def one_step_estimate(tracked: NoiseScale) -> tuple[float, float]:
    state = tracked.tracker.state
    return state["grad_sq"].item() / state["weight"].item(), \
        state["trace_sigma"].item() / state["weight"].item()


def test_one_step_equals_mccandlish_from_the_parts_gradients():
    """A frozen parameter is left out, an unused one counts zero; split and hand-accumulated
    micro-batches give the same observation, equal to App. A's estimates of the parts."""
    model, (x, y) = mlp(), regression(32)
    model.register_parameter("unused", nn.Parameter(torch.ones(3, dtype=torch.float64)))
    model[0].bias.requires_grad_(False)
    small, big = per_part_norms(model, F.mse_loss, x, y, 4)
    expected = noise.unbiased_estimates(small, 8, big, 32)
    with NoiseScale(model) as split:
        model.zero_grad()
        loss = split.backward(lambda a, b: F.mse_loss(model(a), b), x, y, parts=4)
        split.step()
        assert loss.item() == pytest.approx(F.mse_loss(model(x), y).item(), rel=1e-12)
        assert one_step_estimate(split) == pytest.approx(expected, rel=1e-10)
    with NoiseScale(model, batch_size=8) as accumulated:
        model.zero_grad()
        for a, b in zip(x.chunk(4), y.chunk(4), strict=True):
            (F.mse_loss(model(a), b) / 4).backward()
        accumulated.step()
        assert one_step_estimate(accumulated) == pytest.approx(expected, rel=1e-10)
    assert len(accumulated.hooks.handles) == 0  # closed: no hooks left on the model


def test_amp_loss_scaling_and_unscaling_change_nothing_and_overflow_is_left_out():
    model, (x, y) = mlp(), regression(32)
    loss_fn = lambda a, b: F.mse_loss(model(a), b)  # noqa: E731
    plain = NoiseScale(model)
    model.zero_grad()
    plain.backward(loss_fn, x, y, parts=4)
    plain.step()
    plain.close()
    for unscale in (False, True):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
        with NoiseScale(model, optimizer=optimizer, scaler=scaler) as scaled:
            model.zero_grad()
            scaled.backward(loss_fn, x, y, parts=4)
            if unscale:
                scaler.unscale_(optimizer)
            scaled.step()
            assert one_step_estimate(scaled) == pytest.approx(one_step_estimate(plain),
                                                              rel=1e-10)
            model.zero_grad()
            scaled.backward(lambda a, b: loss_fn(a, b) * math.inf, x, y, parts=4)
            scaled.step()  # overflowed: the averages stay as they were
            assert one_step_estimate(scaled) == pytest.approx(one_step_estimate(plain),
                                                              rel=1e-10)
            assert scaled.estimate().observations == 2


def test_every_measures_only_every_nth_step_and_one_pass_is_refused():
    model, (x, y) = mlp(), regression(32)
    with NoiseScale(model, every=3) as tracked:
        for _ in range(7):
            model.zero_grad()
            tracked.backward(lambda a, b: F.mse_loss(model(a), b), x, y, parts=2)
            tracked.step()
        assert tracked.estimate().observations == 3  # steps 0, 3, 6
    with NoiseScale(model, batch_size=32) as single:
        model.zero_grad()
        F.mse_loss(model(x), y).backward()
        with pytest.raises(ValueError, match="no small batch"):
            single.step()


def test_an_unresolved_gradient_is_undefined_not_a_number():
    """Pure noise around a zero mean gradient: |G|² comes out ≤ 0, and the estimate says
    'undefined' rather than a negative or huge B_simple."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1, bias=False).double()
    nn.init.zeros_(model.weight)
    x = torch.randn(64, 4, dtype=torch.float64)
    y = torch.randn(64, 1, dtype=torch.float64)
    y -= x @ torch.linalg.lstsq(x, y).solution  # the least-squares fit is w = 0: G = 0
    tracked = NoiseScale(model, span=10)
    assert str(tracked.estimate()) == "B_simple: not measured yet"
    model.zero_grad()
    tracked.backward(lambda a, b: F.mse_loss(model(a), b), x, y, parts=4)
    tracked.step()
    got = tracked.estimate()
    assert got.grad_sq <= 0 and not got.defined and got.b_simple is None
    assert str(got).startswith("B_simple undefined: |G|²")


def test_the_error_bar_is_the_jackknife_of_the_ratio_scaled_to_the_average():
    tracker = noise.NoiseScaleTracker(4, 16, decay=1 - 2 / 11)  # span 10: window 10
    pairs = [(3.0, 1.0), (2.5, 0.8), (4.0, 1.5), (3.2, 1.1)]
    for small, big in pairs:
        tracker.observe(torch.tensor(small, dtype=torch.float64),
                        torch.tensor(big, dtype=torch.float64))
    estimates = [noise.unbiased_estimates(s, 4, b, 16) for s, b in pairs]
    g, t = [e[0] for e in estimates], [e[1] for e in estimates]
    loo = [(sum(t) - t[i]) / (sum(g) - g[i]) for i in range(4)]
    mean = sum(loo) / 4
    jackknife = math.sqrt(3 / 4 * sum((r - mean) ** 2 for r in loo))
    d = 1 - 2 / 11
    n_eff = (1 - d ** 4) ** 2 * (1 + d) / ((1 - d) * (1 - d ** 8))
    got = tracker.estimate()
    assert got.error == pytest.approx(jackknife * math.sqrt(4 / n_eff), rel=1e-12)
    assert isinstance(got, Estimate) and got.observations == 4


# ---------------------------------------------------------------------- two DDP workers
def ddp_worker(rank: int, init_file: str, out: str, steps: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    model = DistributedDataParallel(mlp())
    x, y = regression(64 * steps)
    tracked = NoiseScale(model, batch_size=32)
    for step in range(steps):  # worker r trains on its half of each global batch of 64
        model.zero_grad()
        part = slice(64 * step + 32 * rank, 64 * step + 32 * (rank + 1))
        F.mse_loss(model(x[part]), y[part]).backward()
        tracked.step()
    e = tracked.estimate()
    if rank == 0:
        with open(out, "w") as f:
            json.dump([e.b_simple, e.grad_sq, e.trace_sigma, e.small_batch, e.big_batch], f)
    dist.destroy_process_group()
    # leave as batchscale's workers do: a plain exit can abort in gloo's exit race (SIGABRT after
    # the work is done; docs/distributed.md, Leaving), which failed this test under load
    os._exit(0)


def test_two_ddp_workers_equal_one_process_on_the_same_data(tmp_path):
    """Each worker's local gradient before the all-reduce is the small batch: the same
    observations as one process splitting each global batch in two."""
    steps = 5
    out = tmp_path / "ddp.json"
    init = tempfile.mktemp(dir=tmp_path)
    mp.spawn(ddp_worker, args=(init, str(out), steps), nprocs=2, join=True)
    ddp = json.loads(out.read_text())
    model, (x, y) = mlp(), regression(64 * steps)
    with NoiseScale(model) as single:
        for step in range(steps):
            model.zero_grad()
            part = slice(64 * step, 64 * (step + 1))
            single.backward(lambda a, b: F.mse_loss(model(a), b), x[part], y[part], parts=2)
            single.step()
        e = single.estimate()
    assert ddp[3:] == [32, 64] == [e.small_batch, e.big_batch]
    assert ddp[:3] == pytest.approx([e.b_simple, e.grad_sq, e.trace_sigma], rel=1e-9)


# ---------------------------------------------------------------------- the engine, one home
def test_the_engine_tracks_through_the_shared_estimator_with_the_old_numbers(tmp_path,
                                                                             monkeypatch):
    """A tiny engine run: every pair of squared norms the engine measures goes to
    NoiseScaleTracker.observe, and each epoch's noise fields equal the moving averages of
    the code before the API (replayed here from the same pairs)."""
    pairs = []
    observe = noise.NoiseScaleTracker.observe

    def recording(self, small_sq, big_sq, valid=None):
        pairs.append((small_sq.item(), big_sq.item(), self.small_batch, self.big_batch))
        observe(self, small_sq, big_sq, valid)

    monkeypatch.setattr(noise.NoiseScaleTracker, "observe", recording)
    cfg = TrainConfig(width=4, train_subset=128, batch_size=32, epochs=2, warmup_epochs=0,
                      bn_group=8, track_noise_scale=True, threads=1, eval_batch_size=256)
    train(cfg, tmp_path / "run", quiet=True)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    decay = 1.0 - 2.0 / (4 + 1)  # four steps per epoch
    grad_sq = trace = weight = torch.zeros((), dtype=torch.float64)
    for epoch, row in enumerate(rows):
        for small, big, b_small, b_big in pairs[4 * epoch:4 * epoch + 4]:
            g, t = noise.unbiased_estimates(torch.tensor(small, dtype=torch.float64), b_small,
                                            torch.tensor(big, dtype=torch.float64), b_big)
            grad_sq = grad_sq * decay + (1 - decay) * g
            trace = trace * decay + (1 - decay) * t
            weight = weight * decay + (1 - decay)
        assert row["noise_grad_sq"] == grad_sq.item() / weight.item()
        assert row["noise_trace_sigma"] == trace.item() / weight.item()
        assert (row["noise_small_batch"], row["noise_big_batch"]) == (8, 32)
    errors = [row.get("noise_b_simple_error") for row in rows]  # absent where undefined
    assert any(errors) and all(e is None or e > 0 for e in errors)
    assert len(pairs) == 8


# ---------------------------------------------------------------------- CollapseMonitor
def rows_of(losses, accuracies, steps_per_epoch: int = 10):
    return [{"epoch": e, "step": e * steps_per_epoch, "train_loss": loss, "train_acc": acc}
            for e, (loss, acc) in enumerate(zip(losses, accuracies, strict=True), start=1)]


@pytest.mark.parametrize("losses, accuracies", [
    ([2.0, 3.0, 3.0, 3.0, 3.0], [0.3, 0.1, 0.1, 0.1, 0.1]),  # exploded from epoch 2
    ([2.31] * 8, [0.1] * 8),  # stalled for half the budget
    ([2.31, 2.31, 2.2, 2.31, 2.31, 2.31, 2.31, 2.31], [0.1] * 8),  # a learning epoch between
    ([2.31, 2.31, 2.31, 1.9, 1.8, 1.7, 1.6, 1.5], [0.1, 0.1, 0.1, 0.3, 0.35, 0.4, 0.45, 0.5]),
    ([2.9, 2.9, 2.9, 2.9, 2.9, 2.9, 2.9, 2.9], [0.1, 0.1, 0.1, 0.13, 0.1, 0.1, 0.1, 0.1]),
])
def test_the_monitor_fires_at_the_engines_epoch(losses, accuracies):
    cfg = {"warmup_epochs": 1, "batch_size": 32, "epochs": 8}
    rows = rows_of(losses, accuracies)
    monitor = CollapseMonitor(classes=10, epochs=8, warmup_epochs=1)
    fired = next((e for e, (loss, acc) in enumerate(zip(losses, accuracies, strict=True), 1)
                  if monitor.update(loss, acc, 320)), None)
    assert fired == collapse.collapsed_at(rows, cfg)
    assert monitor.collapsed_epoch == fired


def test_the_monitor_for_any_loss_compares_with_the_constant_predictor():
    """MSE with targets of variance 2: a run stalled at loss ~2 for three epochs after warmup
    (budget 6: half is 3) has collapsed; one at 2.6 (≥ 1.25 x 2) for three has exploded."""
    stalled = CollapseMonitor(baseline_loss=2.0, epochs=6)
    assert [stalled.update(v) for v in (1.99, 1.985, 1.5, 1.99, 2.0, 2.1)] == [
        False, False, False, False, False, True]
    assert stalled.reason == "collapse" and stalled.collapsed_epoch == 6
    exploded = CollapseMonitor(baseline_loss=2.0)  # no budget: only the exploded tier
    assert [exploded.update(v) for v in (2.6, 2.7, 1.97, 2.6, 2.6, 2.6)] == [
        False, False, False, False, False, True]
    learning = CollapseMonitor(baseline_loss=2.0)
    assert not any(learning.update(v) for v in (1.97, 1.98, 1.97, 1.96))  # stalled, no budget
    assert CollapseMonitor(classes=10).update(math.nan) is True
    with pytest.raises(ValueError, match="classes .* or baseline_loss"):
        CollapseMonitor()



# ---------------------------------------------------------------------- --model MODULE:FACTORY
FACTORIES = '''
from torch import nn
def make(num_classes):
    return nn.Sequential(nn.Conv2d(3, 16, 3, 2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, num_classes))
def not_a_model(num_classes):
    return 3
'''


@pytest.fixture
def factories(tmp_path, monkeypatch):
    """mynets_i27.py in the working directory, as a user's own models would be."""
    (tmp_path / "mynets_i27.py").write_text(FACTORIES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", list(sys.path))
    yield tmp_path
    sys.modules.pop("mynets_i27", None)


def test_train_takes_a_model_from_a_factory_in_the_working_directory(factories):
    assert cli.main(["train", "--out", "run", "--quiet", "--model", "mynets_i27:make",
                     "--train-subset", "128", "--batch-size", "32", "--epochs", "1",
                     "--warmup-epochs", "0", "--eval-batch-size", "500", "--threads", "1",
                     "--track-noise-scale"]) == 0
    (row,) = [json.loads(line) for line in (factories / "run" / "metrics.jsonl").open()]
    assert (row["noise_small_batch"], row["noise_big_batch"]) == (8, 32)
    state = torch.load(factories / "run" / "checkpoint.pt", weights_only=False)
    assert any(tuple(v.shape) == (10, 16) for v in state["model"].values())  # its Linear


def test_the_advise_command_takes_a_model_from_a_factory(factories):
    assert cli.main(["advise", "--model", "mynets_i27:make", "--train-subset", "256",
                     "--base-batch-size", "8", "--lr", "0.02", "--warmup-epochs", "1",
                     "--epochs", "50", "--threads", "1", "--batches", "8,32", "--out", "adv",
                     "--quiet"]) == 0
    saved = json.loads((factories / "adv" / "advice.json").read_text())
    assert saved["config"]["model"] == "mynets_i27:make"
    assert [row["batch"] for row in saved["rows"]] == [8, 32]
    assert all(row["verdict"] in ("stable", "at risk", "diverges") for row in saved["rows"])


@pytest.mark.parametrize("spec, message", [
    ("nope_i27:make", "--model nope_i27:make: cannot import nope_i27: ModuleNotFoundError"),
    ("mynets_i27:nope", "--model mynets_i27:nope: mynets_i27 has no callable nope"),
    ("mynets_i27:not_a_model", "not_a_model(10) returned int, not an nn.Module"),
    ("mynets_i27", "model must be resnet18, resnet18-imagenet or MODULE:FACTORY"),
])
def test_a_bad_model_factory_is_one_line_and_exit_2(factories, capsys, spec, message):
    assert cli.main(["train", "--out", "run", "--quiet", "--model", spec, "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (factories / "run").exists()


def test_advise_from_python_probes_a_factory_model(factories):
    """The thin wrapper: the same probe as `batchscale advise`, on a user's model factory (the
    tiny probe of tests/test_advise.py)."""
    record = advise([8, 32], factories / "advice", model="mynets_i27:make", dataset="sample",
                    width=4, train_subset=256, base_batch_size=8, lr=0.02, scale_rule="linear",
                    warmup_epochs=1, epochs=50, threads=1, seed=1)
    saved = json.loads((factories / "advice" / "advice.json").read_text())
    assert saved["config"]["model"] == "mynets_i27:make"
    assert [row["batch"] for row in record["rows"]] == [8, 32]
    assert record["advice"]["batch"] in (8, 32)
    noise = record["noise"]  # a positive number, or none with the reason (never B_noise < 0)
    assert (noise["b_noise"] is None) == bool(noise["why_not"]), noise
    assert noise["b_noise"] is None or noise["b_noise"] > 0
    with pytest.raises(UserError, match=r"<lambda>: a forward pass on the training inputs "
                       r"\(2, 3, 32, 32\) failed: .*shapes cannot be multiplied"):
        advise([8], factories / "other", model=lambda classes: nn.Linear(3, classes))


def test_a_factory_run_stopped_midway_resumes_to_the_same_metrics(factories):
    cfg = TrainConfig(model="mynets_i27:make", train_subset=128, batch_size=32, epochs=2,
                      warmup_epochs=0, threads=1, eval_batch_size=500)
    train(cfg, factories / "whole", quiet=True)
    assert train(cfg, factories / "cut", quiet=True, stop_at_step=5)["status"] == "interrupted"
    assert train(cfg, factories / "cut", quiet=True, resume=True)["status"] == "completed"
    rows = [[{k: v for k, v in json.loads(line).items() if k not in ("wall_s", "images_per_sec")}
             for line in (factories / name / "metrics.jsonl").open()] for name in ("whole", "cut")]
    assert rows[0] == rows[1] and len(rows[0]) == 2

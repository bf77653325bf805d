"""On the GPU: CUDA graphs of the training step, deterministic kernels, and the GPU count check.

The device-independent pieces run here on the CPU (the tensor-lr optimizer update against torch's
own step, the static-buffer step against `train_step`, the flags, the graph policy); the tests
that need a GPU skip without one, with the reason.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from batchscale.cli import main
from batchscale.config import from_dict
from batchscale.engine import graphs, rundir
from batchscale.engine.data import EpochLoader
from batchscale.engine.models import build_model
from batchscale.engine.norm import GhostBatchNorm2d
from batchscale.engine.optim import build_optimizer, set_lr
from batchscale.engine.setup import build, set_deterministic
from batchscale.engine.step import Meter, prepare_input, train_step
from batchscale.engine.train import train
from batchscale.errors import UserError

from conftest import tiny_config

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# ---------------------------------------------------------------------- the tensor-lr update
def _model_with_grads(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 3))
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    return model


@pytest.mark.parametrize("name, fields", [
    ("sgd", {}),
    ("sgd", {"nesterov": True}),
    ("sgd", {"momentum": 0.0, "exclude_bn_bias_wd": True}),
    ("rmsprop", {}),
    ("rmsprop", {"momentum": 0.0}),
])
def test_tensor_lr_update_equals_torchs_step_with_a_float_lr(name, fields):
    cfg = from_dict({"optimizer": name, "lr": 0.1, "batch_size": 32, "base_batch_size": 32,
                     "momentum": 0.9, "weight_decay": 0.01, **fields})
    eager_model, tensor_model = _model_with_grads(0), _model_with_grads(0)
    eager, tensor = build_optimizer(cfg, eager_model), build_optimizer(cfg, tensor_model)
    for group in (*eager.param_groups, *tensor.param_groups):
        group["lr_scale"] = 0.5 if group["name"] == "bn_and_bias" else 1.0
    for step, lr in enumerate((0.1, 0.05, 0.2)):
        grads = _model_with_grads(10 + step)
        for model in (eager_model, tensor_model):
            for p, g in zip(model.parameters(), grads.parameters(), strict=True):
                p.grad = g.grad.clone()
        set_lr(eager, lr)
        eager.step()
        graphs.tensor_lr_update(tensor, torch.tensor(lr))
    for a, b in zip(eager_model.parameters(), tensor_model.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert not torch.equal(eager_model[0].weight, _model_with_grads(0)[0].weight)
    # the state is torch's own: the same keys, and the same step counts
    for p_eager, p_tensor in zip(eager_model.parameters(), tensor_model.parameters(), strict=True):
        state_eager, state_tensor = eager.state[p_eager], tensor.state[p_tensor]
        assert state_eager.keys() == state_tensor.keys()
        for key in state_eager:
            torch.testing.assert_close(state_tensor[key], state_eager[key], rtol=1e-5,
                                       atol=1e-6)


def test_tensor_lr_update_refuses_an_optimizer_it_cannot_capture():
    model = _model_with_grads(0)
    cfg = from_dict({"optimizer": "lars"})
    with pytest.raises(TypeError, match="no tensor-lr update"):
        graphs.tensor_lr_update(build_optimizer(cfg, model), torch.tensor(0.1))


# ---------------------------------------------------------------------- the static-buffer step
def test_static_buffer_step_equals_train_step_on_cpu():
    """Three steps of GraphedStep's step function, called eagerly, against the loop's eager
    step: the same weights and the same metric sums (float tolerance: the rate is a tensor)."""
    cfg = tiny_config(bn_group=16)
    eager, static = build(cfg, progress=False), build(cfg, progress=False)
    loader = EpochLoader(eager.train, cfg.batch_size, cfg.seed, 0)
    eager_meter, static_meter = Meter.zeros(eager.device), Meter.zeros(static.device)
    graphed = graphs.GraphedStep(static)
    for step in range(3):
        images, labels = loader.batch(step)
        images = prepare_input(eager, images)
        lr = eager.plan.lr_at(step) * (1 + step)
        set_lr(eager.optimizer, lr)
        loss, logits = train_step(eager, images, labels)
        eager_meter.add(loss, logits, labels, step)
        graphed.load(static_meter, images, labels, step, lr)
        graphed.static_step()
        static_meter.count += len(labels)
    for a, b in zip(eager.model.state_dict().values(), static.model.state_dict().values(),
                    strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(static_meter.loss_sum, eager_meter.loss_sum, rtol=1e-6, atol=0)
    assert static_meter.correct == eager_meter.correct and static_meter.count == 3 * 64
    assert static_meter.first_bad_step == -1
    assert static.optimizer.param_groups[0]["lr"] == eager.optimizer.param_groups[0]["lr"]


def test_the_static_step_records_the_first_non_finite_step():
    cfg = tiny_config(lr=1e30)
    setup = build(cfg, progress=False)
    loader = EpochLoader(setup.train, cfg.batch_size, cfg.seed, 0)
    meter, graphed = Meter.zeros(setup.device), graphs.GraphedStep(setup)
    for step in range(3):
        images, labels = loader.batch(step)
        graphed.load(meter, prepare_input(setup, images), labels, 7 + step, 1e30)
        graphed.static_step()
    assert 7 < int(meter.first_bad_step) <= 9


# ---------------------------------------------------------------------- where graphs apply
CUDA = torch.device("cuda")  # a device object only: nothing runs on it


def test_graphs_policy_on_each_device_and_setting():
    notes = []
    assert graphs.use_graphs(tiny_config(cuda_graphs="auto"), CUDA, note=notes.append)
    assert not graphs.use_graphs(tiny_config(cuda_graphs="off"), CUDA)
    assert not graphs.use_graphs(tiny_config(cuda_graphs="auto"), torch.device("cpu"),
                                 note=notes.append)
    assert notes == []  # on the CPU, auto is silently eager
    with pytest.raises(UserError, match="needs a CUDA device"):
        graphs.use_graphs(tiny_config(cuda_graphs="on"), torch.device("cpu"))
    for fields, reason in (({"optimizer": "lars"}, "optimizer lars"),
                           ({"track_noise_scale": True}, "track_noise_scale"),
                           ({"compile": True}, "compile")):
        assert not graphs.use_graphs(tiny_config(**fields), CUDA, note=notes.append)
        assert notes[-1].count("\n") == 0 and reason in notes[-1]
        with pytest.raises(UserError, match=reason):
            graphs.use_graphs(tiny_config(cuda_graphs="on", **fields), CUDA)
    assert not graphs.use_graphs(tiny_config(), CUDA, world_size=2, note=notes.append)
    assert "DDP" in notes[-1]


# ---------------------------------------------------------------------- deterministic flags
@pytest.fixture
def restore_flags(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
     torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) = saved[2:]


def test_deterministic_sets_every_flag_and_off_sets_none(restore_flags):
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    set_deterministic(False)
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ and torch.backends.cudnn.benchmark
    set_deterministic(True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32


def test_deterministic_is_accepted_on_the_cpu(restore_flags):
    setup = build(tiny_config(deterministic=True), progress=False)
    assert setup.device.type == "cpu" and torch.are_deterministic_algorithms_enabled()


# ---------------------------------------------------------------------- GPU count
def test_more_workers_than_gpus_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    code = main(["train", "--out", str(tmp_path / "r"), "--workers", "2", "--width", "4",
                 "--batch-size", "64", "--device", "auto", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "2 workers need 2 GPUs, torch sees 1" in err
    assert "--device cpu" in err and "--bn-group 32" in err
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------- on a CUDA GPU
def _final_state(out):
    return {k: v.float() for k, v in torch.load(out / "checkpoint.pt", map_location="cpu",
                                                 weights_only=True)["model"].items()}


def _rows(out):
    return [{k: v for k, v in row.items() if k not in ("wall_s", "images_per_sec")}
            for row in rundir.read_metrics(out)]


def _close_rows(a, b, rtol):
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for x, y in zip(a, b, strict=True):
        for key in x:
            assert x[key] == pytest.approx(y[key], rel=rtol, abs=1e-6), (key, x, y)


@needs_cuda
def test_ghost_equals_loop_batch_norm_on_cuda():
    torch.manual_seed(0)
    ghost = build_model("resnet18", 8, group_size=8).cuda()
    loop = copy.deepcopy(ghost)
    for module in loop.modules():
        if isinstance(module, GhostBatchNorm2d):
            module.group_size = 0
    x = torch.randn(32, 3, 32, 32, device="cuda")
    out_ghost = ghost(x)
    out_loop = torch.cat([loop(part) for part in x.split(8)])
    torch.testing.assert_close(out_ghost, out_loop, rtol=1e-4, atol=1e-4)
    for a, b in zip(ghost.buffers(), loop.buffers(), strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-4, atol=1e-5)


@needs_cuda
def test_a_bf16_run_trains_on_cuda(tmp_path):
    summary = train(tiny_config(device="cuda", amp="bf16", epochs=2), tmp_path / "r", quiet=True)
    rows = rundir.read_metrics(tmp_path / "r")
    assert summary["status"] == "completed" and len(rows) == 2
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in rows)


@needs_cuda
def test_resume_on_cuda_is_exact_under_deterministic(tmp_path, restore_flags):
    cfg = tiny_config(device="cuda", deterministic=True, cuda_graphs="off", epochs=3)
    train(cfg, tmp_path / "straight", quiet=True)
    assert train(cfg, tmp_path / "resumed", quiet=True, stop_at_step=6)["status"] == "interrupted"
    train(cfg, tmp_path / "resumed", quiet=True, resume=True)
    assert _rows(tmp_path / "resumed") == _rows(tmp_path / "straight")


@needs_cuda
def test_graphed_steps_equal_eager_steps(tmp_path, restore_flags):
    """12 steps: 3 eager warm-up steps, one capture, 8 replays, against 12 eager steps."""
    cfg = tiny_config(device="cuda", deterministic=True, epochs=3, bn_group=16)
    eager_cfg = copy.deepcopy(cfg)
    eager_cfg.cuda_graphs = "off"
    graphed_cfg = copy.deepcopy(cfg)
    graphed_cfg.cuda_graphs = "on"
    train(eager_cfg, tmp_path / "off", quiet=True)
    train(graphed_cfg, tmp_path / "on", quiet=True)
    _close_rows(_rows(tmp_path / "on"), _rows(tmp_path / "off"), rtol=1e-4)
    for key, value in _final_state(tmp_path / "off").items():
        torch.testing.assert_close(_final_state(tmp_path / "on")[key], value, rtol=1e-3,
                                   atol=1e-4)


@needs_cuda
def test_resume_with_graphs_continues_the_run(tmp_path, restore_flags):
    cfg = tiny_config(device="cuda", deterministic=True, cuda_graphs="on", epochs=3)
    train(cfg, tmp_path / "straight", quiet=True)
    assert train(cfg, tmp_path / "resumed", quiet=True, stop_at_step=6)["status"] == "interrupted"
    train(cfg, tmp_path / "resumed", quiet=True, resume=True)
    _close_rows(_rows(tmp_path / "resumed"), _rows(tmp_path / "straight"), rtol=1e-4)

"""LARS, LAMB, the poly schedule, label smoothing and BN/bias weight-decay exclusion, checked
against values computed by hand."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from batchscale.config import from_dict
from batchscale.engine import checkpoint, rundir
from batchscale.engine.data import eval_batches
from batchscale.engine.optim import build_optimizer
from batchscale.engine.schedule import LearningRatePlan
from batchscale.engine.setup import build
from batchscale.engine.step import forward_loss
from batchscale.engine.train import train
from batchscale.errors import UserError

from conftest import tiny_config

T = torch.float64


class TwoLayer(nn.Module):
    """linear (2x2 weight + bias) -> batch norm (scale + shift) -> linear (1x2 weight)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(2, 2)
        self.bn = nn.BatchNorm1d(2)
        self.fc2 = nn.Linear(2, 1, bias=False)


def two_layer(**grads):
    """The example with fixed weights (|W1| = 5, |W2| = 10) and the given gradients."""
    model = TwoLayer().to(T)
    values = {"fc1.weight": [[3.0, 0.0], [0.0, 4.0]], "fc1.bias": [1.0, -2.0],
              "bn.weight": [1.0, 1.0], "bn.bias": [0.0, 0.0], "fc2.weight": [[6.0, 8.0]]}
    for name, p in model.named_parameters():
        p.data.copy_(torch.tensor(values[name], dtype=T))
    set_grads(model, **grads)
    return model


def set_grads(model, **grads):
    for name, p in model.named_parameters():
        p.grad = torch.tensor(grads[name.replace(".", "_")], dtype=T)


def optimizer(name, model, **fields):
    cfg = from_dict({"optimizer": name, "lr": 0.5, "batch_size": 32, "base_batch_size": 32,
                     "momentum": 0.9, "weight_decay": 0.1, **fields})
    return build_optimizer(cfg, model)


def close(param, expected):
    torch.testing.assert_close(param.detach(), torch.tensor(expected, dtype=T), rtol=1e-12,
                               atol=1e-12)


GRADS = dict(fc1_weight=[[0.6, 0.0], [0.0, 0.8]],  # |g1| = 1
             fc1_bias=[0.5, 0.5], bn_weight=[0.2, -0.4], bn_bias=[0.1, 0.0],
             fc2_weight=[[0.0, 0.5]])  # |g2| = 0.5


# ---------------------------------------------------------------------- LARS
def test_lars_two_steps_by_hand_with_bn_and_bias_excluded():
    model = two_layer(**GRADS)
    opt = optimizer("lars", model, trust_coefficient=0.01)
    assert [g["name"] for g in opt.param_groups] == ["weights", "bn_and_bias"]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    opt.step()
    # W1: trust = 0.01*5 / (1 + 0.1*5) = 1/30; d = g + 0.1*W1 = [[0.9, 0], [0, 1.2]]
    #     buffer = d/30 = [[0.03, 0], [0, 0.04]]; W1 -= 0.5 * buffer
    close(model.fc1.weight, [[2.985, 0.0], [0.0, 3.98]])
    # W2: trust = 0.01*10 / (0.5 + 0.1*10) = 1/15; d = [[0.6, 1.3]]; buffer = [[0.04, 1.3/15]]
    close(model.fc2.weight, [[6.0 - 0.5 * 0.04, 8.0 - 0.5 * 1.3 / 15]])
    # excluded: plain momentum SGD, no decay, no trust ratio: p -= 0.5 * g
    close(model.fc1.bias, [1.0 - 0.25, -2.0 - 0.25])
    close(model.bn.weight, [1.0 - 0.1, 1.0 + 0.2])
    close(model.bn.bias, [-0.05, 0.0])

    opt.step()  # same gradients again
    # W1 = 0.995 * [[3, 0], [0, 4]], |W1| = 4.975; trust = 0.01*4.975 / (1 + 0.1*4.975)
    trust = 0.04975 / 1.4975
    buffer = [[0.9 * 0.03 + trust * (0.6 + 0.2985), 0.0],
              [0.0, 0.9 * 0.04 + trust * (0.8 + 0.398)]]
    close(model.fc1.weight, [[2.985 - 0.5 * buffer[0][0], 0.0],
                             [0.0, 3.98 - 0.5 * buffer[1][1]]])
    # bias: buffer = 0.9 * 0.5 + 0.5 = 0.95
    close(model.fc1.bias, [0.75 - 0.5 * 0.95, -2.25 - 0.5 * 0.95])


def test_lars_follows_the_paper_when_the_rate_changes():
    """You et al. 2017, Algorithm 1: v <- m v + gamma_t lambda (g + beta w); w <- w - v. The rate
    is inside the buffer, so a step whose rate drops from 0.5 to 0.1 keeps the first step's
    0.5 in the momentum (torch.optim.SGD's form, w -= gamma_t (m v + d), would not)."""
    model = two_layer(**GRADS)
    opt = optimizer("lars", model, trust_coefficient=0.01)
    opt.step()  # gamma = 0.5
    # W1: lambda = 0.01*5 / (1 + 0.1*5) = 1/30; g + beta W1 = [[0.9, 0], [0, 1.2]]
    v1 = [0.5 / 30 * 0.9, 0.5 / 30 * 1.2]  # [0.015, 0.02]
    close(model.fc1.weight, [[3.0 - v1[0], 0.0], [0.0, 4.0 - v1[1]]])
    # bias (excluded: lambda 1, no decay): v = 0.5 * 0.5
    close(model.fc1.bias, [1.0 - 0.25, -2.0 - 0.25])
    for group in opt.param_groups:
        group["lr"] = 0.1
    opt.step()  # gamma = 0.1, the same gradients
    # |W1| = |[[2.985, 0], [0, 3.98]]| = 4.975; lambda = 0.01*4.975 / (1 + 0.1*4.975)
    lam = 0.04975 / 1.4975
    v2 = [0.9 * v1[0] + 0.1 * lam * (0.6 + 0.1 * 2.985),
          0.9 * v1[1] + 0.1 * lam * (0.8 + 0.1 * 3.98)]
    close(model.fc1.weight, [[2.985 - v2[0], 0.0], [0.0, 3.98 - v2[1]]])
    # bias: v = 0.9 * 0.25 + 0.1 * 0.5 = 0.275
    close(model.fc1.bias, [0.75 - 0.275, -2.25 - 0.275])
    # fc2 W2 = [[6, 8]], |W2| = 10, g = [[0, 0.5]]: lambda = 0.1 / (0.5 + 1) = 1/15
    u1 = [0.5 / 15 * 0.6, 0.5 / 15 * (0.5 + 0.8)]
    w2 = [6.0 - u1[0], 8.0 - u1[1]]
    lam2 = 0.01 * math.hypot(*w2) / (0.5 + 0.1 * math.hypot(*w2))
    u2 = [0.9 * u1[0] + 0.1 * lam2 * (0.1 * w2[0]), 0.9 * u1[1] + 0.1 * lam2 * (0.5 + 0.1 * w2[1])]
    close(model.fc2.weight, [[w2[0] - u2[0], w2[1] - u2[1]]])


def test_lars_buffer_of_an_older_checkpoint_takes_its_rate_in():
    """A checkpoint written before the rate moved into the buffer holds sum m^k lambda d: loaded,
    it is multiplied by the saved rate, then steps on as the paper's (exact at a constant rate)."""
    model = two_layer(**GRADS)
    opt = optimizer("lars", model, trust_coefficient=0.01)
    opt.step()
    state = opt.state_dict()
    for slot in state["state"].values():  # as the earlier LARS saved it: no rate, no marker
        slot["momentum_buffer"] = slot["momentum_buffer"] / 0.5
        del slot["buffer_holds_lr"]
    fresh = optimizer("lars", two_layer(**GRADS), trust_coefficient=0.01)
    fresh.load_state_dict(state)
    for before, after in zip(opt.state.values(), fresh.state.values(), strict=True):
        torch.testing.assert_close(after["momentum_buffer"], before["momentum_buffer"],
                                   rtol=1e-15, atol=0)
        assert after["buffer_holds_lr"] is True


def test_lars_default_trust_coefficient_is_0_001():
    assert from_dict({}).trust_coefficient == 0.001
    model = two_layer(**GRADS)
    optimizer("lars", model, momentum=0.0).step()
    # trust = 0.001*5 / 1.5; W1 -= 0.5 * trust * [[0.9, 0], [0, 1.2]]
    trust = 0.005 / 1.5
    close(model.fc1.weight, [[3.0 - 0.5 * trust * 0.9, 0.0], [0.0, 4.0 - 0.5 * trust * 1.2]])


# ---------------------------------------------------------------------- LAMB
def test_lamb_two_steps_by_hand_with_bn_and_bias_excluded():
    grads = {**GRADS, "fc1_weight": [[0.6, -0.3], [0.2, 0.8]]}
    model = two_layer(**grads)
    opt = optimizer("lamb", model, lr=0.1, lamb_eps=1e-6)
    opt.step()
    # step 1: bias-corrected moments are g and g^2, so u = g / (|g| + eps) + wd * w
    eps = 1e-6
    u = [[0.6 / (0.6 + eps) + 0.3, -0.3 / (0.3 + eps) + 0.0],
         [0.2 / (0.2 + eps) + 0.0, 0.8 / (0.8 + eps) + 0.4]]
    u_norm = math.sqrt(sum(x * x for row in u for x in row))
    trust = 5.0 / u_norm
    w1 = [[3.0 - 0.1 * trust * u[0][0], 0.0 - 0.1 * trust * u[0][1]],
          [0.0 - 0.1 * trust * u[1][0], 4.0 - 0.1 * trust * u[1][1]]]
    close(model.fc1.weight, w1)
    # fc2: g = [[0, 0.5]]: the zero entry gives 0 / (0 + eps) = 0; u = [[0.6, 0.5/(0.5+eps) + 0.8]]
    u2 = [0.6, 0.5 / (0.5 + eps) + 0.8]
    trust2 = 10.0 / math.hypot(*u2)
    close(model.fc2.weight, [[6.0 - 0.1 * trust2 * u2[0], 8.0 - 0.1 * trust2 * u2[1]]])
    # excluded: plain Adam, no decay: p -= 0.1 * g / (|g| + eps)
    close(model.fc1.bias, [1.0 - 0.1 * 0.5 / (0.5 + eps), -2.0 - 0.1 * 0.5 / (0.5 + eps)])
    close(model.bn.weight, [1.0 - 0.1 * 0.2 / (0.2 + eps), 1.0 + 0.1 * 0.4 / (0.4 + eps)])

    # step 2, bias gradient 0.5 -> -0.25: m = 0.9*0.1*0.5 + 0.1*(-0.25) = 0.02,
    # v = 0.999*0.001*0.25 + 0.001*0.0625; corrected by 1 - 0.9^2 = 0.19 and 1 - 0.999^2
    set_grads(model, **{**grads, "fc1_bias": [-0.25, -0.25]})
    opt.step()
    m_hat = 0.02 / 0.19
    v_hat = (0.999 * 0.001 * 0.25 + 0.001 * 0.0625) / (1 - 0.999**2)
    step = 0.1 * m_hat / (math.sqrt(v_hat) + eps)
    b1 = 1.0 - 0.1 * 0.5 / (0.5 + eps)
    b2 = -2.0 - 0.1 * 0.5 / (0.5 + eps)
    close(model.fc1.bias, [b1 - step, b2 - step])


# ---------------------------------------------------------------------- degenerate norms
@pytest.mark.parametrize("name", ["lars", "lamb"])
def test_zero_gradient_or_zero_weight_gives_no_nan_and_a_trust_ratio_of_one(name):
    zeros = dict(fc1_weight=[[0.0, 0.0], [0.0, 0.0]], fc1_bias=[0.0, 0.0],
                 bn_weight=[0.0, 0.0], bn_bias=[0.0, 0.0], fc2_weight=[[0.0, 0.0]])
    model = two_layer(**zeros)
    with torch.no_grad():
        model.fc2.weight.zero_()  # zero weight, zero gradient
    model.fc2.weight.grad = torch.tensor([[0.3, -0.4]], dtype=T)  # now zero weight only
    opt = optimizer(name, model, weight_decay=0.0, momentum=0.0)
    opt.step()
    for p in model.parameters():
        assert torch.isfinite(p).all()
    close(model.fc1.weight, [[3.0, 0.0], [0.0, 4.0]])  # zero gradient, no decay: unchanged
    if name == "lars":  # trust 1: W2 = 0 - 0.5 * g
        close(model.fc2.weight, [[-0.15, 0.2]])
    else:  # trust 1: W2 = 0 - 0.5 * g / (|g| + eps)
        close(model.fc2.weight, [[-0.5 * 0.3 / (0.3 + 1e-6), 0.5 * 0.4 / (0.4 + 1e-6)]])


def test_lars_zero_gradient_with_decay_keeps_the_papers_ratio():
    """g = 0, beta > 0: lambda = eta |w| / (0 + beta |w|) = eta / beta (the limit as |g| -> 0),
    so the decay step is gamma eta w, not the gamma beta w of a ratio of 1."""
    model = two_layer(**{**GRADS, "fc1_weight": [[0.0, 0.0], [0.0, 0.0]]})
    optimizer("lars", model, momentum=0.0).step()
    # eta = 0.001, beta = 0.1: lambda = 0.01; w -= 0.5 * 0.01 * 0.1 * w
    close(model.fc1.weight, [[3.0 * (1 - 0.0005), 0.0], [0.0, 4.0 * (1 - 0.0005)]])


# ---------------------------------------------------------------------- weight-decay exclusion
@pytest.mark.parametrize("name", ["sgd", "rmsprop"])
def test_exclude_bn_bias_wd_zeroes_the_decay_of_that_group_only(name):
    zero = dict(fc1_weight=[[0.0, 0.0], [0.0, 0.0]], fc1_bias=[0.0, 0.0], bn_weight=[0.0, 0.0],
                bn_bias=[0.0, 0.0], fc2_weight=[[0.0, 0.0]])
    for exclude in (False, True):
        model = two_layer(**zero)
        opt = optimizer(name, model, momentum=0.0, exclude_bn_bias_wd=exclude)
        assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0 if exclude else 0.1]
        opt.step()
        assert (model.fc1.bias.detach().tolist() == [1.0, -2.0]) == exclude
        assert model.bn.weight.detach().tolist() != [1.0, 1.0] or exclude
        if name == "sgd":  # decay only: W1 -= 0.5 * 0.1 * W1 either way
            close(model.fc1.weight, [[2.85, 0.0], [0.0, 3.8]])
            close(model.fc1.bias, [1.0, -2.0] if exclude else [0.95, -1.9])


# ---------------------------------------------------------------------- poly schedule
def test_poly_schedule_decays_as_a_square_to_zero_after_warmup():
    plan = LearningRatePlan(base_lr=0.1, peak_lr=0.4, steps_per_epoch=10, total_steps=100,
                            warmup_steps=20, schedule="poly")
    assert plan.lr_at(0) == pytest.approx(0.1)
    assert plan.lr_at(10) == pytest.approx(0.25)  # warmup: 0.1 + 0.3 * 10/20
    assert plan.lr_at(20) == pytest.approx(0.4)
    assert plan.lr_at(60) == pytest.approx(0.4 * 0.5**2)  # (1 - 40/80)^2
    assert plan.lr_at(80) == pytest.approx(0.4 * 0.25**2)
    assert plan.lr_at(99) == pytest.approx(0.4 / 80**2)  # the last step
    assert plan.lr_at(100) == 0.0


def test_poly_is_a_config_choice_and_bad_values_are_user_errors():
    from batchscale.engine.schedule import plan_from_config

    cfg = from_dict({"schedule": "poly", "lr": 0.1, "batch_size": 64, "base_batch_size": 64,
                     "epochs": 10, "warmup_epochs": 0})
    plan = plan_from_config(cfg, steps_per_epoch=10)  # 100 steps, no warmup
    assert [plan.lr_at(s) for s in (0, 50, 90)] == pytest.approx([0.1, 0.025, 0.001])
    for bad in ({"optimizer": "adamw"}, {"trust_coefficient": 0}, {"label_smoothing": 1.0},
                {"lamb_beta2": 1.0}):
        with pytest.raises(UserError):
            from_dict(bad)


# ---------------------------------------------------------------------- label smoothing
def test_label_smoothing_mixes_cross_entropy_with_the_uniform_target():
    setup = build(tiny_config(label_smoothing=0.1), progress=False)
    images, labels = next(eval_batches(setup.train, 8))
    loss, logits = forward_loss(setup, images, labels)
    log_p = F.log_softmax(logits.double(), dim=1)
    nll = -log_p.gather(1, labels[:, None]).mean()
    uniform = -log_p.mean()  # mean over classes and samples
    assert loss.item() == pytest.approx((0.9 * nll + 0.1 * uniform).item(), rel=1e-5)


# ---------------------------------------------------------------------- end to end
def test_train_with_lars_poly_and_label_smoothing_completes(tmp_path):
    cfg = tiny_config(optimizer="lars", epochs=1, lr=0.1, schedule="poly", warmup_epochs=0.5,
                      label_smoothing=0.1)
    summary = train(cfg, tmp_path / "run", quiet=True)
    assert summary["status"] == "completed" and summary["epochs_completed"] == 1
    # 4 steps, warmup 2: poly's last rate 0.1 * (1 - 1/2)^2; the label-smoothed training loss
    # is at least the smoothing's floor, 0.1 * mean over classes of -log p >= 0.1 * ln 10
    (row,) = rundir.read_metrics(tmp_path / "run")
    assert row["lr"] == pytest.approx(0.025)
    assert row["train_loss"] >= 0.1 * math.log(10)
    # the checkpoint is LARS's: its groups, and buffers that hold the rate
    saved = checkpoint.load(tmp_path / "run" / checkpoint.NAME)["optimizer"]
    assert [(g["adapt"], g["weight_decay"] > 0) for g in saved["param_groups"]] == [
        (True, True), (False, False)]
    assert saved["state"] and all(s["buffer_holds_lr"] for s in saved["state"].values())


def test_lamb_run_resumes_exactly(tmp_path):
    """LAMB's state (moments, step count) survives a checkpoint: an interrupted run resumes to
    the uninterrupted run's numbers."""
    cfg = tiny_config(optimizer="lamb", lr=0.002, epochs=1)  # 4 steps
    reference = train(cfg, tmp_path / "a", quiet=True)
    assert train(cfg, tmp_path / "b", quiet=True, stop_at_step=2)["status"] == "interrupted"
    resumed = train(cfg, tmp_path / "b", resume=True, quiet=True)
    assert resumed["final_test_acc"] == reference["final_test_acc"]
    assert resumed["final_train_acc"] == reference["final_train_acc"]
    weights = [checkpoint.load(tmp_path / run / checkpoint.NAME)["model"] for run in "ab"]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # bit for bit
    losses = [[row["train_loss"] for row in rundir.read_metrics(tmp_path / run)] for run in "ab"]
    assert losses[0] == losses[1]


# ---------------------------------------------------------------------- presets
def test_beyond_presets_settings():
    from batchscale.study.expand import expand, load_preset, settings

    mini = {(r.recipe, r.batch_size): settings(r) for r in expand(load_preset("beyond-mini"))}
    sizes = sorted({b for _, b in mini})
    mini_sizes = load_preset("mini")["batch_sizes"]
    assert sizes[-1] / sizes[0] == 2 * mini_sizes[-1] / mini_sizes[0] == 32
    assert mini["per-worker-bn", 128]["B_fraction"] <= 4096 / 50000  # beyond's share at 4096
    assert mini["per-worker-bn", 128]["total_steps"] >= 1000
    assert mini["per-worker-bn", 128]["warmup_steps"] >= 24
    assert mini["lars", 128]["peak_lr"] == pytest.approx(3.0, rel=1e-4)
    assert mini["lamb", 128]["peak_lr"] == pytest.approx(0.01, rel=1e-4)
    full = {(r.recipe, r.batch_size): r.cfg for r in expand(load_preset("beyond"))}
    assert full["per-worker-bn", 4096].peak_lr == pytest.approx(3.2)  # the study's divergence
    assert {cfg.optimizer for cfg in full.values()} == {"sgd", "lars", "lamb"}
    assert {cfg.group_size for cfg in full.values()} == {32}


def test_mini_preset_lr_plan():
    """mini: 0.01 at B = 4 scaled linearly, x0.1 decays at epochs 40 and 80 of 120, warmup 2
    epochs for the scaled recipes, noise scale tracked on every 4th step, BN groups of 4."""
    from batchscale.engine.schedule import plan_from_config
    from batchscale.study.expand import expand, load_preset

    runs = {(r.recipe, r.batch_size, r.seed): r.cfg for r in expand(load_preset("mini"))}
    assert {seed for _, _, seed in runs} == {0, 1, 2}
    for (recipe, batch, _), cfg in runs.items():
        steps = 1600 // batch
        plan = plan_from_config(cfg, steps)
        scaled = recipe != "trivial"
        peak = 0.01 * batch / 4 if scaled else 0.01
        assert cfg.peak_lr == pytest.approx(peak)
        assert plan.warmup_steps == (2 * steps if scaled else 0)
        at = {epoch: plan.lr_at(epoch * steps) for epoch in (39, 40, 79, 80, 119)}
        assert at[39] == pytest.approx(peak) and at[40] == pytest.approx(peak * 0.1)
        assert at[79] == pytest.approx(peak * 0.1) and at[80] == pytest.approx(peak * 0.01)
        assert at[119] == pytest.approx(peak * 0.01) and cfg.epochs == 120
        assert cfg.track_noise_scale and cfg.noise_scale_every == 4
        assert cfg.group_size == (4 if recipe == "per-worker-bn" else batch)

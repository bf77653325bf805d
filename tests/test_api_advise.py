"""`batchscale.advise` on a user's pieces (batchscale/api.py): a model factory that is not a
ResNet, a data set of tensors or a Dataset class, a custom loss and an optimizer factory give
the record `batchscale advise` gives, with its files; the user's inputs reach the model as
given; the probe's B_noise is NoiseScale's (one estimator); bad pieces are one UserError line."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from test_examples import EXAMPLES, run_example
from torch import nn
from torch.utils.data import Dataset

from batchscale import advise
from batchscale.analysis import advise as probe
from batchscale.analysis.advise_report import OUTPUTS
from batchscale.config import TrainConfig
from batchscale.engine.data import split_from
from batchscale.engine.setup import build
from batchscale.errors import UserError

INPUTS, CLASSES = 6, 3
RECIPE = dict(lr=0.05, base_batch_size=8, scale_rule="linear", warmup_epochs=1, epochs=8,
              threads=1, seed=1)
CONTEXT_BUDGET = 2400  # holds the noise scale and the Hessian (one run, the default's cap, not)


def clusters(n: int = 192, offset: float = 100.0):
    """Three noisy clusters, shifted by `offset` (a second normalization would show)."""
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(CLASSES, INPUTS, generator=generator)
    y = torch.randint(0, CLASSES, (n,), generator=generator)
    return centers[y] + torch.randn(n, INPUTS, generator=generator) + offset, y


class Standardize(nn.Module):
    def forward(self, x):
        return x - 100.0


def mlp(classes: int) -> nn.Module:
    return nn.Sequential(Standardize(), nn.Linear(INPUTS, 16), nn.Tanh(), nn.Linear(16, classes))


def hinge(output, y):  # a multi-class hinge loss: not cross-entropy
    return F.multi_margin_loss(output, y)


def adam(params, lr):
    return torch.optim.Adam(params, lr=lr)


def sgd(params, lr):
    return torch.optim.SGD(params, lr=lr, momentum=0.8)


class Pairs(Dataset):
    """A user's Dataset class: (input, int label) pairs."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def test_an_mlp_on_tensors_with_its_own_loss_and_optimizer_gets_a_full_record(tmp_path):
    record = advise([8, 32], tmp_path / "advice", model=mlp, dataset=clusters(), loss=hinge,
                    optimizer=adam, budget_images=CONTEXT_BUDGET, **RECIPE)
    assert sorted(p.name for p in (tmp_path / "advice").iterdir()) == sorted(OUTPUTS)
    saved = json.loads((tmp_path / "advice" / "advice.json").read_text())
    assert saved["advice"] == record["advice"] and saved["config"] == record["config"]
    assert [row["batch"] for row in record["rows"]] == [8, 32]
    for row in record["rows"]:
        assert row["verdict"] in ("stable", "at risk", "diverges"), row
        assert row["trials"] and row["reason"] and row["images_per_s"] > 0
        assert row["curvature_bound_lr"] is None  # Adam: no heavy-ball bound
    assert record["advice"]["batch"] in (8, 32)
    assert record["train_images"] == 192 and record["momentum"] is None
    config = record["config"]
    assert config["model"] == "test_api_advise:mlp"
    assert config["loss"] == "test_api_advise:hinge"
    assert config["optimizer"] == "test_api_advise:adam (a user's factory)"
    assert config["dataset"] == ("a user's data set: 192 samples of 6 torch.float32, 3 classes")
    noise = record["noise"]
    assert noise["measurements"] == 2 and len(noise["grad_sq"]) == 2
    if noise["b_noise"] is None:  # a positive number, or none with the reason (never < 0)
        assert "not positive" in noise["why_not"] and sum(noise["grad_sq"]) <= 0, noise
    else:
        assert noise["b_noise"] > 0 and noise["estimator"] == "batchscale.NoiseScale", noise
    text = (tmp_path / "advice" / "advice.md").read_text()
    assert "optimizer test_api_advise:adam" in text
    # a user's optimizer is no kind the held-out recipes had: the overall record only
    assert record["track_record"]["kind"] is None and record["track_record"]["budget"] == "3 trials"
    assert "(a kind no held-out recipe had)" in text


def test_a_default_budget_too_small_for_the_context_leaves_it_out_and_says_so(tmp_path):
    """192 samples × 8 epochs: one run (the cap) holds every first trial only without the noise
    scale and the Hessian, so the default probe leaves them out, names the budget that measures
    them, and stays within one run."""
    record = advise([8, 32], tmp_path / "advice", model=mlp, dataset=clusters(), loss=hinge,
                    optimizer=adam, **RECIPE)
    why = record["context_left_out"]
    assert why.startswith("left out: the default budget is at most 1536 images")
    assert record["noise"]["why_not"] == why and record["curvature"]["why_not"] == why
    assert record["probe_images"] <= record["full_run_images"] == 192 * 8
    assert all(row["trials"] for row in record["rows"])  # every batch its first trial
    assert f"not measured: {why}" in (tmp_path / "advice" / "advice.md").read_text()


def test_a_dataset_class_gives_the_record_of_its_tensors_and_sgd_its_bound(tmp_path):
    x, y = clusters()
    given = dict(model=mlp, optimizer=sgd, classes=4, quiet=True, budget_images=CONTEXT_BUDGET,
                 **RECIPE)
    from_class = advise([8, 32], tmp_path / "a", dataset=Pairs(x, y), **given)
    from_tensors = advise([8, 32], tmp_path / "b", dataset=(x, y), **given)
    for key in ("advice", "noise", "curvature", "config", "momentum"):
        assert from_class[key] == from_tensors[key], key
    assert [r["losses"] for r in from_class["rows"][0]["curves"]] == \
        [r["losses"] for r in from_tensors["rows"][0]["curves"]]
    assert from_class["config"]["dataset"].endswith(", 4 classes")  # classes= over the labels
    assert from_class["momentum"] == 0.8
    lam = from_class["curvature"]["lambda_max"]
    assert from_class["rows"][0]["curvature_bound_lr"] == pytest.approx(2 * 1.8 / lam)


def test_a_users_inputs_reach_the_model_as_given():
    """No CIFAR normalization and no augmentation: every batch, the fixed sample and the
    Hessian's inputs are rows of the user's x."""
    x, y = clusters(64)
    setup = build(TrainConfig(batch_size=16, threads=1), data=split_from((x, y)),
                  model_factory=mlp)
    rows = {tuple(r) for r in x.tolist()}
    images, labels = next(probe.batches_of(setup, 0))
    sample, sample_labels = probe.fixed_sample(setup, 32)
    for inputs, targets in ((images, labels), (sample, sample_labels)):
        assert inputs.dtype == torch.float32 and inputs.shape[1:] == (INPUTS,)
        for row, label in zip(inputs.tolist(), targets.tolist(), strict=True):
            assert tuple(row) in rows and y[x.tolist().index(row)] == label


def test_the_probes_noise_scale_is_noisescales_and_app_a_from_the_parts_gradients():
    """B_noise from autograd's gradients of each base batch, by App. A's formulas and the
    jackknife over the measurements, by hand: what noise_at reports through NoiseScale."""
    x, y = clusters(256)
    setup = build(TrainConfig(batch_size=8, threads=1, seed=3), data=split_from((x, y)),
                  model_factory=mlp, loss_fn=hinge)
    ledger = probe.Ledger(10**6)
    got = probe.noise_at(setup, 3, ledger)
    big = probe.setup_at(setup, 8 * probe.NOISE_SMALL_BATCHES)
    stream = probe.batches_of(big, 1)
    params = list(setup.model.parameters())
    g_sq, trace = [], []
    for _ in range(3):
        images, labels = next(stream)
        grads = [torch.autograd.grad(hinge(setup.model(a), b), params)
                 for a, b in zip(images.split(8), labels.split(8), strict=True)]
        flat = torch.stack([torch.cat([g.flatten() for g in part]).double() for part in grads])
        small, big_sq = flat.square().sum(1).mean().item(), flat.mean(0).square().sum().item()
        b_small, b_big = 8, 64
        g_sq.append((b_big * big_sq - b_small * small) / (b_big - b_small))
        trace.append((small - big_sq) / (1 / b_small - 1 / b_big))
    assert got["grad_sq"] == pytest.approx(g_sq, rel=1e-5)
    assert got["trace_sigma"] == pytest.approx(trace, rel=1e-5)
    ratio = sum(trace) / sum(g_sq)
    loo = [(sum(trace) - t) / (sum(g_sq) - g) for t, g in zip(trace, g_sq, strict=True)]
    mean = sum(loo) / 3
    error = math.sqrt(2 / 3 * sum((v - mean) ** 2 for v in loo))
    assert got["b_noise"] == pytest.approx(ratio, rel=1e-5)
    assert got["b_noise_error"] == pytest.approx(error, rel=1e-4)
    assert (got["small_batch"], got["big_batch"]) == (8, 64)
    assert ledger.pieces == {"noise scale": 3 * 64}
    assert all(p.grad is None for p in params)  # no step, no gradient left behind


def not_a_module(classes):
    return "a model"


def scores(output, y):  # not a scalar
    return F.cross_entropy(output, y, reduction="none")


@pytest.mark.parametrize("change, message", [
    ({"dataset": (torch.zeros(0, INPUTS), torch.zeros(0, dtype=torch.long))},
     "dataset is empty"),
    ({"dataset": Pairs(torch.zeros(0, INPUTS), torch.zeros(0))}, "dataset is empty"),
    ({"dataset": 3}, "dataset must be tensors (x, y) or a map-style torch.utils.data.Dataset"),
    ({"model": not_a_module},
     "model factory not_a_module(3) returned str, not an nn.Module"),
    ({"model": lambda c: nn.Linear(INPUTS, c + 1)},
     "<lambda>: 2 inputs gave an output of (2, 4); a classifier's is (samples, classes) = "
     "(2, 3)"),
    ({"batches": [8, 256]}, "--batches: 256 exceeds the 192 training images"),
    ({"base_batch_size": 512, "batches": [512]}, "batch_size 512 exceeds the 192 training"),
    ({"optimizer": lambda p, lr: None}, "returned NoneType, not a torch.optim.Optimizer"),
    ({"loss": scores}, "loss test_api_advise:scores must return a scalar tensor"),
    ({"dataset": (torch.randn(192, INPUTS), torch.randn(192))},
     "labels must be integer class indices, one per sample (got torch.float32 of shape (192,));"
     " advise judges trials against chance (ln C) and does not take regression targets"),
    ({"classes": 2}, "labels must lie in 0..1, found 0..2"),
])
def test_bad_pieces_are_one_user_error_line(tmp_path, change, message):
    given = {"batches": [8, 32], "model": mlp, "dataset": clusters(), **RECIPE, **change}
    with pytest.raises(UserError) as caught:
        advise(given.pop("batches"), tmp_path / "advice", **given)
    text = str(caught.value)
    assert message in text and "\n" not in text, text
    assert not any((tmp_path / "advice").glob("*"))


def test_the_docs_advise_example_runs_as_it_stands(tmp_path, monkeypatch, capsys):
    """The first code block of docs/api.md's advise() section, executed as written."""
    text = (EXAMPLES.parent / "docs" / "api.md").read_text()
    section = text[text.index("## `advise(...)` in Python"):]
    lines = section.split("\n\n    ", 1)[1].split("\n")
    block = []
    for line in lines:
        if line and not line.startswith("    ") and block:
            break
        block.append(line[4:] if block else line)
    source = "\n".join(block).strip()
    assert "batchscale.advise(" in source
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    try:
        exec(compile(source, "docs/api.md", "exec"), {"__name__": "docs_example"})
    finally:
        torch.set_num_threads(threads)
    batch, verdicts = capsys.readouterr().out.strip().split(" ", 1)
    assert int(batch) in (16, 64, 256) and verdicts.count("'") == 6, verdicts
    assert sorted(p.name for p in (tmp_path / "advice").iterdir()) == sorted(OUTPUTS)


def test_the_example_script_advises_on_its_own_pieces(tmp_path, capsys, monkeypatch):
    """examples/advise_own_model.py (the example docs/api.md quotes) runs and writes its files."""
    monkeypatch.setattr("sys.argv", ["advise_own_model.py", str(tmp_path / "out")])
    run_example("advise_own_model.py")
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out[:3]] == ["B = 16", "B = 64", "B = 256"]
    assert out[-1].startswith("advice: B = ")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(OUTPUTS)

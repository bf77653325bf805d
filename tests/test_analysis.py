"""Filter-normalized directions, Hessian power iteration, the noise-scale estimator,
the landscape at α = 0, the training hook, and the `analyze` command line."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from batchscale.analysis import hessian, landscape
from batchscale.cli import main
from batchscale.engine import noise
from batchscale.engine.models import build_model
from batchscale.engine.rundir import read_metrics
from batchscale.engine.step import evaluate_model
from batchscale.engine.train import train

from conftest import ROOT, tiny_config


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One tiny run (width 4, 256 images, 1 epoch) with the noise scale tracked."""
    out = tmp_path_factory.mktemp("runs") / "b64"
    train(tiny_config(epochs=1, threads=1, bn_group=16, track_noise_scale=True), out, quiet=True)
    return out


# ---------------------------------------------------------------------- directions
def test_each_filter_of_the_direction_has_its_weight_filters_norm():
    model = build_model("resnet18", 4)
    direction = landscape.filter_normalized_direction(model, seed=7)
    checked = 0
    for name, weight in model.named_parameters():
        d = direction[name]
        if weight.ndim >= 2:
            torch.testing.assert_close(d.flatten(1).norm(dim=1),
                                       weight.detach().flatten(1).norm(dim=1))
            checked += 1
        else:
            assert d.abs().max() == 0, name  # BN scales/shifts and biases stay put
    assert checked == 21  # 20 convs + the classifier
    again = landscape.filter_normalized_direction(model, seed=7)
    other = landscape.filter_normalized_direction(model, seed=8)
    assert all(torch.equal(direction[k], again[k]) for k in direction)
    assert not torch.equal(direction["fc.weight"], other["fc.weight"])
    with_1d = landscape.filter_normalized_direction(model, seed=7, include_1d=True)
    torch.testing.assert_close(with_1d["fc.bias"].norm(), model.fc.bias.detach().norm())


# ---------------------------------------------------------------------- Hessian
def test_hessian_top_eigenvalue_of_a_known_quadratic():
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    a = q @ torch.diag(torch.tensor([5.0, 2.0, 1.0, 0.5, -0.3, 0.1], dtype=torch.float64)) @ q.T
    b = torch.randn(6, dtype=torch.float64)
    x = torch.randn(6, dtype=torch.float64, requires_grad=True)

    def chunks():  # 0.5 xᵀAx + bᵀx, split in two weighted halves
        for weight in (0.25, 0.75):
            yield 0.5 * x @ a @ x + b @ x, weight

    result = hessian.top_eigenvalue(chunks, [x], tol=1e-10, max_iters=1000)
    assert result.converged and result.eigenvalue == pytest.approx(5.0, rel=1e-6)


def test_hessian_of_a_model_with_chunked_data_matches_the_exact_matrix():
    torch.manual_seed(1)
    model = nn.Linear(5, 1, bias=False).double()
    x, y = torch.randn(40, 5, dtype=torch.float64), torch.randn(40, 1, dtype=torch.float64)

    def chunks():  # mean squared error, in chunks of 16: Hessian 2 XᵀX / n
        for start in range(0, 40, 16):
            part = slice(start, start + 16)
            yield ((model(x[part]) - y[part]) ** 2).mean(), len(x[part]) / 40

    exact = torch.linalg.eigvalsh(2 * x.T @ x / 40).max().item()
    result = hessian.top_eigenvalue(chunks, list(model.parameters()), tol=1e-12, max_iters=2000)
    assert result.eigenvalue == pytest.approx(exact, rel=1e-6)
    capped = hessian.top_eigenvalue(chunks, list(model.parameters()), tol=0, max_iters=3)
    assert not capped.converged and capped.iterations == 3 and len(capped.history) == 3


# ---------------------------------------------------------------------- noise scale
def test_unbiased_estimates_invert_the_expected_norms():
    grad_sq, trace = 4.0, 100.0
    small, big = (grad_sq + trace / 8, 8), (grad_sq + trace / 64, 64)  # E|G_b|² = |G|² + tr/b
    assert noise.unbiased_estimates(small[0], small[1], big[0], big[1]) == (
        pytest.approx(grad_sq), pytest.approx(trace))


def test_noise_tracker_recovers_synthetic_gradients():
    generator = torch.Generator().manual_seed(0)
    dims, small, big, steps = 50, 8, 64, 3000
    true_grad = torch.full((dims,), 2.0 / dims ** 0.5, dtype=torch.float64)  # |G|² = 4
    stds = torch.linspace(0.5, 2.0, dims, dtype=torch.float64)
    stds *= (100.0 / stds.square().sum()).sqrt()  # tr(Σ) = 100
    tracker = noise.NoiseScaleTracker(small, big, decay=1 - 1 / steps)
    for _ in range(steps):
        samples = true_grad + stds * torch.randn(big, dims, generator=generator,
                                                 dtype=torch.float64)
        small_sq = samples[:small].mean(0).square().sum()  # the small batch is part of the big
        tracker.observe(small_sq, samples.mean(0).square().sum())
    values = tracker.values()
    assert values["noise_grad_sq"] == pytest.approx(4.0, rel=0.1)
    assert values["noise_trace_sigma"] == pytest.approx(100.0, rel=0.05)
    assert values["noise_b_simple"] == pytest.approx(25.0, rel=0.12)


def test_training_with_the_noise_scale_tracked_keeps_the_trajectory(trained_run, tmp_path):
    tracked = read_metrics(trained_run)
    plain_dir = tmp_path / "plain"
    train(tiny_config(epochs=1, threads=1, bn_group=16), plain_dir, quiet=True)
    plain = read_metrics(plain_dir)
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        assert tracked[0][key] == plain[0][key], key
    row = tracked[0]
    assert (row["noise_small_batch"], row["noise_big_batch"]) == (16, 64)
    assert row["noise_trace_sigma"] > 0 and row["noise_grad_sq"] > 0
    assert row["noise_b_simple"] == pytest.approx(row["noise_trace_sigma"] / row["noise_grad_sq"],
                                                  rel=1e-12)
    assert "noise_b_simple" not in plain[0]


def test_every_nth_step_is_observed_and_the_trajectory_kept(trained_run, tmp_path):
    tracker = noise.NoiseScaleTracker(16, 64, decay=0.5, every=3)
    assert [tracker.due() for _ in range(7)] == [True, False, False, True, False, False, True]
    sparse = tmp_path / "every3"
    train(tiny_config(epochs=1, threads=1, bn_group=16, track_noise_scale=True,
                      noise_scale_every=3), sparse, quiet=True)
    row, whole = read_metrics(sparse)[0], read_metrics(trained_run)[0]
    assert row["train_loss"] == whole["train_loss"]  # 4 steps: observed at steps 1 and 4
    assert row["noise_trace_sigma"] > 0 and row["noise_b_simple"] != whole["noise_b_simple"]
    checkpoint = torch.load(sparse / "checkpoint.pt", weights_only=False)
    assert checkpoint["position"]["noise_state"]["count"] == 2


def test_a_small_batch_under_four_images_is_not_tracked(tmp_path, capsys):
    out = tmp_path / "b8"
    train(tiny_config(epochs=1, threads=1, batch_size=8, base_batch_size=8,
                      train_subset=64, track_noise_scale=True), out, quiet=True)
    assert "noise_b_simple" not in read_metrics(out)[0]
    assert "small batch would be 2 image(s) of 8, fewer than 4" in capsys.readouterr().err


def test_noise_scale_state_resumes_exactly(trained_run, tmp_path):
    cfg = tiny_config(epochs=1, threads=1, bn_group=16, track_noise_scale=True)
    assert train(cfg, tmp_path / "r", quiet=True, stop_at_step=2)["status"] == "interrupted"
    train(cfg, tmp_path / "r", quiet=True, resume=True)
    resumed, whole = read_metrics(tmp_path / "r")[0], read_metrics(trained_run)[0]
    for key in ("noise_grad_sq", "noise_trace_sigma", "noise_b_simple", "train_loss"):
        assert resumed[key] == whole[key], key


# ---------------------------------------------------------------------- landscape
def test_landscape_at_zero_is_the_models_own_evaluated_loss(trained_run):
    run = landscape.load_run(trained_run, "cpu")
    record = landscape.slice_run(run, points=3, train_images=100)
    final = read_metrics(trained_run)[-1]
    zero = record["alpha"].index(0.0)
    assert record["alpha"] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert record["test_loss"][zero] == pytest.approx(final["test_loss"], rel=1e-6)
    assert record["test_acc"][zero] == final["test_acc"]
    assert record["train_loss"][zero] == pytest.approx(
        evaluate_model(run.model, run.train_sample(100), 1000)[0], rel=1e-9)
    assert record["sharpness"] == pytest.approx(
        (record["train_loss"][1] + record["train_loss"][3]) / 2 - record["train_loss"][2])
    assert json.loads((trained_run / "landscape.json").read_text())["sharpness"] == \
        record["sharpness"]


def test_interpolating_a_run_with_itself_is_flat(trained_run):
    run = landscape.load_run(trained_run, "cpu")
    record = landscape.interpolate_runs(run, run, points=3, train_images=60, test_images=60)
    assert record["alpha"] == [-0.5, 0.0, 0.5, 1.0, 1.5]
    assert max(record["train_loss"]) - min(record["train_loss"]) < 1e-5


def test_interpolating_two_different_runs_meets_each_at_its_end(trained_run, tmp_path):
    """α = 0 is run A's own evaluated loss and α = 1 run B's, although B differs (another seed),
    and the path between them is not flat."""
    other = tmp_path / "seed4"
    train(tiny_config(epochs=1, threads=1, bn_group=16, seed=4), other, quiet=True)
    first, second = (landscape.load_run(path, "cpu") for path in (trained_run, other))
    sample = first.train_sample(60)
    own = [evaluate_model(run.model, sample, 1000)[0] for run in (first, second)]
    record = landscape.interpolate_runs(first, second, points=3, train_images=60,
                                        test_images=60)
    assert record["alpha"] == [-0.5, 0.0, 0.5, 1.0, 1.5]
    assert record["train_loss"][1] == pytest.approx(own[0], rel=1e-6)
    assert record["train_loss"][3] == pytest.approx(own[1], rel=1e-6)
    assert abs(own[0] - own[1]) > 1e-4  # two different end points
    assert max(record["train_loss"]) - min(record["train_loss"]) > 1e-3


# ---------------------------------------------------------------------- command line
def test_analyze_commands_write_their_files(trained_run, tmp_path, capsys):
    assert main(["analyze", "hessian", str(trained_run), "--images", "40", "--max-iters", "3",
                 "--threads", "1"]) == 0
    result = json.loads((trained_run / "hessian.json").read_text())
    assert result["iterations"] <= 3 and result["images"] == 40
    assert main(["analyze", "landscape", str(trained_run), "--points", "2", "--train-images",
                 "30", "--test-images", "30", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "landscape.png").read_bytes().startswith(b"\x89PNG")
    assert "sharpness" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["analyze", "hessian", "{tmp}/missing"], "no run directory"),
    (["analyze", "landscape", "{tmp}"], "holds no run"),
    (["analyze", "landscape", "{run}", "--interpolate"], "exactly two"),
    (["analyze", "landscape", "{run}", "--points", "1"], "--points"),
])
def test_analyze_user_errors_are_one_line(argv, message, trained_run, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, run=trained_run) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_analyze_refuses_a_run_without_checkpoint(trained_run, tmp_path, capsys):
    (tmp_path / "config.yaml").write_text((trained_run / "config.yaml").read_text())
    assert main(["analyze", "hessian", str(tmp_path)]) == 2
    assert "no checkpoint.pt" in capsys.readouterr().err


# ---------------------------------------------------------------------- report section
def test_report_section_reads_the_analysis_files(tmp_path):
    import shutil

    from batchscale.results.report import write_report

    study = tmp_path / "study"
    shutil.copytree(ROOT / "tests" / "fixtures" / "study-small", study)
    for batch, sharp, eigen in ((8, 0.2, 10.0), (32, 0.5, 30.0)):
        for seed in (0, 1):
            run = study / "trivial" / f"b{batch}" / f"seed{seed}"
            (run / "landscape.json").write_text(json.dumps(
                {"alpha": [-0.5, 0.0, 0.5], "train_loss": [1.0, 0.5, 1.0],
                 "train_acc": [0.5, 0.9 + 0.02 * seed, 0.4], "sharpness": sharp + 0.01 * seed}))
            (run / "hessian.json").write_text(json.dumps({"eigenvalue": eigen + seed}))
    text = write_report(study).read_text()
    section = text[text.index("## Why couldn't we scale further?"):text.index("## Every run")]
    # fit: train accuracy at alpha = 0, seed mean of 0.90 and 0.92
    assert "| trivial | 8 | 0.63 | 0.91 | 0.205 | 10.5 | — | — |" in section
    assert "| trivial | 32 | 0.55 | 0.91 | 0.505 | 30.5 | — | — |" in section
    assert "sharpness rises with B (8: 0.205, 32: 0.505); λ_max rises with B" in section
    assert "first falls more than 0.01 below the smallest batch's at B = 32" in section
    assert "per-worker-bn/b32/seed1` (B = 32) diverged at step 57" in section
    assert (study / "scaling_landscape.png").read_bytes().startswith(b"\x89PNG")


def test_loss_axis_is_capped_near_the_minimum():
    from batchscale.analysis.landscape import loss_ceiling

    alphas = [-1.0, -0.5, 0.0, 0.5, 1.0]
    sharp, flat = [40.0, 3.0, 0.1, 2.5, 60.0], [1.0, 0.3, 0.1, 0.2, 0.9]
    assert loss_ceiling([(alphas, sharp), (alphas, flat)]) == pytest.approx(3.3)
    # below chance level the cap is 1.1 ln(10), unless every curve stays lower still
    assert loss_ceiling([(alphas, [9.0, 1.0, 0.1, 1.0, 9.0])]) == pytest.approx(1.1 * math.log(10))
    assert loss_ceiling([(alphas, flat)]) == pytest.approx(1.05)

"""`batchscale advise`: the lr range test on a quadratic whose divergence threshold is known, the
step-efficiency arithmetic by hand, the verdicts, a tiny end-to-end probe, and bad --batches."""

from __future__ import annotations

import json
import math

import pytest
import torch

from batchscale.analysis import advise_report, advise_rules
from batchscale.cli import main


# ---------------------------------------------------------------------- the range test
def noisy_quadratic(beta: float, curvatures: list[float], noise: float, seed: int = 0):
    """Heavy-ball SGD (torch's) on f(x) = ½ Σ λ_i x_i² with Gaussian gradient noise: the
    `step(lr) -> loss` of a range test. Its iteration diverges exactly when lr·λ_max ≥ 2(1+β)."""
    generator = torch.Generator().manual_seed(seed)
    lam = torch.tensor(curvatures, dtype=torch.float64)
    x = torch.ones(len(curvatures), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([x], lr=1.0, momentum=beta)

    def step(lr: float) -> float:
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad()
        loss = 0.5 * (lam * x * x).sum()
        loss.backward()
        x.grad += noise * torch.randn(len(curvatures), generator=generator, dtype=torch.float64)
        optimizer.step()
        return loss.item()

    return step


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9])
def test_range_test_finds_the_heavy_ball_threshold_of_a_quadratic(beta):
    curvatures = [10.0, 1.0, 0.1]
    threshold = 2 * (1 + beta) / max(curvatures)
    result = advise_rules.range_test(noisy_quadratic(beta, curvatures, noise=1.0), threshold / 10,
                               threshold * 10, 200)
    assert result.diverged and result.ratio == pytest.approx(100 ** (1 / 199))
    steps_off = math.log(result.stable_lr / threshold) / math.log(result.ratio)
    # within the ramp's resolution: one step below, up to the detection lag above it
    # (DIVERGE_PATIENCE steps over the limit + the growth from the noise floor to the limit)
    assert -1 <= steps_off <= advise_rules.DIVERGE_PATIENCE + 5, steps_off
    assert result.diverge_lr == pytest.approx(result.stable_lr * result.ratio)
    assert result.diverge_lr == result.lrs[len(result.losses) - advise_rules.DIVERGE_PATIENCE]
    assert len(result.losses) < 200  # it stopped at divergence


def test_range_test_below_the_threshold_reports_a_lower_bound():
    threshold = 2 * 1.9 / 10.0
    result = advise_rules.range_test(noisy_quadratic(0.9, [10.0], noise=1.0), threshold / 100,
                               threshold / 2, 50)
    assert not result.diverged and result.diverge_lr is None
    assert result.stable_lr == pytest.approx(threshold / 2) and len(result.losses) == 50


def test_step_divergence_criterion():
    assert advise_rules.step_diverged([1.0, float("nan")], reference=10.0)
    assert advise_rules.step_diverged([1.0, 2.1, 2.2, 2.3], reference=1.0)
    assert advise_rules.step_diverged([1.0, 2.1, 1.9, 2.3], reference=1.0)  # mean 2.1 > 2
    assert not advise_rules.step_diverged([1.0, 2.1, 1.5, 2.3], reference=1.0)  # mean 1.97
    assert not advise_rules.step_diverged([2.1, 2.2], reference=1.0)  # fewer than 3 steps
    assert not advise_rules.step_diverged([], reference=1.0)
    # a classifier that started better than chance collapses at chance, before 2× its start
    assert advise_rules.step_diverged([1.8, 2.4, 2.35, 2.4], reference=1.8, chance=math.log(10))
    assert not advise_rules.step_diverged([1.8, 2.4, 2.35, 2.4], reference=1.8)
    assert advise_rules.patience_at(4) == 16 and advise_rules.patience_at(256) == 3


# ---------------------------------------------------------------------- step efficiency
def test_steps_and_images_by_hand():
    # B_noise 100, a base run of 1,100 steps at B0 = 10: S_min = 1100 / (1 + 10) = 100,
    # E_min = 100 × 100 = 10,000
    s_min, e_min = advise_rules.minima_from_base(1100, 10, 100)
    assert (s_min, e_min) == pytest.approx((100, 10_000))
    assert advise_rules.steps_needed(s_min, 100, 10) == pytest.approx(1100)
    assert advise_rules.steps_needed(s_min, 100, 50) == pytest.approx(300)  # 100 × (1 + 2)
    assert advise_rules.images_needed(e_min, 100, 50) == pytest.approx(15_000)  # 300 × 50
    assert advise_rules.steps_needed(s_min, 100, 1000) == pytest.approx(110)
    assert advise_rules.images_needed(e_min, 100, 1000) == pytest.approx(110_000)


def test_predicted_time_is_images_over_throughput():
    rows = [{"batch": 10, "images_per_s": 100.0}, {"batch": 50, "images_per_s": 300.0}]
    advise_rules.predictions(rows, 10, 1100, {"b_noise": 100.0, "b_noise_error": 0.0})
    assert rows[0]["predicted_images"] == pytest.approx(11_000)
    assert rows[0]["predicted_time_s"] == pytest.approx(110)  # 11,000 / 100
    assert rows[1]["predicted_time_s"] == pytest.approx(50)  # 15,000 / 300
    assert rows[1]["predicted_time_range_s"] == pytest.approx([50, 50])


def test_jackknife_ratio_by_hand():
    ratio, error = advise_rules.jackknife_ratio([1.0, 2.0, 3.0], [1.0, 1.0, 1.0])
    # leave-one-out ratios 2.5, 2, 1.5: sqrt(2/3 × 0.5)
    assert ratio == pytest.approx(2.0) and error == pytest.approx(math.sqrt(1 / 3))


def test_verdicts_and_margins():
    diverged = {"diverged": True, "stable_lr": 0.3, "diverge_lr": 0.33}
    assert advise_rules.verdict(0.4, diverged, None)[:2] == ("diverges", pytest.approx(0.75))
    assert advise_rules.verdict(0.25, diverged, None)[0] == "at risk"  # within SAFETY of 0.3
    assert advise_rules.verdict(0.1, diverged, None)[:2] == ("stable", pytest.approx(3.0))
    assert advise_rules.verdict(0.1, diverged, bound_lr=0.05)[0] == "at risk"  # over the bound
    assert advise_rules.verdict(0.1, None, None)[0] == "at risk"  # untested


# ---------------------------------------------------------------------- the command
def test_a_tiny_advise_run_writes_well_formed_files(tmp_path, capsys):
    out = tmp_path / "advice"
    code = main(["advise", "--dataset", "sample", "--width", "4", "--train-subset", "256",
                 "--base-batch-size", "8", "--lr", "0.02", "--scale-rule", "linear",
                 "--warmup-epochs", "1", "--epochs", "50", "--threads", "1", "--seed", "3",
                 "--batches", "8,32", "--out", str(out), "--quiet"])
    assert code == 0
    record = json.loads((out / advise_report.RESULT_JSON).read_text())
    assert record["budget_images"] == 256 * 50 // 10
    assert 0 < record["probe_images"] <= record["budget_images"]
    assert sum(record["probe_pieces"].values()) == record["probe_images"]
    assert [row["batch"] for row in record["rows"]] == [8, 32]
    for row in record["rows"]:
        assert row["verdict"] in ("stable", "at risk", "diverges")
        assert row["images_per_s"] > 0 and row["memory_mb"] > 0
        assert row["peak_lr"] == pytest.approx(0.02 * row["batch"] / 8)
    tested = record["rows"][0]["range_test"]
    assert tested is not None and len(tested["lrs"]) == len(tested["losses"])
    assert record["rows"][1]["range_test"] is None  # 32 did not fit the budget: said so
    # λ_max was measured (power iteration: the eigenvalue of largest magnitude, which here can
    # be negative), and every row was judged against SGD-with-momentum's 2 (1 + β) / λ_max,
    # none where λ_max <= 0
    lam, beta = record["curvature"]["lambda_max"], record["momentum"]
    assert math.isfinite(lam) and record["curvature"]["iterations"] >= 1 and 0 <= beta < 1
    assert [row["curvature_bound_lr"] for row in record["rows"]] == (
        pytest.approx([2 * (1 + beta) / lam] * 2, rel=1e-12) if lam > 0 else [None, None])
    assert record["advice"]["batch"] in (8, 32)
    text = (out / advise_report.RESULT_MD).read_text()
    assert "## Advice" in text and "cannot know" in text and "Not tested (budget): B = 32" in text
    assert (out / advise_report.RESULT_PNG).read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert printed.startswith("| B |") and "advice: B = " in printed
    # a second run does not silently replace the advice
    assert main(["advise", "--batches", "8", "--out", str(out), "--quiet"]) == 2


@pytest.mark.parametrize("batches", ["4,x", "0,16", ",", "-4", "6", "4.5"])
def test_bad_batches_are_one_line_and_exit_2(tmp_path, capsys, batches):
    code = main(["advise", "--bn-group", "4", "--batches", batches, "--out",
                 str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--batches" in err
    assert not (tmp_path / "a").exists()

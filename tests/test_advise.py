"""`batchscale advise`: the held-peak trial and its log bisection on quadratics whose stability
boundary is known (GD is stable iff lr < 2/λ_max; heavy ball iff lr < 2(1+β)/λ_max), the trial
judgement and verdicts by hand, the largest positive Hessian eigenvalue on a known spectrum with
negative eigenvalues, a default-budget run of a short recipe, the --out checks and a plot of
values that cannot be log-scaled."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os

import pytest
import torch

from batchscale import machine
from batchscale.analysis import advise, advise_record, advise_report, advise_rules, hessian
from batchscale.cli import main

PASS = advise_rules.TrialJudgement(False, "", 1.0, 0.5, None)
FAIL = advise_rules.TrialJudgement(True, "no progress", 1.0, 2.0, None)


# ---------------------------------------------------------------------- trials and bisection
def quadratic_trial(curvatures: list[float], beta: float, steps: int = 200):
    """A held-peak trial on f(x) = ½ Σ λ_i x_i² from x = 1 with torch's heavy-ball SGD: it fails
    when the loss after `steps` steps at lr is not below the loss at the start (the loss-progress
    test) or is non-finite. Its boundary is lr = 2(1+β)/λ_max, computed independently."""
    lam = torch.tensor(curvatures, dtype=torch.float64)

    def trial(lr: float) -> advise_rules.TrialJudgement:
        x = torch.ones(len(curvatures), dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.SGD([x], lr=lr, momentum=beta)
        start = 0.5 * (lam * x * x).sum().item()
        for _ in range(steps):
            optimizer.zero_grad()
            loss = 0.5 * (lam * x * x).sum()
            loss.backward()
            optimizer.step()
        end = 0.5 * (lam * x * x).sum().item()
        failed = not math.isfinite(end) or end >= start
        return advise_rules.TrialJudgement(failed, "no progress" if failed else "", start, end,
                                           None)

    return trial


@pytest.mark.parametrize("beta", [0.0, 0.9])
@pytest.mark.parametrize("peak_over_boundary", [0.3, 0.9, 1.7, 6.0])
def test_bisection_brackets_the_known_boundary_of_a_quadratic(beta, peak_over_boundary):
    curvatures = [10.0, 1.0, 0.1]
    boundary = 2 * (1 + beta) / max(curvatures)
    peak = peak_over_boundary * boundary
    bracket = advise_rules.bracket_search(quadratic_trial(curvatures, beta), peak)
    assert bracket.low < boundary <= bracket.high  # the boundary is inside the bracket
    assert bracket.high / bracket.low == pytest.approx(math.sqrt(2))  # refined to √2
    assert bracket.trials[0]["lr"] == peak  # the recipe's peak is tried first
    # ×4 up / ×2 down from the peak, then geometric means: every trial but the last (the √2
    # step) at a power of 2 of the peak
    assert all(any(math.isclose(t["lr"] / peak, 2.0 ** k) for k in range(-4, 4))
               for t in bracket.trials[:-1])
    state, margin, _ = advise_rules.verdict(peak, bracket.low, bracket.high, safety=1.0)
    assert state == ("stable" if peak < boundary else "diverges")
    assert margin == pytest.approx((bracket.low if peak < boundary else bracket.high) / peak)


def test_the_search_steps_up_by_four_then_halves_the_log_interval():
    boundary = 3.0  # a trial passes below 3 and fails from 3 on
    bracket = advise_rules.bracket_search(lambda lr: FAIL if lr >= boundary else PASS, 1.0)
    lrs = [t["lr"] for t in bracket.trials]
    # 1 ✓, 4 ✗, then the geometric means: 2 ✓, √8 = 2.83 ✓ (4 / 2.83 = √2: done)
    assert lrs == pytest.approx([1.0, 4.0, 2.0, math.sqrt(8)])
    assert bracket.low == pytest.approx(math.sqrt(8)) and bracket.high == 4.0
    # from a failure the search halves: 1 ✗, 0.5 ✗, 0.25 ✓, √(1/8) = 0.354 ✓
    down = advise_rules.bracket_search(lambda lr: FAIL if lr >= 0.4 else PASS, 1.0)
    assert [t["lr"] for t in down.trials] == pytest.approx([1.0, 0.5, 0.25, math.sqrt(1 / 8)])


def test_a_long_recipe_credits_a_pass_up_to_four_times_its_peak():
    assert advise_rules.credit_limit(0.5, 30) == 2.0  # 4 × the peak for > 10 epochs
    assert advise_rules.credit_limit(0.5, 10) is None and advise_rules.credit_limit(0.5, 4) is None
    # RMSProp has no limit (round 22's rules), unless told otherwise
    assert advise_rules.credit_limit(0.5, 30, "rmsprop") is None
    assert advise_rules.credit_limit(0.5, 30, "rmsprop", free=()) == 2.0
    assert advise_rules.credit_limit(0.5, 30, "lars") == 2.0
    long = advise_rules.bracket_search(lambda lr: PASS, 1.0, credit=4.0)
    assert [t["lr"] for t in long.trials] == [1.0, 4.0, 8.0]  # it still looks up to 8×
    assert long.low == 8.0 and long.stable_low == 4.0  # ... but is credited to 4×
    assert advise_rules.verdict(4.0, long.stable_low, long.high)[0] == "stable"
    assert advise_rules.verdict(8.0, long.stable_low, long.high)[0] == "at risk"
    failed = advise_rules.bracket_search(lambda lr: FAIL if lr > 6 else PASS, 1.0, credit=4.0)
    # 1 ✓, 4 ✓, 8 ✗, √32 = 5.66 ✓: [4 credited (5.66 passed), 8)
    assert failed.low == pytest.approx(math.sqrt(32)) and failed.stable_low == 4.0
    assert failed.high == 8.0 and advise_rules.verdict(8.0, 4.0, 8.0)[0] == "diverges"
    short = advise_rules.bracket_search(lambda lr: PASS, 1.0)
    assert short.stable_low == short.low == 8.0  # no credit limit: every pass counts


def test_the_table_says_when_a_pass_was_credited_below_the_largest_passed_peak():
    row = {"batch": 16, "images_per_s": 300.0, "memory_mb": 17.6, "fits": True, "peak_lr": 0.001,
           "trials": [{"lr": 0.001, "failed": False}, {"lr": 0.004, "failed": False},
                      {"lr": 0.008, "failed": False}],
           "bracket_low": 0.004, "bracket_high": None, "largest_passed": 0.008,
           "curvature_bound_lr": None, "verdict": "stable", "margin": 4.0}
    credited = advise_report.table({"rows": [row]}).splitlines()[-1]
    assert "| [0.004, —) (passed 0.008; credited to 0.004) |" in credited
    plain = advise_report.table({"rows": [{**row, "largest_passed": 0.004}]}).splitlines()[-1]
    assert "| [0.004, —) |" in plain and "credited" not in plain


def test_bisection_stops_at_its_limits_and_at_the_budget():
    always = advise_rules.bracket_search(lambda lr: PASS, 1.0)
    assert always.low == advise_rules.UP_LIMIT and always.high is None
    assert [t["lr"] for t in always.trials] == [1.0, 4.0, 8.0]  # ×4, then the limit
    never = advise_rules.bracket_search(lambda lr: FAIL, 1.0)
    assert never.low is None and never.high == 1 / advise_rules.DOWN_LIMIT
    assert advise_rules.verdict(1.0, never.low, never.high)[0] == "diverges"
    left = iter([True, True, False])
    budgeted = advise_rules.bracket_search(lambda lr: PASS, 1.0, afford=lambda: next(left))
    assert len(budgeted.trials) == 2 and budgeted.high is None


def test_verdicts_by_hand():
    verdict = advise_rules.verdict
    assert verdict(0.5, 0.5, 1.0, safety=1.0)[:2] == ("stable", pytest.approx(1.0))
    assert verdict(0.25, 0.5, 1.0, safety=1.0)[:2] == ("stable", pytest.approx(2.0))
    assert verdict(1.0, 0.5, 1.0)[:2] == ("diverges", pytest.approx(1.0))
    assert verdict(4.0, 0.5, 1.0)[:2] == ("diverges", pytest.approx(0.25))
    assert verdict(0.7, 0.5, 1.0, safety=1.0)[0] == "at risk"  # inside the bracket
    # the default SAFETY 1: a trial that passed at the peak itself makes it stable
    assert advise_rules.SAFETY == 1.0
    assert verdict(0.5, 0.5, 1.0)[0] == "stable"
    assert verdict(0.5, 0.5, 1.0, safety=math.sqrt(2))[0] == "at risk"
    assert verdict(0.35, 0.5, 1.0, safety=math.sqrt(2))[0] == "stable"
    assert advise_rules.verdict(0.5, None, None)[0] == "at risk"  # untested
    assert advise_rules.verdict(0.5, 0.5, None, safety=2.0)[0] == "at risk"
    assert advise_rules.verdict(0.25, 0.5, None, safety=2.0)[0] == "stable"


def test_trial_shape_by_hand():
    # the warmup ramp from the base rate 0.1 towards the peak 0.5 in 4 steps, then 3 at the peak
    assert advise_rules.trial_rates(0.1, 0.5, 4, 3) == pytest.approx(
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.5])
    assert advise_rules.trial_rates(0.1, 0.5, 0, 2) == [0.5, 0.5]  # no warmup
    assert advise_rules.ramp_steps(125) == advise_rules.RAMP_STEPS
    assert advise_rules.ramp_steps(7) == 7
    hold = advise_rules.hold_steps
    assert hold(1000, 10_000) == advise_rules.HOLD_MAX
    assert hold(2, 10_000) == advise_rules.HOLD_MIN
    assert hold(1000, 5) == 5 and hold(1000, 1) == 3  # never more than the recipe holds it
    assert advise_rules.window_steps(8) == 32 and advise_rules.window_steps(128) == 3


def test_the_base_state_steps_by_hand(monkeypatch):
    """Through the warmup, at least an epoch, at most BASE_SHARE of the run."""
    steps = advise_rules.base_steps
    monkeypatch.setattr(advise_rules, "BASE_SHARE", 1.0)  # the rules through round 24
    assert steps(750, 250, 1000) == 750 and steps(100, 250, 1000) == 250
    assert steps(100, 250, 200) == 200  # never more than the run
    monkeypatch.setattr(advise_rules, "BASE_SHARE", 0.5)
    assert steps(750, 250, 1000) == 500 and steps(400, 250, 1000) == 400
    assert steps(750, 250, 7500) == 750  # a long run: its whole warmup


def test_trials_from_the_initialization_by_hand(monkeypatch):
    """INIT_HOLD lengthens and shields only a trial from the initialization (no warmup ramp)."""
    hold, stop = advise_rules.hold_steps, advise_rules.stop_after
    monkeypatch.setattr(advise_rules, "INIT_HOLD", 16)
    assert hold(2, 10_000, from_init=True) == 16
    assert hold(2, 10_000) == advise_rules.HOLD_MIN  # a warmed-up trial: unchanged
    assert hold(1000, 10_000, from_init=True) == advise_rules.HOLD_MAX  # a floor, not a cap
    assert hold(2, 10, from_init=True) == 10  # never more than the recipe holds its peak
    assert stop(256, 0) == 16 and stop(256, 8) == 3 and stop(8, 0) == 32
    monkeypatch.setattr(advise_rules, "INIT_HOLD", 0)
    assert hold(2, 10_000, from_init=True) == advise_rules.HOLD_MIN and stop(256, 0) == 3


def test_trial_judgement_by_hand():
    judge = advise_rules.judge_trial
    chance = math.log(10)
    # progress and well above chance accuracy: passed
    assert not judge([2.3, 2.2, 2.1], [0.2, 0.3, 0.3], 128, 10, 2.30, 2.0).failed
    # a non-finite step loss, or a non-finite end loss
    assert judge([2.3, float("nan")], [0.1, 0.1], 128, 10, 2.3, 2.0).why == "nonfinite"
    assert judge([2.3, 2.2, 2.1], [0.2] * 3, 128, 10, 2.3, float("inf")).why == "nonfinite"
    # the last window (3 steps at B = 128) exploded: accuracy ≤ 0.1 + 0.02 and loss ≥ 1.25 ln 10
    high = 1.25 * chance + 0.01
    blown = judge([2.0, 2.0, high, high, high], [0.3, 0.3, 0.11, 0.1, 0.1], 128, 10, 2.3, 2.2)
    assert blown.failed and blown.why == "collapse"
    # the same losses at accuracy 0.2 are not at chance; at chance with loss ln 10 (stalled, not
    # exploded) and the fixed sample's loss fell: passed
    assert not judge([2.0, 2.0, high, high, high], [0.2] * 5, 128, 10, 2.3, 2.2).failed
    assert not judge([2.0, chance, chance, chance], [0.1] * 4, 128, 10, 2.3, 2.2).failed
    # no progress on the fixed sample: from 2.0 more than half way back to ln 10 = 2.303
    # (2.0 + 0.5 × 0.303 = 2.151); at 2.1 it passes (noise of a healthy trial)
    assert judge([2.3, 2.2, 2.1], [0.2] * 3, 128, 10, 2.0, 2.2).why == "no progress"
    assert not judge([2.3, 2.2, 2.1], [0.2] * 3, 128, 10, 2.0, 2.1).failed
    # ... unless it is within the slack of where the peak was reached: from 2.29 the limit is
    # 2.29 + 0.5 × 0.013 = 2.2965 (2.28 passes), from 2.25 it is 2.2765 (2.28 fails)
    assert not judge([2.3, 2.2, 2.1], [0.2] * 3, 128, 10, 2.0, 2.28, 2.29).failed
    assert judge([2.3, 2.2, 2.1], [0.2] * 3, 128, 10, 2.0, 2.28, 2.25).failed
    # at B = 8 the window is 32 steps (256 images), the accuracy margin 3σ = 0.05625
    window = [high] * 32
    assert judge([1.0] * 4 + window, [0.5] * 4 + [0.15] * 32, 8, 10, 2.3, 2.2).why == "collapse"
    assert not judge([1.0] * 4 + window, [0.5] * 4 + [0.17] * 32, 8, 10, 2.3, 2.2).failed


def test_no_progress_fails_only_a_network_losing_its_input():
    judge = advise_rules.judge_trial
    gate = advise_rules.PROGRESS_SHARE
    # the fixed sample's loss went from 2.0 to 2.2 (more than half way back to ln 10): no progress
    # while the share is below the gate or not measured; at or above it the network still tells
    # its inputs apart and the trial passes
    assert judge([2.3, 2.2, 2.1], [0.2] * 3, 128, 10, 2.0, 2.2, None, None).why == "no progress"
    assert judge([2.3, 2.2, 2.1], [0.2] * 3, 128, 10, 2.0, 2.2, None,
                 gate - 0.01).why == "no progress"
    assert not judge([2.3, 2.2, 2.1], [0.2] * 3, 128, 10, 2.0, 2.2, None, gate).failed
    assert not judge([2.3, 2.2, 2.1], [0.2] * 3, 128, 10, 2.0, 2.2, None, 0.9).failed
    # the gate leaves the other failures alone: an exploded last window fails at any share
    high = 1.25 * math.log(10) + 0.01
    assert judge([2.0, 2.0, high, high, high], [0.3, 0.3, 0.11, 0.1, 0.1], 128, 10, 2.3, 2.2,
                 None, 0.95).why == "collapse"
    assert advise_rules.SHARE_MIN < gate < 1


def test_input_share_by_hand():
    share = advise_rules.input_share
    # every input the same output vector: no variance with the input at all
    assert share(torch.tensor([[3.0, 1.0, 0.0]] * 4)) == 0.0
    assert share(torch.zeros(5, 3)) == 0.0  # no variance at all counts as dead
    # class means equal (each column has mean 0): all variance is the input's
    assert share(torch.tensor([[1.0, -1.0], [-1.0, 1.0]])) == pytest.approx(1.0)
    # z = [[2, 0], [0, 0]]: overall mean 0.5, total Σ(z - 0.5)² = 2.25 + 3 × 0.25 = 3;
    # column means (1, 0): Σ(z - z̄_c)² = 1 + 1 = 2 -> 2/3
    assert share(torch.tensor([[2.0, 0.0], [0.0, 0.0]])) == pytest.approx(2 / 3)
    # a real network: an initialized ResNet on noise varies with its input (a little: 0.095 with
    # this seed); with its last layer ignoring its features (weights 0) it is dead
    from batchscale.engine.models import build_model
    torch.manual_seed(0)
    net = build_model("resnet18", 2, 10, 0.1, 0)
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        alive = share(net(x))
        last = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.zero_()
        last.bias.copy_(torch.arange(10.0))
        dead = share(net(x))
    assert alive > 0.01 and dead == pytest.approx(0.0, abs=1e-12)


def test_a_dead_network_fails_its_trial():
    judge = advise_rules.judge_trial
    low = advise_rules.SHARE_MIN * 0.9
    # the fixed sample's loss fell (progress) but the outputs hardly depend on the input: dead
    verdict = judge([2.3, 2.2, 2.1], [0.2] * 3, 128, 10, 2.3, 2.2, None, low)
    assert verdict.failed and verdict.why == "dead" and verdict.end_share == low
    # just above the limit it passes; no share measured (None) decides nothing
    assert not judge([2.3, 2.2, 2.1], [0.2] * 3, 128, 10, 2.3, 2.2, None,
                     advise_rules.SHARE_MIN * 1.1).failed
    assert not judge([2.3, 2.2, 2.1], [0.2] * 3, 128, 10, 2.3, 2.2, None, None).failed
    # the bracket records the share of each trial
    bracket = advise_rules.Bracket(0.1)
    bracket.record(0.1, verdict, 3, 384)
    assert bracket.trials[0]["end_share"] == low and bracket.high == 0.1


# ---------------------------------------------------------------------- curvature
def known_quadratic(eigenvalues: list[float], seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), dtype=torch.float64,
                                       generator=generator))
    matrix = q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T
    x = torch.randn(len(eigenvalues), dtype=torch.float64, generator=generator,
                    requires_grad=True)
    # the loss as two weighted chunks, as the probe feeds it
    return (lambda: [(0.5 * x @ matrix @ x, 0.5), (0.5 * x @ matrix @ x, 0.5)]), x


def test_largest_positive_eigenvalue_where_the_largest_magnitude_is_negative():
    spectrum = [-8.0, -3.0, -1.0, 0.0, 0.5, 2.0, 5.0]
    chunks, x = known_quadratic(spectrum)
    power = hessian.top_eigenvalue(chunks, [x], tol=1e-10, max_iters=2000)
    assert power.eigenvalue == pytest.approx(-8.0, rel=1e-4)  # what the old probe reported
    result = hessian.top_positive_eigenvalue(chunks, [x], tol=1e-8, max_iters=20)
    assert result.converged and result.eigenvalue == pytest.approx(5.0, rel=1e-8)
    assert result.smallest == pytest.approx(-8.0, rel=1e-8)
    assert result.residual <= 1e-8 * 5.0 and result.iterations <= len(spectrum)
    # too few iterations: a lower estimate, and it says it did not converge
    short = hessian.top_positive_eigenvalue(chunks, [x], tol=1e-12, max_iters=2)
    assert not short.converged and short.eigenvalue < 5.0 and short.iterations == 2


def test_largest_eigenvalue_of_a_negative_definite_hessian_is_negative():
    chunks, x = known_quadratic([-4.0, -2.0, -0.5])
    result = hessian.top_positive_eigenvalue(chunks, [x], tol=1e-10, max_iters=10)
    assert result.converged and result.eigenvalue == pytest.approx(-0.5, rel=1e-8)


# ---------------------------------------------------------------------- the command
SHORT = ["--dataset", "sample", "--width", "4", "--train-subset", "256", "--base-batch-size",
         "8", "--lr", "0.02", "--scale-rule", "linear", "--warmup-epochs", "1", "--epochs", "2",
         "--threads", "1", "--seed", "3"]


def test_a_default_budget_run_of_a_short_recipe(tmp_path, capsys, monkeypatch):
    out = tmp_path / "advice"
    busy = 2.0 * (os.cpu_count() or 1)  # other work on every core as the probe starts
    monkeypatch.setattr(machine.os, "getloadavg", lambda: (busy, busy, busy))
    assert main(["advise", *SHORT, "--batches", "8,32", "--out", str(out), "--quiet"]) == 0
    record = json.loads((out / advise_report.RESULT_JSON).read_text())
    assert record["budget_default"] and record["budget_images"] >= 256 * 2 // 10
    assert record["budget_images"] >= record["budget_needed_first_trials"]
    assert 0 < record["probe_images"] <= record["budget_images"]
    assert sum(record["probe_pieces"].values()) == record["probe_images"]
    assert [row["batch"] for row in record["rows"]] == [8, 32]
    for row in record["rows"]:
        assert row["trials"], row  # every batch got at least its first trial
        assert row["trials"][0]["lr"] == pytest.approx(row["peak_lr"])
        assert row["peak_lr"] == pytest.approx(0.02 * row["batch"] / 8)
        assert row["verdict"] in ("stable", "at risk", "diverges")
        assert row["images_per_s"] > 0 and row["memory_mb"] > 0
        assert len(row["curves"]) == len(row["trials"])
        state = advise_rules.verdict(row["peak_lr"], row["bracket_low"], row["bracket_high"])
        assert row["verdict"] == state[0]
    lam = record["curvature"]["lambda_max"]
    assert math.isfinite(lam) and lam > 0  # the largest positive eigenvalue, not |λ|'s largest
    assert record["curvature"]["method"] == "Lanczos" and record["curvature"]["iterations"] > 0
    assert record["noise"]["measurements"] > 0 or record["noise"]["why_not"]
    assert all("predicted_steps" not in row for row in record["rows"])  # removed
    text = (out / advise_report.RESULT_MD).read_text()
    assert "## Advice" in text and "cannot know" in text and "A *trial* at B" in text
    assert record["machine_load"] == {"load_1m_at_start": busy, "cpus": os.cpu_count()}
    assert f"1-minute load average was {busy:g} on {os.cpu_count()} CPUs" in text
    assert (out / advise_report.RESULT_PNG).read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert printed.startswith("| B |") and "advice: B = " in printed
    # the track record of this kind (SGD with warmup) at the default budget, for each verdict
    # in the table, as the packaged advise_record.json has it
    track = record["track_record"]
    assert track["kind"] == "sgd with warmup" and track["budget"] == "default"
    counts = advise_record.load()["counts"]["default"]
    for verdict in {row["verdict"] for row in record["rows"]}:
        mine = counts["sgd with warmup"][verdict]
        claim = mine["diverged" if verdict == "diverges" else "trained"]
        assert track["verdicts"][verdict]["kind"]["held"] == claim
        assert f"[{claim}/{sum(mine.values())} = " in text
    assert "held-out record at these rules: " in printed


def test_a_base_state_that_has_not_started_learning_gets_no_trials(tmp_path):
    # by hand: warmed-up bases below chance - margin are judged; at chance, not; a recipe
    # without warmup (its initialization is its own start), a non-finite base (its trials fail
    # as non-finite) and a user's loss (no ln(classes) chance level) always are
    chance = math.log(10)
    learning = advise.base_learning
    assert learning(32, chance - 0.03, 10) and not learning(32, chance - 0.01, 10)
    assert not learning(32, chance + 0.2, 10)
    assert learning(0, chance + 0.2, 10) and learning(32, math.inf, 10)
    assert learning(32, chance + 0.2, 10, cross_entropy=False)
    # end to end: a rate so small that the warmup leaves the network at chance
    out = tmp_path / "advice"
    args = [a if a != "0.02" else "1e-7" for a in SHORT]
    assert main(["advise", *args, "--batches", "8,32", "--out", str(out), "--quiet"]) == 0
    record = json.loads((out / advise_report.RESULT_JSON).read_text())
    assert record["base_learning"] is False and record["base"]["sample_loss"] > chance - 0.02
    for row in record["rows"]:
        assert row["trials"] == [] and row["verdict"] == "at risk"
        assert "has not started learning" in row["reason"]
    assert not any(piece.startswith("trials") for piece in record["probe_pieces"])
    assert "has not started learning" in (out / advise_report.RESULT_MD).read_text()


def test_a_budget_without_room_for_every_first_trial_names_the_batch(tmp_path):
    from batchscale.config import from_dict
    from batchscale.engine.setup import build
    cfg = from_dict({"dataset": "sample", "width": 4, "train_subset": 256, "base_batch_size": 8,
                     "batch_size": 8, "lr": 0.02, "scale_rule": "linear", "warmup_epochs": 1,
                     "epochs": 2, "threads": 1, "seed": 3})
    plan = advise.plan_probe(cfg, [8, 64], 256)
    budget = plan.fixed_images(8) + plan.trial_images(8)  # room for B = 8's first trial only
    record = advise.probe(build(cfg, progress=False), [8, 64], budget)
    small, large = record["rows"]
    assert len(small["trials"]) == 1 and large["trials"] == []
    assert large["verdict"] == "at risk" and "no trial at B = 64" in large["reason"]
    assert f"--budget-images {plan.needed(8)}" in large["reason"]
    with pytest.raises(advise.UserError, match="too small"):
        advise.probe(build(cfg, progress=False), [8, 64], plan.fixed_images(8) - 1)


def test_a_recipe_that_blows_up_in_its_warmup_gets_advice_not_a_traceback(tmp_path):
    out = tmp_path / "advice"
    args = [a if a != "0.02" else "1e6" for a in SHORT]  # the base run itself diverges
    assert main(["advise", *args, "--batches", "8", "--out", str(out), "--quiet"]) == 0
    record = json.loads((out / advise_report.RESULT_JSON).read_text())
    row = record["rows"][0]
    assert row["verdict"] == "diverges" and row["bracket_low"] is None
    assert all(t["failed"] and t["why"] == "nonfinite" for t in row["trials"])
    assert record["curvature"]["lambda_max"] is None and record["curvature"]["why_not"]
    assert record["noise"]["b_noise"] is None and "not finite" in record["noise"]["why_not"]
    assert "not measured" in (out / advise_report.RESULT_MD).read_text()
    assert (out / advise_report.RESULT_PNG).read_bytes()[:4] == b"\x89PNG"


def no_build(*args, **kwargs):
    raise AssertionError("the probe started before --out was checked")


@pytest.mark.parametrize("case", ["file", "under-a-file", "advice-exists"])
def test_out_is_checked_before_anything_is_computed(tmp_path, capsys, monkeypatch, case):
    monkeypatch.setattr(advise, "build", no_build)
    target = tmp_path / "target"
    if case == "file":
        target.write_text("mine")
        out = target
    elif case == "under-a-file":
        target.write_text("mine")
        out = target / "advice"
    else:
        target.mkdir()
        (target / advise_report.RESULT_MD).write_text("mine")
        out = target
    code = main(["advise", *SHORT, "--batches", "8", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(target) in err
    assert "Traceback" not in err
    if case == "advice-exists":
        assert (target / advise_report.RESULT_MD).read_text() == "mine"
    else:
        assert target.read_text() == "mine"


def test_the_plot_survives_values_that_cannot_be_log_scaled(tmp_path):
    row = {"batch": 8, "peak_lr": 0.0, "curves": [
        {"losses": [float("nan"), float("inf")], "failed": True},
        {"losses": [], "failed": False}],
        "trials": [{"lr": -1.0, "failed": True}, {"lr": 0.0, "failed": False}]}
    advise_report.plot({"rows": [row, {**row, "batch": 0}]}, tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    advise_report.plot({"rows": []}, tmp_path / "b.png")
    assert (tmp_path / "b.png").exists()


@pytest.mark.parametrize("batches", ["4,x", "0,16", ",", "-4", "6", "4.5"])
def test_bad_batches_are_one_line_and_exit_2(tmp_path, capsys, batches):
    code = main(["advise", "--bn-group", "4", "--batches", batches, "--out",
                 str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--batches" in err
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("bn_group", [0, 4])
def test_trials_at_a_larger_batch_use_the_recipes_batch_norm(bn_group):
    """A step of the probe at B = 32 equals a step of the recipe's own run at B = 32 from the same
    weights: whole-batch BN stays whole-batch (it was probed with the base batch's groups of 8,
    i.e. as per-worker BN), groups of 4 stay groups of 4."""
    from batchscale.engine.setup import build
    from batchscale.engine.step import forward_loss, prepare_input
    torch.manual_seed(0)
    recipe = {"dataset": "sample", "train_subset": 256, "width": 4, "base_batch_size": 8,
              "batch_size": 8, "bn_group": bn_group, "threads": 1, "epochs": 1}
    base = build(advise_rules.from_dict(recipe), progress=False)
    advise.recipe_groups(base)
    at_32 = advise.setup_at(base, 32)
    own = build(advise_rules.from_dict({**recipe, "batch_size": 32}), progress=False)
    own.model.load_state_dict(base.model.state_dict())
    x, y = base.train.images[:32], base.train.labels[:32]
    from batchscale.engine.data import normalize
    probe_loss = forward_loss(at_32, prepare_input(at_32, normalize(x)), y)[0]
    run_loss = forward_loss(own, prepare_input(own, normalize(x)), y)[0]
    assert probe_loss.item() == pytest.approx(run_loss.item(), rel=1e-6)
    groups = advise.setup_at(build(advise_rules.from_dict(recipe), progress=False), 32)
    stale = forward_loss(groups, prepare_input(groups, normalize(x)), y)[0]  # without the fix
    assert (stale.item() != pytest.approx(run_loss.item(), rel=1e-6)) == (bn_group == 0)


@pytest.mark.parametrize("optimizer", ["sgd", "rmsprop"])
def test_a_trial_leaves_the_state_it_starts_from_unchanged(optimizer):
    """Every trial starts from the same warmed-up state: training after load_state must not
    write into that state (torch's Optimizer.load_state_dict keeps the given tensors when their
    dtype and device match, so without a copy the second trial at B started from the first
    trial's momentum buffers), and the same trial twice gives the same losses."""
    from batchscale.engine.setup import build
    cfg = advise_rules.from_dict({"dataset": "sample", "train_subset": 256, "width": 4,
                                  "base_batch_size": 8, "batch_size": 8, "threads": 1,
                                  "epochs": 2, "warmup_epochs": 1, "optimizer": optimizer,
                                  "lr": 0.05 if optimizer == "sgd" else 0.001})
    setup = build(cfg, progress=False)
    advise.recipe_groups(setup)
    ledger = advise.Ledger(10 ** 9)
    advise.warm_up_base(setup, 8, ledger)
    warm = advise.state_of(setup)
    before = copy.deepcopy(warm)
    at_32 = advise.setup_at(setup, 32)
    sample = advise.fixed_sample(setup, 32)
    start = advise.sample_loss(setup, sample, ledger)
    runs = [advise.run_trial(at_32, warm, cfg.lr * 8, 2, 3, ledger, 10, 10, sample, start)[2]
            for _ in range(2)]
    assert runs[0] == runs[1]
    for key, value in before["optimizer"]["state"].items():
        for name, tensor in value.items():
            assert torch.equal(tensor, warm["optimizer"]["state"][key][name]), name


def test_the_default_budget_by_hand():
    """One run up to 10 epochs, 10/epochs of a run up to 100, a tenth beyond; never below what
    gives every batch its first trial."""
    assert advise.budget_cap(8000, 8) == 8000
    assert advise.budget_cap(30000, 30) == 10000
    assert advise.budget_cap(200000, 200) == 20000
    plan = advise.Plan(base_steps=10, noise_measurements=1, hessian_images=8, hessian_iters=2,
                       timing_images=100, ramp={8: 2, 32: 2}, hold={8: 3, 32: 3},
                       judge_images=16)
    fixed = 100 + 10 * 8 + 16 + 1 * advise.NOISE_SMALL_BATCHES * 8 + 2 * 8 * 2
    assert plan.fixed_images(8) == fixed
    trials = (5 * 8 + 32) + (5 * 32 + 32)
    assert plan.needed(8) == fixed + trials
    assert advise.default_budget(plan, 8, 8000, 8) == fixed + advise.DEFAULT_TRIALS * trials
    assert advise.default_budget(plan, 8, 100000, 8) == 10000  # at least a tenth of a run
    assert advise.default_budget(plan, 8, 400, 4) == fixed + trials  # the cap is below needed
    assert advise.default_budget(plan, 8, 1000, 4) == 1000  # capped at one run
    assert advise.default_budget(plan, 8, 10 ** 7, 200) == 10 ** 6  # a tenth of a long run


def test_a_tight_default_budget_leaves_out_the_context_not_the_trials():
    """By hand: the noise scale, then the Hessian too, is left out only when that brings every
    batch's first trial within the default budget's cap."""
    plan = advise.Plan(base_steps=10, noise_measurements=2, hessian_images=8, hessian_iters=2,
                       timing_images=100, ramp={8: 2, 32: 2}, hold={8: 3, 32: 3},
                       judge_images=16)
    noise, lanczos, needed = 2 * advise.NOISE_SMALL_BATCHES * 8, 2 * 8 * 2, plan.needed(8)
    assert advise.fit_context(plan, 8, needed) == (plan, None)
    smaller, why = advise.fit_context(plan, 8, needed - noise)
    assert (smaller.noise_measurements, smaller.hessian_iters) == (0, 2)
    assert smaller.needed(8) == needed - noise and f"--budget-images {needed}" in why
    smaller, why = advise.fit_context(plan, 8, needed - noise - 1)
    assert (smaller.noise_measurements, smaller.hessian_iters) == (0, 0)
    assert smaller.needed(8) == needed - noise - lanczos
    assert advise.fit_context(plan, 8, needed - noise - lanczos - 1) == (plan, None)


def test_leaving_out_the_context_leaves_every_trial_as_it_was(tmp_path, monkeypatch):
    """The noise scale and the Hessian take no step and keep batch norm's buffers: a probe
    without them runs the same trials, to the same losses, as one with them (the same trial
    budget), so leaving them out changes no verdict."""
    from batchscale.config import from_dict
    cfg = from_dict({"dataset": "sample", "width": 4, "train_subset": 256, "base_batch_size": 8,
                     "batch_size": 8, "lr": 0.02, "scale_rule": "linear", "warmup_epochs": 1,
                     "epochs": 2, "threads": 1, "seed": 3})
    full = advise.plan_probe(cfg, [8, 32], 256)
    bare = dataclasses.replace(full, noise_measurements=0, hessian_iters=0)
    context = full.fixed_images(8) - bare.fixed_images(8)
    assert context > 0
    with_context = advise.advise(cfg, [8, 32], tmp_path / "a", full.needed(8) + 3000, quiet=True)
    monkeypatch.setattr(advise, "plan_probe", lambda *_: bare)
    without = advise.advise(cfg, [8, 32], tmp_path / "b", bare.needed(8) + 3000, quiet=True)
    assert with_context["noise"]["measurements"] > 0 and without["noise"]["measurements"] == 0
    assert without["curvature"]["lambda_max"] is None
    assert with_context["probe_images"] - without["probe_images"] == (
        with_context["probe_pieces"]["noise scale"] + with_context["probe_pieces"]["Hessian"])
    for a, b in zip(with_context["rows"], without["rows"], strict=True):
        assert [t["lr"] for t in a["trials"]] == [t["lr"] for t in b["trials"]]
        assert [c["losses"] for c in a["curves"]] == [c["losses"] for c in b["curves"]]
        assert a["verdict"] == b["verdict"] and len(a["trials"]) > 1


def test_img_s_timed_on_a_busy_machine_say_so(monkeypatch):
    def no_load():
        raise OSError("no load average here")

    monkeypatch.setattr(machine.os, "getloadavg", lambda: (3.0, 1.0, 0.5))
    assert machine.load() == 3.0  # the 1-minute figure
    monkeypatch.setattr(machine.os, "getloadavg", no_load)
    assert machine.load() is None
    busy = advise_report.load_text({"machine_load": {"load_1m_at_start": 2.0, "cpus": 4}})
    assert "lower than on an idle machine" in busy and "was 2 on 4 CPUs" in busy
    for idle in ({"machine_load": {"load_1m_at_start": 1.9, "cpus": 4}},  # under half the cores
                 {"machine_load": {"load_1m_at_start": None, "cpus": 4}},  # no load average
                 {}):  # a record from before the field
        assert advise_report.load_text(idle) == ""

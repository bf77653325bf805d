"""The learning-rate plan, checked against values computed by hand for Tables I, II and III."""

import math

import pytest

from batchscale.config import from_dict
from batchscale.engine.schedule import plan_from_config
from batchscale.errors import UserError

STUDY = dict(lr=0.025, base_batch_size=32, epochs=200, decay_every=50, decay_factor=0.1)
N = 50_000  # CIFAR-10 training images


def plan(batch_size, **overrides):
    cfg = from_dict({**STUDY, "batch_size": batch_size, **overrides})
    return plan_from_config(cfg, N // batch_size)


def test_table1_trivial_scaling_keeps_the_rate_and_decays_every_50_epochs():
    p = plan(2048, scale_rule="none")  # 24 steps per epoch
    assert p.steps_per_epoch == 24 and p.warmup_steps == 0
    assert p.lr_at(0) == 0.025
    assert p.lr_at(50 * 24 - 1) == 0.025
    assert p.lr_at(50 * 24) == pytest.approx(0.0025, rel=1e-12)
    assert p.lr_at(100 * 24) == pytest.approx(0.00025, rel=1e-12)
    assert p.lr_at(199 * 24) == pytest.approx(0.000025, rel=1e-12)


def test_table2_linear_scaling_with_10_epoch_warmup_at_1024():
    p = plan(1024, scale_rule="linear", warmup_epochs=10)  # 48 steps per epoch, peak 0.8
    assert p.peak_lr == pytest.approx(0.8) and p.warmup_steps == 480
    assert p.lr_at(0) == pytest.approx(0.025)
    assert p.lr_at(240) == pytest.approx(0.025 + (0.8 - 0.025) * 240 / 480)
    assert p.lr_at(479) == pytest.approx(0.025 + (0.8 - 0.025) * 479 / 480)
    assert p.lr_at(480) == pytest.approx(0.8)
    assert p.lr_at(50 * 48) == pytest.approx(0.08)


def test_table3_settings_match_the_study_and_the_group_is_32():
    cfg = from_dict({**STUDY, "batch_size": 2048, "warmup_epochs": 10, "bn_group": 32})
    p = plan_from_config(cfg, N // 2048)
    assert cfg.peak_lr == pytest.approx(1.6) and cfg.group_size == 32
    assert p.warmup_steps == 240
    assert p.lr_at(120) == pytest.approx(0.025 + (1.6 - 0.025) / 2)


def test_base_batch_needs_no_warmup_ramp():
    p = plan(32, warmup_epochs=10)
    assert all(p.lr_at(step) == pytest.approx(0.025) for step in (0, 100, 1562 * 10))


def test_sqrt_rule_and_cosine_schedule():
    p = plan(128, scale_rule="sqrt", schedule="cosine", warmup_epochs=0)
    assert p.peak_lr == pytest.approx(0.05)  # 0.025 * sqrt(4)
    half = p.total_steps // 2
    assert p.lr_at(half) == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * half /
                                                                       p.total_steps)))
    assert p.lr_at(p.total_steps) == pytest.approx(0.0, abs=1e-15)


def test_warmup_then_cosine_starts_decaying_after_warmup():
    p = plan(256, warmup_epochs=2, schedule="cosine", epochs=10)  # 195 steps/epoch
    assert p.lr_at(p.warmup_steps) == pytest.approx(0.2)
    assert p.lr_at(p.warmup_steps + 1) < 0.2


def test_batch_growth_replaces_decays_until_the_largest_batch_then_the_rate_decays():
    """B = 32, decays x0.1 at epochs 2, 4, 6 of 8, growth x10 up to 3,200 (50,000 images):
    epochs 0-1: B 32, 1562 steps, lr 0.1; 2-3: B 320, 156 steps, lr 0.1; 4-5: B 3200, 15 steps,
    lr 0.1; 6-7: 32,000 would pass 3,200, so B stays 3200 and the rate decays to 0.01."""
    p = plan(32, lr=0.1, base_batch_size=32, scale_rule="none", epochs=8, decay_every=2,
             batch_growth=10, max_batch_size=3200)
    assert [p.batch_in(e, 32) for e in range(8)] == [32, 32, 320, 320, 3200, 3200, 3200, 3200]
    assert [p.steps_in(e) for e in range(8)] == [1562, 1562, 156, 156, 15, 15, 15, 15]
    starts = [0, 1562, 3124, 3280, 3436, 3451, 3466, 3481, 3496]
    assert [p.epoch_start(e) for e in range(9)] == starts and p.total_steps == 3496
    rates = [p.lr_at(starts[e]) for e in range(8)] + [p.lr_at(starts[8] - 1)]
    assert rates == pytest.approx([0.1] * 6 + [0.01] * 3, rel=1e-12)
    assert p.epoch_of(3123) == 1 and p.epoch_of(3124) == 2 and p.epoch_of(3495) == 7


def test_batch_growth_by_less_than_the_decay_keeps_the_rest_of_the_decay():
    """x0.1 decays, growth x5 (Smith et al.'s hybrid): at each decay the batch x5, the rate x0.5;
    without max_batch_size the training set bounds it (1000 images: 8 -> 40 -> 200 -> 1000)."""
    cfg = from_dict({**STUDY, "batch_size": 8, "lr": 0.2, "base_batch_size": 8, "epochs": 5,
                     "decay_every": 1, "batch_growth": 5})
    p = plan_from_config(cfg, 1000 // 8, 1000)
    assert [p.batch_in(e, 8) for e in range(5)] == [8, 40, 200, 1000, 1000]
    assert [p.lr_at(p.epoch_start(e)) for e in range(5)] == pytest.approx(
        [0.2, 0.1, 0.05, 0.025, 0.0025], rel=1e-12)


def test_batch_growth_options_are_checked():
    with pytest.raises(UserError, match="rate would rise"):
        from_dict({**STUDY, "batch_size": 32, "batch_growth": 20})
    with pytest.raises(UserError, match="needs schedule step"):
        from_dict({**STUDY, "batch_size": 32, "batch_growth": 10, "schedule": "cosine"})
    with pytest.raises(UserError, match="below batch_size"):
        from_dict({**STUDY, "batch_size": 64, "batch_growth": 10, "max_batch_size": 32})

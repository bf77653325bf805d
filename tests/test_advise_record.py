"""The track record advice.md quotes (batchscale/analysis/advise_record.py): Wilson intervals,
tallies and the text by hand, and which probes get numbers. tests/test_advise_truth.py checks
that the packaged advise_record.json is what the committed held-out probes give.

    .venv/bin/python -m pytest tests/test_advise_record.py
"""

import json

import pytest

from batchscale.analysis import advise_record as R
from batchscale.analysis.advise import rules_record


@pytest.mark.parametrize("held, total, low, high", [
    (0, 10, 0.0, 0.27753),  # z²/(n + z²): the rule-of-three's Wilson cousin
    (5, 10, 0.23659, 0.76341),
    (10, 10, 0.72247, 1.0),
    (64, 66, 0.89607, 0.99165),  # centre 0.94386, half-width 0.04779
])
def test_wilson_interval_by_hand(held, total, low, high):
    assert R.wilson(held, total) == pytest.approx((low, high), abs=1e-5)
    assert R.wilson(0, 0) == (0.0, 1.0)


def test_kinds():
    assert R.kind_of({"optimizer": "rmsprop", "warmup_epochs": 0}) == "rmsprop"
    assert R.kind_of({"optimizer": "sgd", "warmup_epochs": 2}) == "sgd with warmup"
    assert R.kind_of({"optimizer": "sgd", "warmup_epochs": 0}) == "sgd without warmup"
    assert R.kind_of({"optimizer": "lars", "warmup_epochs": 1}) is None
    assert R.kind_of({"optimizer": "sgd", "warmup_epochs": 1}, custom_optimizer=True) is None


CELLS = [("default", "rmsprop", "stable", "trains"), ("default", "rmsprop", "stable", "diverges"),
         ("default", "sgd with warmup", "diverges", "diverges"),
         ("default", "sgd with warmup", "diverges", "trains"),
         ("default", "sgd with warmup", "diverges", "diverges"),
         ("3 trials", "rmsprop", "at risk", "trains")]


def test_tally_and_held_by_hand():
    counts = R.tally(CELLS)
    assert counts["default"]["all"]["stable"] == {"trained": 1, "diverged": 1}
    assert counts["default"]["all"]["diverges"] == {"trained": 1, "diverged": 2}
    assert counts["default"]["rmsprop"] == {"stable": {"trained": 1, "diverged": 1}}
    assert counts["3 trials"]["all"] == {"at risk": {"trained": 1, "diverged": 0}}
    diverges = R.held(counts["default"]["all"], "diverges")  # claims: diverged
    assert (diverges["held"], diverges["of"]) == (2, 3)
    assert diverges["interval"] == pytest.approx(list(R.wilson(2, 3)))
    assert R.held(counts["3 trials"]["all"], "at risk")["held"] == 1  # at risk: trained
    assert R.held(counts["default"]["rmsprop"], "diverges") is None


def write_record(path, rules):
    path.write_text(json.dumps({"rules": rules, "rounds": [11, 12], "recipes": 6,
                                "truth": "a truth set", "counts": R.tally(CELLS)}))
    return path


def test_only_a_probe_at_the_recorded_rules_gets_numbers(tmp_path):
    path = write_record(tmp_path / "record.json", rules_record())
    config = {"optimizer": "sgd", "warmup_epochs": 1}
    summary = R.track_record(config, rules_record(), True, path=path)
    assert summary["verdicts"]["diverges"]["kind"]["held"] == 2
    assert summary["verdicts"]["stable"]["kind"] is None  # no stable sgd-with-warmup cell
    assert summary["verdicts"]["stable"]["all"]["of"] == 2
    text = R.record_text(summary, {"diverges"})
    assert "2/3 = 67% (95% interval 21%–94%) [2/3 = 67%" in text
    assert "*stable*" not in text and "a warning, not a proof" in text
    assert R.record_line(summary, {"diverges", "at risk"}) == (
        "held-out record at these rules: diverges held in 2/3 (67%) of held-out cells "
        "(advice.md)")
    other = {**rules_record(), "up_step": 2.0}
    assert "never checked" in R.track_record(config, other, True, path=path)["why_not"]
    missing = R.track_record(config, rules_record(), True, path=tmp_path / "none.json")
    assert "no track record file" in missing["why_not"]
    assert R.record_line(missing, {"stable"}) == ("held-out record: not known (no track record "
                                                  "file (none.json))")
    assert R.record_text(missing, {"stable"}).endswith("Not known: no track record file "
                                                       "(none.json).\n")
    custom = R.track_record(config, rules_record(), False, custom_optimizer=True, path=path)
    assert custom["kind"] is None and custom["budget"] == "3 trials"
    assert "a kind no held-out recipe had" in R.record_text(custom, {"at risk"})

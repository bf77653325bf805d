"""The advise truth set's bookkeeping (scripts/advise_truth.py, docs/results/advise-truth/): the
committed splits are the ones the script computes, a held-out recipe is new, and each round's
held-out probes ran at one set of rules.

    .venv/bin/python -m pytest tests/test_advise_truth.py
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import advise_truth as T  # noqa: E402

ROUNDS = sorted(T.ROUND_RECIPES)


@pytest.mark.parametrize("round_", ROUNDS)
def test_committed_split_is_the_scripts_split(round_):
    """Editing a round's recipes after its split was committed would change what `halves`
    returns: the committed file must still be exactly that."""
    name = "split.json" if round_ == 1 else f"split{round_}.json"
    assert json.loads((T.OUT / name).read_text()) == T.halves(round_)


@pytest.mark.parametrize("round_", [r for r in ROUNDS if r >= 3])
def test_held_out_recipes_are_new(round_):
    """From round 3 on every recipe of the round is held out and every earlier one tunes; no
    held-out recipe repeats an earlier name or an earlier recipe's settings."""
    halves = T.halves(round_)
    earlier = {name: cfg for r in ROUNDS if r < round_ for name, cfg in T.ROUND_RECIPES[r].items()}
    assert set(halves["held_out"]) == set(T.ROUND_RECIPES[round_])
    assert set(halves["tuning"]) == set(earlier)
    larger = round_ in T.LARGER
    for name in halves["held_out"]:
        assert name not in earlier
        same_set = {n: c for n, c in earlier.items() if n.startswith("n4k-") == larger}
        assert T.ROUND_RECIPES[round_][name] not in same_set.values(), name


def test_frozen_rules_come_before_the_round():
    assert all(frozen < round_ for round_, frozen in T.FROZEN_AT.items())
    assert set(T.FROZEN_AT) <= set(ROUNDS)


@pytest.mark.parametrize("round_", [r for r in ROUNDS if r >= 2])
def test_every_probed_round_names_the_commit_that_froze_its_rules(round_):
    """A round's report names the "FROZEN RULES (round N)" commit of N = FROZEN_AT.get(round,
    round); a round probed at an earlier round's rules without its FROZEN_AT entry named none
    (round 26's first report said "unknown")."""
    if not sorted((T.OUT / "advise" / f"round{round_}").glob("held_out*/*/advice.json")):
        pytest.skip(f"round {round_} has no committed held-out probes yet")
    shallow = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=ROOT,
                             capture_output=True, text=True).stdout.strip()
    if shallow != "false":
        pytest.skip("needs the repository's whole history (a shallow or missing git clone)")
    subjects = subprocess.run(["git", "log", "--format=%s"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.splitlines()
    marker = f"FROZEN RULES (round {T.FROZEN_AT.get(round_, round_)})"
    assert any(subject.startswith(marker) for subject in subjects), marker


@pytest.mark.parametrize("round_", [r for r in ROUNDS if r >= 6])
def test_each_rounds_held_out_probes_share_their_rules(round_):
    """A round is probed once, at one frozen set of rules: every committed held-out advice.json
    of the round (both budgets) records the same rules."""
    found = sorted((T.OUT / "advise" / f"round{round_}").glob("held_out*/*/advice.json"))
    if not found:
        pytest.skip(f"round {round_} has no committed held-out probes yet")
    rules = {json.dumps(json.loads(p.read_text())["rules"], sort_keys=True) for p in found}
    assert len(rules) == 1, [str(p) for p in found]


def test_the_packaged_track_record_is_what_the_committed_probes_give():
    """advise_record.json (what advice.md quotes) is regenerated from the committed held-out
    probes at the current rules and the committed outcomes.json, not typed in."""
    from batchscale.analysis.advise_record import RECORD
    record = T.track()
    assert json.loads(RECORD.read_text()) == record
    assert (T.OUT / "track-record.md").read_text() == T.track_markdown(record)


def test_a_round_counts_in_the_track_record_once_its_sweeps_are_complete():
    """Dropping one short cell, or every long cell at one B, of a counted round's recipe takes
    that whole round out of the record; the other rounds stay."""
    cells = json.loads((T.OUT / "outcomes.json").read_text())["cells"]
    counted = T.track(cells)["rounds"]
    last = counted[-1]
    recipe = T.halves(last)["held_out"][0]
    assert T.sweep_complete(recipe, cells)
    short = next(i for i, c in enumerate(cells) if c["recipe"] == recipe and c["length"] == "short")
    no_short = cells[:short] + cells[short + 1:]
    b = T.setup_of(recipe)["batches"][0]
    no_long = [c for c in cells if not (c["recipe"] == recipe and c["length"] == "long"
                                        and c["batch"] == b)]
    for fewer in (no_short, no_long):
        assert not T.sweep_complete(recipe, fewer)
        assert T.track(fewer)["rounds"] == [r for r in counted if r != last]


@pytest.fixture
def fresh_clone(tmp_path, monkeypatch):
    """No run dirs (they are git-ignored), the committed outcomes.json read afresh."""
    monkeypatch.setattr(T, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(T, "_COMMITTED", None)
    return tmp_path / "runs"


def test_a_fresh_clone_collects_every_committed_cell(fresh_clone):
    """`report` rebuilds outcomes.json: without the earlier rounds' run dirs it must keep their
    committed cells, not drop them."""
    committed = json.loads((T.OUT / "outcomes.json").read_text())["cells"]
    assert len(committed) > 800
    assert T.collect(write=False)["cells"] == committed


def test_a_run_dir_here_replaces_the_committed_cell(fresh_clone):
    """A cell trained here is read from its run dirs (a diverged seed makes it diverge), and a
    committed cell is not retrained."""
    cell = next(c for c in json.loads((T.OUT / "outcomes.json").read_text())["cells"]
                if c["outcome"] == "trains" and c["recipe"] not in T.SAME_AT_BASE)
    key = (cell["length"], cell["recipe"], cell["batch"], cell["lr"])
    assert T.train_cell((*key, T.SEEDS[0])).endswith("in outcomes.json before")
    assert not fresh_clone.exists()
    for seed in T.SEEDS:
        d = T.run_dir(*key, seed)
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps(
            {"status": "diverged" if seed == T.SEEDS[0] else "completed", "reason": "nan",
             "final_train_acc": 0.1, "epochs_completed": 1}))
        (d / "metrics.jsonl").write_text(json.dumps(
            {"epoch": 1, "train_loss": 2.5, "train_acc": 0.1, "test_acc": 0.1}) + "\n")
    got = next(c for c in T.collect(write=False)["cells"]
               if (c["length"], c["recipe"], c["batch"], c["lr"]) == key)
    assert got["outcome"] == "diverges"
    assert [s["epochs"] for s in got["seeds"]] == [[[1, 2.5, 0.1, 0.1]]] * len(T.SEEDS)


def test_rescoring_a_probe_gives_the_stable_end_its_own_rules_gave():
    """The track record scores rounds 17-21 at the current rules from their probes' trials
    (RESCORED): `stable_end` must give every committed held-out row's bracket_low at the rules
    it ran at (round 11's: no credit-free optimizer; the current ones: CREDIT_FREE), and the
    current rules must credit an RMSProp 30-epoch pass further than round 11's did."""
    from batchscale.analysis.advise_rules import CREDIT_FREE
    checked = credited = 0
    for path in sorted((T.OUT / "advise").glob("round*/held_out*/*/advice.json")):
        advice = json.loads(path.read_text())
        if not advice["rules"].get("credit_up"):
            continue  # before the credit limit (rounds 1-10): no largest_passed to start from
        free = tuple(advice["rules"].get("credit_free", ()))  # round 11's rules: none
        for row in advice["rows"]:
            assert T.stable_end(row, advice["config"], free) == row["bracket_low"], path
            checked += 1
            credited += T.stable_end(row, advice["config"], CREDIT_FREE) != row["bracket_low"]
    assert checked > 300 and credited > 0


def test_only_rescored_rounds_at_the_previous_rules_count():
    """A probe at round 11's rules counts at the current rules only in a RESCORED round; at any
    other rules, not at all."""
    from batchscale.analysis.advise import rules_record
    rules = rules_record()
    path = T.advise_dir("held_out", "n4k-rmsprop-a095-warmup1-const", "long", 21) / "advice.json"
    advice = json.loads(path.read_text())
    assert advice["rules"] != rules
    now = T.at_current_rules(advice, 21, rules)
    assert now["rules"] == rules and now["rows"][0]["batch"] == advice["rows"][0]["batch"]
    assert T.at_current_rules(advice, 16, rules) is None
    assert T.at_current_rules({**advice, "rules": {**advice["rules"], "up_step": 2.0}}, 21,
                              rules) is None
    assert T.at_current_rules({**advice, "rules": rules}, 16, rules)["rules"] == rules


def test_a_probe_from_before_base_share_counts_where_its_base_state_is_the_same():
    """Round 23 ran at round 22's rules (no base_share): a probe counts as it is at the current
    rules where they warm its base state up the same way, not where BASE_SHARE cuts it short
    (a 4-epoch recipe warming up for 3 epochs)."""
    from batchscale.analysis.advise import rules_record
    from batchscale.analysis.advise_rules import BASE_SHARE
    rules = rules_record()
    assert rules["base_share"] == BASE_SHARE < 1

    def probe(recipe, length):
        return json.loads((T.advise_dir("held_out", recipe, length, 23) / "advice.json")
                          .read_text())

    kept = probe("n4k-nesterov-m095-warmup2-ls", "short")  # 2 warmup epochs of 4: half a run
    assert "base_share" not in kept["rules"] and T.same_base(kept)
    now = T.at_current_rules(kept, 23, rules)
    assert now["rules"] == rules and now["rows"] is kept["rows"]
    cut = probe("n4k-rmsprop-warmup3-wd1e4", "short")  # 3 of 4: the base state stops at 2
    assert not T.same_base(cut) and T.at_current_rules(cut, 23, rules) is None
    assert T.at_current_rules(probe("n4k-rmsprop-warmup3-wd1e4", "long"), 23, rules) is not None


def test_a_recipe_warming_up_for_most_of_its_run_gets_its_first_trials_within_one_run():
    """The probe-cost target (≤ one run under 10 epochs) that rounds 22 and 23 missed where a
    4-epoch recipe warms up for 3 epochs: at BASE_SHARE the base state stops at half a run, and
    the default budget gives every batch its first trial within one run (leaving out the noise
    scale where it must, as advise does); the budget line says the base warmup stops short."""
    from batchscale.analysis import advise
    from batchscale.config import from_dict
    for recipe in ("n4k-warmup3-group8-const", "n4k-rmsprop-warmup3-wd1e4"):
        config, batches = T.probe_config(recipe, "short")
        cfg = from_dict(config)
        plan = advise.plan_probe(cfg, batches, config["train_subset"])
        full_run = config["train_subset"] * cfg.epochs
        assert plan.base_steps * cfg.base_batch_size == full_run // 2 < plan.warmup_steps * 16
        # as advise plans a default budget: the context first gives way to the first trials
        plan, _ = advise.fit_context(plan, cfg.base_batch_size,
                                     advise.budget_cap(full_run, cfg.epochs))
        budget = advise.default_budget(plan, cfg.base_batch_size, full_run, cfg.epochs)
        assert plan.needed(cfg.base_batch_size) <= budget <= full_run
        assert f"base warmup {plan.base_steps} steps of the recipe's {plan.warmup_steps}" in (
            advise.budget_line(cfg, plan, budget, full_run))


def _totals_module():
    import importlib.util
    path = T.OUT / "totals" / "totals.py"
    spec = importlib.util.spec_from_file_location("advise_truth_totals", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_totals_parse_a_reports_targets_table():
    """The totals read the four counts from a report's targets table (hand-written rows in the
    report's own format), and a report missing a row is an error, not a silent zero."""
    totals = _totals_module()
    text = ("| verdicts correct (...) | ≥ 90% | 52/63 = 83% (1 at risk) |\n"
            "| 'stable' where a seed collapsed | 0 | 3 |\n"
            "| of those cells, the recipe's own peak | – | 7/10 right, 0 at risk |\n"
            "| measured boundary inside the bracket | ≥ 80% of (recipe, B) | 5/6 = 83% |\n")
    assert totals.parse(text) == {"right": 52, "n": 63, "at_risk": 1, "false_stable": 3,
                                  "own": 7, "own_n": 10, "brackets": 5, "brackets_n": 6}
    with pytest.raises(ValueError, match="false_stable"):
        totals.parse(text.replace("| 0 | 3 |", "| 0 | three |"))


def test_the_docs_quote_the_totals_of_the_committed_reports():
    """README.md and docs/advise.md quote rounds 6 to the newest reported round; the numbers are
    the sums over the committed reports (totals.py), not typed-in ones, and totals.txt is the
    script's current output."""
    totals = _totals_module()
    rounds = totals.reported_rounds()
    data = totals.totals()
    default, trials = data["default budget"]["sum"], data["3 trials per batch"]["sum"]
    last = rounds[-1]
    assert trials["n"] == default["n"]
    readme = (ROOT / "README.md").read_text()
    advise_md = (ROOT / "docs" / "advise.md").read_text()
    n = f"{trials['n']:,}"
    assert f"Held out (rounds 6–{last}, {n} cells," in readme
    assert f"({default['at_risk']} *at risk*), {trials['right']}/{trials['n']} = " in readme
    assert f'false "stable" {default["false_stable"]} and {trials["false_stable"]}' in readme
    advise_md = " ".join(advise_md.split())  # its lines wrap anywhere
    assert (f"**Rounds 6–{last}** ({n} cells): {default['right']}/{default['n']} = "
            f"{default['right'] / default['n']:.0%} at the default ({default['at_risk']} at risk), "
            f"{trials['right']}/{trials['n']} = {trials['right'] / trials['n']:.0%} with 3 trials; "
            f'false "stable" {default["false_stable"]} and {trials["false_stable"]}') in advise_md
    out = subprocess.run([sys.executable, str(T.OUT / "totals" / "totals.py")], check=True,
                         capture_output=True, text=True).stdout
    assert out == (T.OUT / "totals" / "totals.txt").read_text()

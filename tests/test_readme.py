"""The README matches the code: every option is documented, and the study's commands parse."""

import re
import shlex
import sys

import pytest

from batchscale.cli import build_parser, train_config
from batchscale.config import FIELDS

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import options_table  # noqa: E402

README = (ROOT / "README.md").read_text()
COMMON = ("train --dataset cifar10 --epochs 200 --decay-every 50 --decay-factor 0.1 "
          "--momentum 0.9 --weight-decay 5e-4")


def test_the_options_page_is_generated_from_the_config_and_lists_every_field():
    page = (ROOT / "docs" / "options.md").read_text()
    assert page == options_table.table(), "run python scripts/options_table.py"
    missing = [n for n in FIELDS if f"`--{n.replace('_', '-')}`" not in page]
    assert not missing


def test_the_readme_is_a_users_guide_of_at_most_250_lines():
    assert README.count("\n") <= 250


ROWS = re.findall(r"^\| (I{1,3}) \| (\d+) \| ([\d.]+) \| [^|]+ \| `([^`]+)` \|$", README, re.M)


def test_the_tables_list_every_row_of_the_study():
    assert [(t, int(b)) for t, b, _, _ in ROWS] == [
        (t, 32 * 2 ** i) for t in ("I", "II", "III") for i in range(7)]


@pytest.mark.parametrize("table, batch, peak_lr, options", ROWS)
def test_each_study_row_is_a_valid_command_with_the_study_peak_lr(table, batch, peak_lr, options):
    args = build_parser().parse_args(shlex.split(f"{COMMON} {options}"))
    cfg = train_config(args)
    assert cfg.batch_size == int(batch) and cfg.epochs == 200
    assert cfg.peak_lr == pytest.approx(float(peak_lr))
    assert cfg.warmup_epochs == (0 if table == "I" else 10)
    assert cfg.group_size == (32 if table == "III" else int(batch))

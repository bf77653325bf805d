"""Write docs/options.md, the table of every `batchscale train` option, from the config itself.

    python scripts/options_table.py          # rewrites docs/options.md (tests check it is current)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from batchscale.config import TrainConfig

OUT = Path(__file__).resolve().parents[1] / "docs" / "options.md"
HEADER = """# Every option of `batchscale train`

`--out DIR` (required), `--config FILE.yaml` (fields, overridden by options given on the command
line), `--resume`, `--overwrite`, `--quiet` (no progress bar, no epoch lines; the bar is also off
when stderr is not a terminal). Then one option per config field (`batchscale/config.py`; this
page is generated from it by `python scripts/options_table.py`). "Result" says whether the field
changes what a run computes (no: only how, where or how fast; a study treats runs differing only
in those as one).

| option | default | result | what it is |
|---|---|---|---|
"""


def table() -> str:
    rows = []
    for f in dataclasses.fields(TrainConfig):
        help_text = f.metadata["help"].replace("|", "\\|")
        result = "yes" if f.metadata["affects_result"] else "no"
        default = '""' if f.default == "" else f.default
        rows.append(f"| `--{f.name.replace('_', '-')}` | `{default}` | {result} | {help_text} |")
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    OUT.write_text(table())
    print(f"wrote {OUT}")

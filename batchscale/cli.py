"""The command line: `batchscale train ...` (and `python -m batchscale train ...`).

Every field of TrainConfig is an option (`--batch-size 128`); `--config FILE.yaml` loads fields
first and options given on the command line win. Unknown options and bad values end in one line
on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from batchscale.analysis.commands import (
    add_advise_parser,
    add_analyze_parser,
    advise_command,
    analyze_command,
)
from batchscale.bench import add_bench_parser, bench_command
from batchscale.config import (
    RESUMABLE_FIELDS,
    TrainConfig,
    add_config_options,
    from_dict,
    given_fields,
    load_yaml,
    parse_value,
)
from batchscale.engine import rundir
from batchscale.engine.distributed import LAUNCHER_ENV
from batchscale.engine.train import train
from batchscale.errors import UserError
from batchscale.results.report import add_report_parser, report_command
from batchscale.study.expand import add_study_parser
from batchscale.study.sweep import study_command


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit code 2."""

    def error(self, message):
        raise UserError(message)


def build_parser() -> Parser:
    parser = Parser(prog="batchscale", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    train = commands.add_parser("train", help="train one run into a run directory")
    train.add_argument("--out", required=True, help="run directory to create (or resume)")
    train.add_argument("--config", help="YAML file of config fields")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    train.add_argument("--quiet", action="store_true", help="no progress bar, no epoch lines")
    add_config_options(train)
    add_study_parser(commands)
    add_report_parser(commands)
    add_analyze_parser(commands)
    add_advise_parser(commands)
    add_bench_parser(commands)
    return parser


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The config of a train command: a resumed run's own, a YAML file's, or the defaults."""
    given = given_fields(args)
    if args.resume:
        saved = Path(args.out) / rundir.CONFIG
        if not saved.exists():
            raise UserError(f"cannot resume: {args.out} holds no run (no {rundir.CONFIG})")
        cfg = load_yaml(saved)
        for name, value in given.items():
            if name not in RESUMABLE_FIELDS and parse_value(name, value) != getattr(cfg, name):
                raise UserError(f"--{name.replace('_', '-')} differs from the run being resumed; "
                                f"only {', '.join(RESUMABLE_FIELDS)} may change")
        return from_dict({**cfg.to_dict(), **given})
    base = load_yaml(Path(args.config)).to_dict() if args.config else {}
    return from_dict({**base, **given})


def run_train(args: argparse.Namespace) -> int:
    cfg = train_config(args)
    summary = train(cfg, Path(args.out), resume=args.resume, overwrite=args.overwrite,
                    quiet=args.quiet)
    # under `--workers` the launcher speaks for the workers; under torchrun, rank 0 does
    speaks = "rank" not in summary and not os.environ.get(LAUNCHER_ENV)
    if summary["status"] == "interrupted":
        if speaks:
            print(f"interrupted; resume with: batchscale train --out {args.out} --resume",
                  file=sys.stderr)
        return 128 + int(summary["signal"])
    if not args.quiet and speaks:
        acc = summary["final_test_acc"]
        shown = "n/a" if acc is None else f"{acc:.4f}"
        print(f"{summary['status']}: final test accuracy {shown} "
              f"({summary['test_images']} test images); run directory {args.out}")
    return 0




def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        commands = {"train": run_train, "study": study_command, "report": report_command,
                    "analyze": analyze_command, "bench": bench_command, "advise": advise_command}
        return commands[args.command](args)
    except UserError as err:
        print(f"batchscale: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

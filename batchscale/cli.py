"""The command line: `batchscale train ...` (and `python -m batchscale train ...`).

Every field of TrainConfig is an option (`--batch-size 128`); `--config FILE.yaml` loads fields
first and options given on the command line win. Unknown options and bad values end in one line
on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
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
    check_threads,
    from_dict,
    given_fields,
    load_yaml,
    parse_value,
)
from batchscale.engine import rundir
from batchscale.engine.distributed import LAUNCHER_ENV
from batchscale.engine.train import train
from batchscale.errors import UserError, describe_os_error, one_line
from batchscale.results.report import add_report_parser, report_command
from batchscale.study.expand import add_study_parser, preset_path
from batchscale.study.sweep import study_command

EXAMPLES = """examples:
  batchscale train --out runs/a --width 16 --epochs 10     # a first run on a CPU (minutes)
  batchscale train --out runs/a --resume                   # continue it after Ctrl-C or a kill
  batchscale study --list                                  # the presets of the study
  batchscale study demo --jobs 2                           # a small sweep, then its report
  batchscale report runs/demo                              # report.md and figures again
  batchscale analyze hessian runs/a                        # sharpness of a trained run
  batchscale bench --width 16 --batch-size 128             # engine vs a plain PyTorch loop

`batchscale COMMAND --help` lists each command's options; `--debug` (or BATCHSCALE_DEBUG=1)
shows the traceback of an error instead of its one line."""

DEBUG_ENV = "BATCHSCALE_DEBUG"


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit code 2."""

    def error(self, message):
        raise UserError(message)


def build_parser() -> Parser:
    parser = Parser(prog="batchscale", description=__doc__.splitlines()[0], epilog=EXAMPLES,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of an error (also: {DEBUG_ENV}=1); accepted "
                             "anywhere on the command line")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    train = commands.add_parser("train", help="train one run into a run directory")
    train.add_argument("--out", required=True, help="run directory to create (or resume)")
    train.add_argument("--config", help="YAML file of config fields")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out with its own config.yaml")
    train.add_argument("--extend-epochs", action="store_true",
                       help="with --resume and --epochs N: train the run on to N epochs (step "
                            "and constant schedules only; config.yaml is updated)")
    train.add_argument("--overwrite", action="store_true",
                       help="replace an existing run directory (only a folder holding a run's "
                            "files is deleted)")
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
    if args.extend_epochs and not (args.resume and "epochs" in given):
        raise UserError("--extend-epochs needs --resume and --epochs N")
    if args.resume:
        if args.config:
            raise UserError("--resume takes the run's own config.yaml; --config cannot change it")
        if args.overwrite:
            raise UserError("--resume and --overwrite contradict each other; choose one")
        saved = Path(args.out) / rundir.CONFIG
        if not saved.exists():
            raise UserError(f"cannot resume: {args.out} holds no run (no {rundir.CONFIG})")
        cfg = load_yaml(saved)
        may_change = (*RESUMABLE_FIELDS, "epochs") if args.extend_epochs else RESUMABLE_FIELDS
        for name, value in given.items():
            if name not in may_change and parse_value(name, value) != getattr(cfg, name):
                hint = " (to train longer: --extend-epochs)" if name == "epochs" else ""
                raise UserError(f"--{name.replace('_', '-')} differs from the run being resumed; "
                                f"only {', '.join(RESUMABLE_FIELDS)} may change{hint}")
        cfg = from_dict({**cfg.to_dict(), **given})
    else:
        base = load_yaml(Path(args.config)).to_dict() if args.config else {}
        cfg = from_dict({**base, **given})
    check_threads(cfg)
    return cfg


def run_train(args: argparse.Namespace) -> int:
    cfg = train_config(args)
    try:
        summary = train(cfg, Path(args.out), resume=args.resume, overwrite=args.overwrite,
                        quiet=args.quiet, extend_epochs=args.extend_epochs)
    except OSError as err:  # a full disk: the last checkpoint is whole, the run resumes exactly
        if err.errno not in (errno.ENOSPC, errno.EDQUOT) or not (
                Path(args.out) / "checkpoint.pt").exists():
            raise
        raise UserError(f"{describe_os_error(err)}; free space, then continue the run with: "
                        f"batchscale train --out {args.out} --resume") from None
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


def run_study(args: argparse.Namespace) -> int:
    """`batchscale study`: a preset is a name (presets/NAME.yaml) or an explicit path to a YAML
    file; the default --out of either is runs/NAME."""
    if args.preset and not args.list:
        path = preset_path(args.preset)
        if args.out is None:
            args.out = str(Path("runs") / path.stem)
    return study_command(args)


def run_report(args: argparse.Namespace) -> int:
    """`batchscale report`, its options checked first."""
    if args.target is not None and not 0 < args.target <= 1:
        raise UserError(f"--target is a test accuracy in (0, 1], got {args.target}")
    return report_command(args)


COMMANDS = {"train": run_train, "study": run_study, "report": run_report,
            "analyze": analyze_command, "bench": bench_command, "advise": advise_command}


def dispatch(argv: list[str]) -> int:
    """Parse the command line and run its command."""
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


def error_line(err: BaseException) -> str | None:
    """The one line an error ends in, or None for an error that is a bug (its traceback shows).

    A UserError is the user's to fix; an OSError names its file (a full disk, a folder that
    cannot be written); a worker of `--workers` that loses a peer says so (the launcher's own
    last line then says that the workers failed, with the exit code)."""
    if isinstance(err, UserError):
        return one_line(err)
    if isinstance(err, OSError):
        return describe_os_error(err)
    if os.environ.get(LAUNCHER_ENV) and is_lost_peer(err):
        reason = re.sub(r"^\[[^\]]*\]\s*", "", one_line(err)).split(". ")[0][:160]
        return f"rank {os.environ.get('RANK', '?')}: a peer worker stopped ({reason})"
    return None


def is_lost_peer(err: BaseException) -> bool:
    """Whether `err` is a collective failing because another worker is gone."""
    import torch.distributed as dist

    kinds = tuple(k for k in (getattr(dist, "DistError", None),) if k is not None)
    text = str(err).lower()
    return isinstance(err, kinds) or (isinstance(err, RuntimeError) and any(
        word in text for word in ("connection closed", "connection reset", "gloo", "nccl",
                                  "broken pipe", "peer")))


def main(argv: list[str] | None = None) -> int:
    """The command line; every error a user can cause ends in one line and exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return dispatch([a for a in argv if a != "--debug"])
    except Exception as err:  # noqa: BLE001 (the face-level net: see error_line)
        line = error_line(err)
        if debug or line is None:
            raise
        print(f"batchscale: error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

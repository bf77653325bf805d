"""Why scaling breaks: loss landscape, Hessian sharpness, gradient noise scale.

    batchscale analyze landscape RUN_DIR [RUN_DIR ...]   # RUN_DIR/landscape.json, + figure
    batchscale analyze landscape RUN_A RUN_B --interpolate
    batchscale analyze hessian RUN_DIR [RUN_DIR ...]     # RUN_DIR/hessian.json
    batchscale train ... --track-noise-scale             # noise_* fields in metrics.jsonl

`batchscale report` then adds the section "Why couldn't we scale further?" from these files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from batchscale import files
from batchscale.analysis import advise, advise_report, hessian, landscape
from batchscale.analysis.advise_record import record_line
from batchscale.config import (
    THREADS_PER_CORE,
    add_config_options,
    from_dict,
    given_fields,
    load_yaml,
)
from batchscale.errors import UserError


def add_analyze_parser(commands) -> None:
    analyze = commands.add_parser("analyze", help="loss landscape and Hessian sharpness of runs")
    kinds = analyze.add_subparsers(dest="analysis", required=True,
                                   parser_class=type(analyze))
    common = {"--device": dict(default="auto", choices=("auto", "cpu", "cuda"),
                               help="where to evaluate (default: auto, CUDA if available)"),
              "--threads": dict(type=int, default=0, help="CPU threads (0 = torch's default)")}
    land = kinds.add_parser("landscape", help="1-D filter-normalized loss slices (Li et al. "
                            "2018) of runs, or the path between two runs")
    land.add_argument("runs", nargs="+", metavar="RUN_DIR",
                      help="run directories with a checkpoint.pt (their final weights)")
    land.add_argument("--interpolate", action="store_true",
                      help="the linear path from the first run's weights to the second's")
    land.add_argument("--points", type=int, help="α values (default 51; 41 with --interpolate)")
    land.add_argument("--direction-seed", type=int, default=0,
                      help="seed of the random filter-normalized direction (default: 0)")
    land.add_argument("--include-1d", action="store_true",
                      help="also move BN scales/shifts and biases (default: direction 0 there)")
    land.add_argument("--train-images", type=int, default=1000,
                      help="fixed class-balanced sample of each run's training images (0 = all)")
    land.add_argument("--test-images", type=int, default=0,
                      help="test images per point (0 = the whole test split)")
    land.add_argument("--out", help="folder for the figure and the JSON of all curves "
                      "(default: the runs' common parent folder)")
    hess = kinds.add_parser("hessian", help="top eigenvalue of the training-loss Hessian")
    hess.add_argument("runs", nargs="+", metavar="RUN_DIR",
                      help="run directories with a checkpoint.pt (their final weights)")
    hess.add_argument("--images", type=int, default=1000, help="training images in the sample")
    hess.add_argument("--tol", type=float, default=1e-3,
                      help="stop when successive estimates differ by < tol × |λ|")
    hess.add_argument("--max-iters", type=int, default=100,
                      help="most power iterations (default: 100)")
    hess.add_argument("--seed", type=int, default=0, help="sample and start-vector seed")
    for parser in (land, hess):
        for flag, options in common.items():
            parser.add_argument(flag, **options)


def common_parent(paths: list[Path]) -> Path:
    return Path(os.path.commonpath([str(Path(p).resolve()) for p in paths]))


def analyze_command(args) -> int:
    for run in args.runs:
        landscape.check_run_dir(Path(run))
        if not os.access(run, os.W_OK | os.X_OK):
            raise UserError(f"cannot write the analysis into {run}: the folder is not writable")
    cores = os.cpu_count() or 1
    if not 0 <= args.threads <= THREADS_PER_CORE * cores:
        raise UserError(f"--threads must be 0 (torch's default) or 1 to {THREADS_PER_CORE} x "
                        f"the {cores} cores of this machine, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.analysis == "hessian":
        if args.images < 0 or args.max_iters < 1 or not args.tol > 0:
            raise UserError("--images must be ≥ 0, --max-iters ≥ 1 and --tol > 0")
        for run in args.runs:
            r = hessian.analyze_run(Path(run), args.images, args.tol, args.max_iters, args.seed,
                                    args.device)
            state = "converged" if r["converged"] else "NOT converged"
            print(f"{run}: top Hessian eigenvalue {r['eigenvalue']:.5g} ({state} after "
                  f"{r['iterations']} iterations, tol {r['tol']:g}); {run}/hessian.json")
        return 0
    points = args.points if args.points is not None else (41 if args.interpolate else 51)
    if points < 2 or args.train_images < 0 or args.test_images < 0:
        raise UserError("--points must be ≥ 2 and image counts ≥ 0")
    runs = [Path(r) for r in args.runs]
    if args.interpolate and len(runs) != 2:
        raise UserError("--interpolate needs exactly two run directories")
    out = files.check_output_folder(args.out if args.out else common_parent(runs), "--out")
    cache: dict = {}
    loaded = lambda path: landscape.load_run(path, args.device, cache)  # noqa: E731
    if args.interpolate:
        record = landscape.interpolate_runs(loaded(runs[0]), loaded(runs[1]), points,
                                            args.train_images, args.test_images)
        files.write_text(out / "interpolation.json", json.dumps(record, indent=2) + "\n")
        landscape.plot_interpolation(record, out / "interpolation.png")
        print(f"interpolation: {out / 'interpolation.png'}, {out / 'interpolation.json'}")
        return 0
    records = []
    for run in runs:
        record = landscape.slice_run(loaded(run), points, args.direction_seed,
                                     args.train_images, args.test_images, args.include_1d)
        records.append(record)
        print(f"{run}: sharpness {record['sharpness']:.4g} (training-loss rise at |α| = "
              f"{record['sharpness_alpha']}); {run}/{landscape.RESULT_FILE}")
    files.write_text(out / "landscape_curves.json", json.dumps(records, indent=2) + "\n")
    landscape.plot_slices(records, out / "landscape.png")
    print(f"landscape: {out / 'landscape.png'}, {out / 'landscape_curves.json'}")
    return 0



# ---------------------------------------------------------------------- advise
def add_advise_parser(commands) -> None:
    """`batchscale advise [training options] --batches 4,16,64 --out DIR`."""
    parser = commands.add_parser("advise", help="how far can this recipe's batch scale? a short "
                                 "probe: held-peak stability trials per candidate B")
    parser.add_argument("--batches", required=True,
                        help="candidate batch sizes, comma-separated (e.g. 4,16,64,256)")
    parser.add_argument("--budget-images", type=int, default=0,
                        help="training images the whole probe may use (default: what its trials "
                             "need, at least 10%% of one full run of the recipe)")
    parser.add_argument("--out", required=True, help="folder for advice.json, advice.md, "
                        "advice.png")
    parser.add_argument("--config", help="YAML file of config fields (the recipe)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing advice")
    parser.add_argument("--quiet", action="store_true", help="print only the table")
    add_config_options(parser)


def advise_command(args) -> int:
    advise.check_out(Path(args.out), args.overwrite)  # before anything is computed
    base = load_yaml(Path(args.config)).to_dict() if args.config else {}
    cfg = from_dict({**base, **given_fields(args)})
    batches = advise.check_batches(args.batches, cfg)
    if args.budget_images < 0:
        raise UserError(f"--budget-images must be positive, got {args.budget_images}")
    record = advise.advise(cfg, batches, Path(args.out), args.budget_images, args.overwrite,
                           args.quiet)
    print(advise_report.table(record))
    best = record["advice"]
    print(f"advice: B = {best['batch']}, peak lr {best['peak_lr']:.4g}, warmup "
          f"{best['warmup_epochs']} epochs ({best['warmup_steps']} steps). {best['note']}".rstrip())
    for reason in best["rejected"]:
        print(f"  {reason['sentence']}")
    print(record_line(record["track_record"], {row["verdict"] for row in record["rows"]}))
    print(f"probe: {record['probe_images']} images ({record['probe_fraction']:.1%} of a full "
          f"run), {record['probe_wall_s'] / 60:.1f} min; "
          f"{Path(args.out) / advise_report.RESULT_MD}")
    return 0

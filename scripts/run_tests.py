"""Run the test suite as parallel pytest processes, one per shard of test files.

    python scripts/run_tests.py              # as many shards as CPU cores, at most 2
    python scripts/run_tests.py --shards 1   # one pytest process, as plain `pytest` would
    python scripts/run_tests.py --record     # also rewrite tests/durations.json from this run

`make test` calls it. Most of the suite's time is spent in subprocesses (training runs, torchrun
workers, a local SLURM executor) that use one or two threads each, so two shards use both cores
of a 2-core machine. Files are the unit (module fixtures are built once); they are dealt out
longest first, each to the shard with the least time so far, by the per-file seconds in
tests/durations.json (a file missing there counts as the median). Shard 1's output streams to
the terminal; the others' follows when they end. The exit code is the first non-zero one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from batchscale.files import write_text

ROOT = Path(__file__).resolve().parents[1]


def suite_files(tests: Path) -> list[str]:
    return sorted(p.name for p in tests.glob("test_*.py"))


def deal(files: list[str], seconds: dict[str, float], shards: int) -> list[list[str]]:
    """Longest first, each file to the shard with the least seconds so far."""
    default = statistics.median(seconds.values()) if seconds else 1.0
    cost = {f: seconds.get(f, default) for f in files}
    bins: list[list[str]] = [[] for _ in range(shards)]
    totals = [0.0] * shards
    for f in sorted(files, key=lambda f: (-cost[f], f)):
        k = totals.index(min(totals))
        bins[k].append(f)
        totals[k] += cost[f]
    return [sorted(b) for b in bins if b]


def file_seconds(junit: Path) -> dict[str, float]:
    """Per-file seconds from a pytest JUnit XML report (setup, call and teardown included).

    The classname is the test file's path from pytest's rootdir, dotted, then any class:
    tests.test_x or tests.test_x.TestClass here. Without a config file above the tests, pytest's
    rootdir is the common ancestor of the working directory and the tests, so folders between
    them (a temporary folder named test_..., say) come first: the file is the LAST test_ part
    (classes are named Test...)."""
    totals: dict[str, float] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        parts = case.get("classname", "").split(".")
        name = [part for part in parts if part.startswith("test_")][-1] + ".py"
        totals[name] = totals.get(name, 0.0) + float(case.get("time", 0))
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--tests", type=Path, default=ROOT / "tests",
                        help="the folder of test_*.py files (default: tests/)")
    parser.add_argument("--record", action="store_true",
                        help="rewrite the tests folder's durations.json with this run's seconds")
    args, pytest_args = parser.parse_known_args(argv)  # the rest goes to every pytest
    if args.shards < 1:
        parser.error("--shards must be at least 1")
    tests = args.tests.resolve()
    durations = tests / "durations.json"
    seconds = json.loads(durations.read_text()) if durations.exists() else {}
    shards = deal(suite_files(tests), seconds, args.shards)
    with tempfile.TemporaryDirectory(prefix="batchscale-tests-") as tmp:
        tmp = Path(tmp)
        processes = []
        for k, files in enumerate(shards):
            command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                       f"--basetemp={tmp / f'basetemp{k}'}", f"--junitxml={tmp / f'{k}.xml'}",
                       *pytest_args, *(str(tests / f) for f in files)]
            print(f"shard {k + 1}/{len(shards)}: {len(files)} files "
                  f"(~{sum(seconds.get(f, 0.0) for f in files):.0f} s recorded)", flush=True)
            log = None if k == 0 else open(tmp / f"{k}.log", "w")
            processes.append((subprocess.Popen(command, cwd=ROOT, stdout=log,
                                               stderr=subprocess.STDOUT), log))
        codes = []
        try:
            for k, (process, _) in enumerate(processes):
                process.wait()
                if k == 0 and len(processes) > 1:
                    print(f"shard 1 done; waiting for shards 2-{len(processes)}", flush=True)
        except KeyboardInterrupt:  # pytest's own Ctrl-C handling in each shard, then stop
            for process, _ in processes:
                process.terminate()
                process.wait()
            return 130
        for k, (process, log) in enumerate(processes):
            codes.append(process.returncode)
            if log is not None:
                log.close()
                print(f"\n---- shard {k + 1}/{len(shards)} ----", flush=True)
                sys.stdout.write((tmp / f"{k}.log").read_text())
        print(f"\nshards' exit codes: {codes}", flush=True)
        if args.record and not any(codes):
            measured = {}
            for k in range(len(shards)):
                measured.update(file_seconds(tmp / f"{k}.xml"))
            write_text(durations, json.dumps(dict(sorted(
                (f, round(s, 1)) for f, s in measured.items())), indent=1) + "\n")
            print(f"wrote {durations}")
    return next((c for c in codes if c), 0)


if __name__ == "__main__":
    sys.exit(main())

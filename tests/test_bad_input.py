"""Bad input and damaged files (issue 26): a hostile but fair user's probes.

Each probe asserts exit code 2, exactly one line on stderr that names the problem, no traceback,
and that nothing was written or deleted that should not be. The crafted archives are built here
(small on disk); the memory and signal probes run in a child process, the memory ones asserting
the child's peak RSS (resource.getrusage of a wrapper's RUSAGE_CHILDREN) below 1 GB.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from batchscale import files
from batchscale.cli import main
from batchscale.engine import cifar10, data

from conftest import PATIENCE_S, ROOT

TINY = ["--width", "4", "--train-subset", "256", "--batch-size", "64", "--quiet",
        "--threads", "2", "--device", "cpu"]
GB = 1 << 30


def one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI in-process; assert exit 2 and one line without a traceback; the line."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("batchscale: error: "), err
    assert "Traceback" not in err and "weights_only=False" not in err
    return err


def tree(folder: Path) -> dict[str, str]:
    """Every file below `folder` with its content's hash: what a probe must leave unchanged."""
    return {p.relative_to(folder).as_posix(): _fingerprint(p)
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _fingerprint(path: Path) -> str:
    """A file's content hash (size and mtime for the sparse giants of the probes)."""
    stat = path.stat()
    if stat.st_size > 64 << 20:
        return f"{stat.st_size}:{stat.st_mtime_ns}"
    return hashlib.md5(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------- shared runs
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One finished tiny run of 2 epochs, copied by the probes that damage it."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--out", str(out), *TINY, "--epochs", "2"]) == 0
    return out


def study_of(trained: Path, root: Path) -> Path:
    """A study folder holding a copy of `trained` as its only run, with its study.yaml."""
    study = root / "study"
    shutil.copytree(trained, study / "trivial" / "b64" / "seed0")
    plan = {"preset": "probe", "description": "", "recipes": {"trivial": {"published": None}},
            "runs": [{"recipe": "trivial", "batch_size": 64, "seed": 0,
                      "directory": "trivial/b64/seed0"}]}
    (study / "study.yaml").write_text(yaml.safe_dump(plan))
    return study


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _write_rows(run: Path, rows: list[dict]) -> None:
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


# ---------------------------------------------------------------------- crafted files
def _png(width: int = 32, height: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A 32x32 PNG whose IHDR says width x height (its CRC fixed): the header lies."""
    png = bytearray(_png())
    struct.pack_into(">II", png, 16, width, height)
    struct.pack_into(">I", png, 29, zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def _image_zip(path: Path, extra: dict[str, bytes] | None = None, **options) -> Path:
    with zipfile.ZipFile(path, "w", **options) as archive:
        for split in ("train", "test"):
            for cls in ("cat", "dog"):
                archive.writestr(f"{split}/{cls}/0.png", _png())
        for name, content in (extra or {}).items():
            archive.writestr(name, content)
    return path


def deflated_zeros(mib: int, wbits: int = -15, prefix: bytes = b"") -> tuple[bytes, object]:
    """A deflate stream of `prefix` + `mib` MiB of zeros built in milliseconds: after a full
    flush each further MiB of zeros compresses to the same bytes, so they are repeated. Returns
    (the stream so far, the compressor, to be finished by the caller)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    zeros = bytes(1 << 20)
    head = compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)
    first = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    again = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert first == again  # the repeat is exact
    return head + first * mib, compressor


def lying_zip(path: Path, mib: int = 2048, declared: int = 1000) -> Path:
    """An image zip whose member train/cat/1.png inflates to `mib` MiB of zeros while its local
    header and central directory say `declared` bytes (the issue's probe, 2x larger)."""
    stream, compressor = deflated_zeros(mib)
    stream += compressor.flush()
    name = b"train/cat/1.png"
    crc = zlib.crc32(b"not the content")  # zipfile's check then fails: "Bad CRC-32"
    good = io.BytesIO()
    _image_zip(good)
    body = good.getvalue()
    central_at = body.index(b"PK\x01\x02")
    end = body[body.index(b"PK\x05\x06"):]
    count, cd_size = struct.unpack_from("<HI", end, 10)
    local = struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, 8, 0, 0x21, crc, len(stream),
                        declared, len(name), 0) + name
    offset = central_at
    central = (body[central_at:central_at + cd_size]
               + struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, 8, 0, 0x21, crc,
                             len(stream), declared, len(name), 0, 0, 0, 0, 0, offset) + name)
    records = body[:central_at] + local + stream
    eocd = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, count + 1, count + 1, len(central),
                       len(records), 0)
    path.write_bytes(records + central + eocd)
    return path


def _tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT)


def binbytes8_tar_gz(path: Path, mib: int = 1024) -> Path:
    """A .tar.gz whose data_batch_1 is a protocol-4 pickle of a `mib` MiB bytes object
    (BINBYTES8): the issue's 1.4 MB archive that peaked at 2.36 GB."""
    size = mib << 20
    pickled_head = b"\x80\x04\x8e" + struct.pack("<Q", size)
    header = _tar_header("cifar-10-batches-py/data_batch_1", len(pickled_head) + size + 1)
    stream, compressor = deflated_zeros(mib, wbits=31, prefix=header + pickled_head)
    stream += compressor.compress(b"." + bytes(-(len(pickled_head) + size + 1) % 512)
                                  + bytes(1024)) + compressor.flush()
    path.write_bytes(stream)
    return path


def _tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return path


def _official_members(**replace: bytes) -> dict[str, bytes]:
    good = pickle.dumps({b"labels": [0], b"data": np.zeros((1, 3072), np.uint8)}, protocol=2)
    members = {name: good for name in (*cifar10.TRAIN_MEMBERS, cifar10.TEST_MEMBER)}
    members[cifar10.META_MEMBER] = pickle.dumps({b"label_names": [b"a"] * 10}, protocol=2)
    return {**members, **replace}


def run_measured(argv: list[str], cwd: Path, env: dict | None = None,
                 timeout: float = 120) -> tuple[int, str, float]:
    """`batchscale ARGV` in a grandchild; (exit code, stderr, its peak RSS in GB). A wrapper
    child waits for it, so RUSAGE_CHILDREN holds that one process tree only."""
    wrapper = ("import json, resource, subprocess, sys\n"
               "r = subprocess.run([sys.executable, '-m', 'batchscale', *sys.argv[1:]], "
               "capture_output=True, text=True)\n"
               "kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
               "print(json.dumps([r.returncode, r.stderr, kb / 2**20]))\n")
    result = subprocess.run([sys.executable, "-c", wrapper, *argv], cwd=cwd, text=True,
                            capture_output=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    code, stderr, peak_gb = json.loads(result.stdout)
    return code, stderr, peak_gb


# ---------------------------------------------------------------------- the probes
# Each probe: (id, setup(tmp, trained) -> argv, the words the one line must hold). Setups write
# what they need under tmp; "{tmp}" in an argv is that folder.
def _yaml_file(text: str, name: str = "c.yaml"):
    def setup(tmp, trained):
        (tmp / name).write_text(text)
        return ["train", "--out", tmp / "r", "--config", tmp / name, *TINY]
    return setup


def _argv(*argv):
    return lambda tmp, trained: [str(a).replace("{tmp}", str(tmp)) for a in argv]


def _train(*options):
    return lambda tmp, trained: ["train", "--out", tmp / "r", *TINY, *options]


def _preset(text: str, *extra):
    def setup(tmp, trained):
        (tmp / "pre.yaml").write_text(text)
        return ["study", tmp / "pre.yaml", "--dry-run", *extra]
    return setup


def _report(damage):
    def setup(tmp, trained):
        study = study_of(trained, tmp)
        damage(study, study / "trivial" / "b64" / "seed0")
        return ["report", study]
    return setup


def _drop_test_acc(study, run):
    rows = _rows(run)
    del rows[-1]["test_acc"]
    _write_rows(run, rows)


def _set_last(key, value):
    def damage(study, run):
        rows = _rows(run)
        rows[-1][key] = value
        _write_rows(run, rows)
    return damage


def _plan(runs):
    def damage(study, run):
        plan = yaml.safe_load((study / "study.yaml").read_text())
        plan["runs"] = runs
        (study / "study.yaml").write_text(yaml.safe_dump(plan))
    return damage


def _cut_metrics(study, run):  # `truncate -s -40 metrics.jsonl`: the last row is cut
    path = run / "metrics.jsonl"
    path.write_bytes(path.read_bytes()[:-40])


def _swap_epochs(study, run):
    rows = _rows(run)
    _write_rows(run, rows[::-1])


def _summary(key, value):
    def damage(study, run):
        summary = json.loads((run / "summary.json").read_text())
        summary[key] = value
        (run / "summary.json").write_text(json.dumps(summary))
    return damage


def _run_config(text):
    def damage(study, run):
        (run / "config.yaml").write_text(text)
    return damage


def _resume(edit):
    def setup(tmp, trained):
        run = tmp / "run"
        shutil.copytree(trained, run)
        edit(run)
        return ["train", "--out", run, "--resume", "--quiet"]
    return setup


def _edit_config(field, value):
    def edit(run):
        text = (run / "config.yaml").read_text()
        lines = [f"{field}: {value}" if line.startswith(f"{field}:") else line
                 for line in text.splitlines()]
        (run / "config.yaml").write_text("\n".join(lines) + "\n")
    return edit


def _garbage_checkpoint(content: bytes):
    def edit(run):
        (run / "checkpoint.pt").write_bytes(content)
    return edit


def _jobs(text: str):
    def setup(tmp, trained):
        out = tmp / "s"
        out.mkdir()
        (out / "jobs.json").write_text(text)
        return ["study", "demo", "--status", "--out", out, "--set", "width=4"]
    return setup


def _dataset(build):
    def setup(tmp, trained):
        return ["train", "--out", tmp / "r", "--dataset", build(tmp), *TINY, "--epochs", "1"]
    return setup


def _zip_bzip2(tmp):
    return _image_zip(tmp / "b.zip", {"train/cat/1.png": _png()},
                      compression=zipfile.ZIP_BZIP2)


def _png_bomb(tmp):
    return _image_zip(tmp / "p.zip", {"train/cat/1.png": _png_declaring(12000, 12000)})


def _sparse_image_folder(tmp):
    folder = tmp / "images"
    for split in ("train", "test"):
        (folder / split / "cat").mkdir(parents=True)
        (folder / split / "cat" / "0.png").write_bytes(_png())
    with open(folder / "train" / "cat" / "1.png", "wb") as f:
        f.truncate(8 << 30)  # 8 GiB, sparse: nothing on disk
    return folder


def _sparse_batch_folder(tmp):
    folder = tmp / cifar10.FOLDER_NAME
    folder.mkdir()
    for name, content in _official_members().items():
        (folder / name).write_bytes(content)
    with open(folder / "data_batch_1", "wb") as f:
        f.truncate(8 << 30)
    return folder


def _declared_binbytes8(tmp):  # a small member whose pickle declares a 1 TiB bytes object
    crafted = b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"abc."
    return _tar_gz(tmp / "d.tar.gz", _official_members(data_batch_1=crafted))


def _object_dtype(tmp):  # an ndarray of Python objects, 10^9 of them declared
    state = (1, (10**9,), np.dtype(object), False, [])
    crafted = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b"
               b"\x87R" + pickle.dumps(state, protocol=2)[2:-1] + b"b.")
    return _tar_gz(tmp / "o.tar.gz", _official_members(data_batch_1=crafted))


def _many_members(tmp):
    members = {f"junk{i}": b"" for i in range(cifar10.MAX_ARCHIVE_MEMBERS + 1)}
    return _tar_gz(tmp / "m.tar.gz", members)


def _huge_declared_member(tmp):  # the tar header says 100 MiB, the data is cut short
    path = tmp / "h.tar.gz"
    header = _tar_header("cifar-10-batches-py/data_batch_1", 100 << 20)
    path.write_bytes(zlib.compress(header + bytes(4096), wbits=31))
    return path


def _read_only_study(tmp, trained):
    study = study_of(trained, tmp)
    return ["report", read_only(study)]


def read_only(folder: Path) -> Path:
    """`folder`, read-only: chmod for a user, a read-only bind mount for root (who writes
    anywhere chmod forbids)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return folder
    target = folder.with_name(folder.name + "-ro")
    target.mkdir()
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(target)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"root cannot make a read-only folder here: {mounted.stderr!r}")
    subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], capture_output=True)
    MOUNTS.append(target)
    return target


MOUNTS: list[Path] = []


@pytest.fixture(autouse=True)
def _unmount():
    yield
    while MOUNTS:
        subprocess.run(["umount", str(MOUNTS.pop())], capture_output=True)


def _unwritable_parent(tmp, trained):
    parent = read_only(_mkdir(tmp / "locked")) if os.geteuid() != 0 else Path("/proc/1")
    return ["train", "--out", parent / "run", *TINY]


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _landscape_out_file(tmp, trained):
    (tmp / "afile").write_text("mine")
    return ["analyze", "landscape", trained, "--out", tmp / "afile", "--train-images", "64",
            "--test-images", "64", "--points", "3"]


PROBES = [
    # ---- training options: every bad value refused before anything runs
    ("width-1e7", _train("--width", "1e7"), "width 10000000 exceeds 1024"),
    ("width-0", _train("--width", "0"), "width must be positive"),
    ("peak-lr-inf", _train("--lr", "1e308", "--base-batch-size", "1", "--batch-size", "32"),
     "peak lr"),
    ("lr-word", _train("--lr", "true"), "lr must be float"),
    ("epochs-word", _train("--epochs", "abc"), "epochs must be int"),
    ("epochs-fraction", _train("--epochs", "1.5"), "epochs must be int"),
    ("batch-negative", _train("--batch-size", "-5"), "batch_size must be positive"),
    ("momentum-negative", _train("--momentum", "-1"), "momentum must not be negative"),
    ("bn-momentum", _train("--bn-momentum", "2"), "bn_momentum must be in (0, 1]"),
    ("decay-factor", _train("--decay-factor", "0"), "decay_factor must be in (0, 1]"),
    ("label-smoothing", _train("--label-smoothing", "1"), "label_smoothing must be in [0, 1)"),
    ("workers-negative", _train("--workers", "-1"), "workers must not be negative"),
    ("local-workers-1", _train("--local-workers", "1"), "local_workers must be 0"),
    ("local-steps-0", _train("--local-steps", "0"), "local_steps must be at least 1"),
    ("batch-growth-0", _train("--batch-growth", "0"), "batch_growth must be at least 1"),
    ("seed-2^32", _train("--seed", str(2**32)), "seed must be in [0, 2^32)"),
    ("dist-timeout-0", _train("--dist-timeout", "0"), "dist_timeout must be positive"),
    ("nesterov-maybe", _train("--nesterov", "maybe"), "nesterov must be bool"),
    ("scale-rule", _train("--scale-rule", "cubic"), "scale_rule must be one of"),
    ("threads-negative", _train("--threads", "-1"), "threads must not be negative"),
    ("warmup-past-end", _train("--warmup-epochs", "5", "--epochs", "2"), "exceeds epochs"),
    # ---- --config files: YAML's types are checked, a bool is not a number
    ("yaml-lr-true", _yaml_file("lr: true\n"), "lr must be float, got True"),
    ("yaml-epochs-true", _yaml_file("epochs: true\n"), "epochs must be int, got True"),
    ("yaml-width-list", _yaml_file("width: [1, 2]\n"), "width must be int"),
    ("yaml-dataset-map", _yaml_file("dataset: {a: 1}\n"), "dataset must be str"),
    ("yaml-not-mapping", _yaml_file("- lr\n- 0.1\n"), "not a mapping of fields"),
    ("yaml-malformed", _yaml_file("lr: [0.1\n"), "cannot read config"),
    ("yaml-unknown-field", _yaml_file("widht: 4\n"), "unknown config field 'widht'"),
    ("yaml-binary", _yaml_file("lr: 0.1\x00\x01\n"), "cannot read config"),
    ("config-missing", _argv("train", "--out", "{tmp}/r", "--config", "{tmp}/none.yaml"),
     "none.yaml"),
    ("config-is-folder", _argv("train", "--out", "{tmp}/r", "--config", "{tmp}"),
     "cannot read config"),
    # ---- presets are names; a path to a YAML file is explicit and checked
    ("preset-dotdot", _argv("study", "../../../../w/pre_bad", "--dry-run"),
     "is not a preset name"),
    ("preset-unknown", _argv("study", "nosuch", "--dry-run"), "unknown preset 'nosuch'"),
    ("preset-file-missing", _argv("study", "{tmp}/none.yaml", "--dry-run"), "does not exist"),
    ("preset-malformed", _preset("recipes: [unclosed\n"), "cannot read preset"),
    ("preset-not-mapping", _preset("- a\n"), "not a mapping"),
    ("preset-batch-sizes", _preset("extends: demo\nbatch_sizes: abc\n"),
     "batch_sizes must be a list of positive integers"),
    ("preset-recipes-list", _preset("extends: demo\nrecipes: [1, 2]\n"),
     "recipes must be a mapping"),
    ("preset-seeds-bool", _preset("extends: demo\nseeds: true\n"),
     "seeds must be a positive integer"),
    ("preset-config-bool", _preset("extends: demo\nconfig: {lr: true}\n"),
     "lr must be float, got True"),
    ("preset-extends-path", _preset("extends: ../../x\n"), "is not a preset name"),
    ("preset-extends-file", _preset("extends: other.yaml\n"), "extends names a preset"),
    ("preset-no-grid", _preset("description: none\n"), "has no use_recipes"),
    ("study-set-lr-word", _argv("study", "demo", "--dry-run", "--set", "lr=true"),
     "lr must be float"),
    ("study-set-width-1e7", _argv("study", "demo", "--dry-run", "--set", "width=1e7"),
     "exceeds 1024"),
    # ---- study --status and jobs.json
    ("jobs-truncated", _jobs('{"trivial/b32/seed0": {"job_id": "12'), "jobs.json"),
    ("jobs-job-id-word", _jobs('{"trivial/b32/seed0": {"job_id": "abc", "executor": "local",'
                               ' "folder": "x", "submitted": 0}}'), "not a job id"),
    ("jobs-list", _jobs("[]"), "jobs.json"),
    # ---- report: damaged metrics and study.yaml
    ("report-no-test-acc", _report(_drop_test_acc), "test_acc = None"),
    ("report-test-acc-word", _report(_set_last("test_acc", "abc")), "test_acc = 'abc'"),
    ("report-test-acc-nan", _report(_set_last("test_acc", float("nan"))), "test_acc = nan"),
    ("report-runs-ints", _report(_plan([1, 2])), "run 1 is not a mapping"),
    ("report-runs-text", _report(_plan("x")), "runs must be a list"),
    ("report-run-escapes", _report(_plan([{"recipe": "t", "batch_size": 64, "seed": 0,
                                           "directory": "../../etc"}])),
     "is not inside the study folder"),
    ("report-cut-metrics", _report(_cut_metrics), "says 2 epochs completed"),
    ("report-epochs-order", _report(_swap_epochs), "row 1 is epoch 2"),
    ("report-epochs-completed-word", _report(_summary("epochs_completed", "two")),
     "says 'two' epochs completed"),
    ("report-config-lr-true", _report(_run_config("lr: true\n")), "lr must be float"),
    ("report-read-only", _read_only_study, "not writable"),
    # ---- resume: config.yaml must say what the checkpoint trained
    ("resume-edited-lr", _resume(_edit_config("lr", "0.5")), "lr (0.5 in config.yaml"),
    ("resume-edited-width", _resume(_edit_config("width", "8")), "width (8 in config.yaml"),
    ("resume-garbage-checkpoint", _resume(_garbage_checkpoint(os.urandom(4096))),
     "cannot be read"),
    ("resume-text-checkpoint", _resume(_garbage_checkpoint(pickle.dumps([1, 2]))),
     "cannot be read"),
    ("resume-cut-checkpoint", _resume(lambda run: (run / "checkpoint.pt").write_bytes(
        (run / "checkpoint.pt").read_bytes()[:3000])), "cannot be read"),
    # ---- output paths checked before anything is computed
    ("train-out-unwritable", _unwritable_parent, "cannot"),
    ("train-out-below-file", lambda tmp, trained: [
        "train", "--out", _text(tmp / "afile") / "run", *TINY], "afile"),
    ("landscape-out-file", _landscape_out_file, "is a file"),
    ("landscape-out-proc", lambda tmp, trained: [
        "analyze", "landscape", trained, "--out", "/proc/batchscale-probe"], "--out"),
    ("study-out-proc", _argv("study", "demo", "--out", "/proc/batchscale-probe",
                             "--set", "width=4", "--set", "epochs=1"), "cannot"),
    # ---- bounds on the other commands' numbers
    ("analyze-threads-negative", lambda tmp, trained: [
        "analyze", "hessian", trained, "--threads", "-1"], "--threads must be 0"),
    ("landscape-threads-huge", lambda tmp, trained: [
        "analyze", "landscape", trained, "--threads", "100000"], "--threads must be 0"),
    ("landscape-points-1", lambda tmp, trained: [
        "analyze", "landscape", trained, "--points", "1"], "--points must be"),
    ("hessian-no-checkpoint", _argv("analyze", "hessian", "{tmp}"), "holds no run"),
    ("bench-ref-workers-negative", _argv("bench", "--ref-workers", "-1"),
     "--ref-workers must be 0"),
    ("bench-ghost-group-0", _argv("bench", "--ghost-group", "0"), "--ghost-group must be"),
    ("bench-threads-huge", _argv("bench", "--threads", "100000", "--width", "4"),
     "cores of this machine"),
    ("bench-width-1e7", _argv("bench", "--width", "1e7"), "exceeds 1024"),
    # ---- damaged or crafted data (small; the memory-bounded ones are below)
    ("zip-garbage", _dataset(lambda tmp: _text(tmp / "g.zip", "not a zip")),
     "cannot read image folder"),
    ("zip-bzip2-member", _dataset(_zip_bzip2), "only stored and deflated"),
    ("png-header-lies", _dataset(_png_bomb), "is 12000x12000"),
    ("image-folder-sparse-8gib", _dataset(_sparse_image_folder), "bound 1048576"),
    ("batch-folder-sparse-8gib", _dataset(_sparse_batch_folder), "past the bound"),
    ("tar-declared-binbytes8", _dataset(_declared_binbytes8), "is corrupt"),
    ("tar-object-dtype", _dataset(_object_dtype), "numpy.dtype of Python objects"),
    ("tar-many-members", _dataset(_many_members), "more than 1000 members"),
    ("tar-member-100mib", _dataset(_huge_declared_member), "past the bound"),
    ("dataset-empty-folder", _dataset(lambda tmp: _mkdir(tmp / "empty")), "needs train/"),
]


def _text(path: Path, text: str = "mine") -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("setup, expected", [p[1:] for p in PROBES],
                         ids=[p[0] for p in PROBES])
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, trained, setup, expected):
    before_trained = tree(trained)
    argv = setup(tmp_path, trained)
    before = tree(tmp_path)
    err = one_line_error(capsys, argv)
    assert expected in err
    assert tree(tmp_path) == before  # nothing written, nothing deleted
    assert tree(trained) == before_trained
    assert not (tmp_path / "r").exists() and not (ROOT / "runs" / "pre").exists()


# ---------------------------------------------------------------------- memory: crafted bombs
def test_a_zip_member_whose_header_lies_is_stopped_at_the_bound(tmp_path):
    """2 GiB of zeros in a 2 MB zip, its sizes patched to 1,000 bytes: zipfile's read()
    inflated it whole (2.36 GB peak for 1 GiB in the issue); read in chunks it stops there."""
    bomb = lying_zip(tmp_path / "z.zip", mib=2048)
    assert bomb.stat().st_size < 3_000_000
    assert_refused_bounded(bomb, tmp_path, "z.zip", "Bad CRC-32")


def test_a_member_read_stops_at_the_bound_whatever_the_header_says(tmp_path):
    """In-process: the chunked read holds no more than MAX_MEMBER_BYTES of a member that
    inflates past it, even when the header declares less."""
    bomb = lying_zip(tmp_path / "z.zip", mib=8, declared=data.MAX_MEMBER_BYTES)
    held = []
    with zipfile.ZipFile(bomb) as archive, archive.open("train/cat/1.png") as member:
        with pytest.raises(zipfile.BadZipFile, match="Bad CRC-32"):
            while chunk := member.read(data.READ_CHUNK):  # what read_member does
                held.append(len(chunk))
    assert max(held) <= data.READ_CHUNK and sum(held) <= data.MAX_MEMBER_BYTES
    with zipfile.ZipFile(bomb) as archive, pytest.raises(zipfile.BadZipFile, match="CRC"):
        data.read_member(archive, "train/cat/1.png", bomb)


def test_a_tar_gz_pickle_holding_a_1_gib_bytes_object_is_refused_bounded(tmp_path):
    """The issue's 1.4 MB archive: data_batch_1 a protocol-4 pickle of a 1 GiB BINBYTES8."""
    bomb = binbytes8_tar_gz(tmp_path / "cifar-bomb.tar.gz", mib=1024)
    assert bomb.stat().st_size < 2_000_000
    assert_refused_bounded(bomb, tmp_path, "data_batch_1", "past the bound")


def assert_refused_bounded(bomb, tmp_path, *named) -> None:
    """`train --dataset bomb` in a child: peak RSS < 1 GB, one line naming `named`, exit 2,
    no run directory."""
    code, stderr, peak_gb = run_measured(
        ["train", "--out", str(tmp_path / "r"), "--dataset", str(bomb), *TINY], tmp_path)
    assert peak_gb < 1.0, peak_gb
    assert code == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert all(name in stderr for name in named), stderr
    assert not (tmp_path / "r").exists()


def test_official_shaped_batches_still_load(tmp_path):
    """The bounds leave a real batch's shape alone: 10,000 images in a protocol-2 pickle."""
    batch = {b"batch_label": b"x", b"labels": list(range(10)) * 1000,
             b"data": np.arange(10000 * 3072, dtype=np.uint64).astype(np.uint8).reshape(
                 10000, 3072), b"filenames": [b"f%d.png" % i for i in range(10000)]}
    content = pickle.dumps(batch, protocol=2)
    assert 30_000_000 < len(content) < cifar10.MAX_BATCH_BYTES
    archive = _tar_gz(tmp_path / "ok.tar.gz", _official_members(test_batch=content))
    arrays = cifar10.read_official(archive)
    assert arrays["test_images"].shape == (10000, 32, 32, 3)
    assert arrays["test_labels"][:12].tolist() == [*range(10), 0, 1]


# ---------------------------------------------------------------------- the face-level net
def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    (tmp_path / "c.yaml").write_text("lr: true\n")
    argv = ["train", "--out", str(tmp_path / "r"), "--config", str(tmp_path / "c.yaml")]
    with pytest.raises(Exception, match="lr must be float"):
        main([*argv, "--debug"])
    monkeypatch.setenv("BATCHSCALE_DEBUG", "1")
    with pytest.raises(Exception, match="lr must be float"):
        main(argv)
    monkeypatch.delenv("BATCHSCALE_DEBUG")
    assert "lr must be float" in one_line_error(capsys, argv)


def test_a_bug_still_shows_its_traceback(monkeypatch):
    """Only errors a user can cause become one line: a programming error is not hidden."""
    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setitem(__import__("batchscale.cli").cli.COMMANDS, "report", broken)
    with pytest.raises(ZeroDivisionError):
        main(["report", "x"])


def test_a_full_disk_is_one_line_and_the_run_resumes_exactly(tmp_path, capsys, monkeypatch,
                                                             trained):
    """ENOSPC at the second epoch's checkpoint: one line naming the file and how to go on;
    the first checkpoint is whole, and the resumed run equals an uninterrupted one (`trained`:
    the same command, never interrupted)."""
    out = tmp_path / "r"
    saves = {"n": 0}
    real = files.atomic_write

    def full_disk(path, write):
        if Path(path).name == "checkpoint.pt":
            saves["n"] += 1
        if saves["n"] >= 2:  # the write itself fails, as on a full disk
            write = _no_space
        real(path, write)

    for module in ("batchscale.engine.checkpoint", "batchscale.engine.rundir"):
        monkeypatch.setattr(f"{module}.atomic_write", full_disk)
    err = one_line_error(capsys, ["train", "--out", out, *TINY, "--epochs", "2"])
    assert f"{out / 'checkpoint.pt'}: No space left on device" in err and "--resume" in err
    monkeypatch.undo()
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0

    def rows(run):
        return [{k: v for k, v in r.items() if k not in ("wall_s", "images_per_sec")}
                for r in _rows(run)]

    assert len(rows(out)) == 2 and rows(out) == rows(trained)


def _no_space(handle):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_yaml_bool_is_not_a_number_and_a_number_is_not_a_bool(tmp_path):
    from batchscale.config import parse_value
    from batchscale.errors import UserError

    for name, value in (("lr", True), ("epochs", False), ("width", True), ("momentum", True)):
        with pytest.raises(UserError, match=f"{name} must be"):
            parse_value(name, value)
    assert parse_value("nesterov", True) is True and parse_value("lr", 1) == 1.0


def test_a_preset_file_given_by_path_defaults_to_runs_name(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("extends: demo\ndescription: mine\n")
    assert main(["study", "mine.yaml", "--dry-run"]) == 0
    assert "out: runs/mine" in capsys.readouterr().out


# ---------------------------------------------------------------------- advise (issue 23's)
def test_advise_out_that_is_a_file_is_refused_before_probing(tmp_path, capsys, monkeypatch):
    def must_not_probe(*args, **kwargs):
        raise AssertionError("probed before checking --out")

    monkeypatch.setattr("batchscale.analysis.advise.build", must_not_probe)  # its first step
    (tmp_path / "afile").write_text("mine")
    err = one_line_error(capsys, ["advise", "--batches", "4,8", "--out", tmp_path / "afile",
                                  *TINY])
    assert "afile" in err and (tmp_path / "afile").read_text() == "mine"


# ---------------------------------------------------------------------- a worker killed
def test_kill_9_of_rank_1_gives_no_rank0_traceback(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "BATCHSCALE_PAUSE_AFTER_EPOCH": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "batchscale", "train", "--workers", "2", "--width", "4",
         "--train-subset", "128", "--batch-size", "32", "--epochs", "3", "--quiet",
         "--device", "cpu", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=env, text=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.pt").exists() and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()
            time.sleep(0.05)
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        rank1 = [int(c) for c in children
                 if b"RANK=1\0" in Path(f"/proc/{c}/environ").read_bytes()]
        assert len(rank1) == 1, children
        os.kill(rank1[0], signal.SIGKILL)
        _, stderr = process.communicate(timeout=PATIENCE_S)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 2, stderr
    assert "Traceback" not in stderr and "[rank0]" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("batchscale: error: the 2 workers failed"), stderr
    assert all(line.startswith("batchscale: error: ") for line in lines), stderr
    assert (out / "checkpoint.pt").exists()  # the epoch-1 checkpoint is kept for a resume

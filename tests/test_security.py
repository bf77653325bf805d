"""Opening a run directory or a data archive never runs code from it."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from batchscale.engine import checkpoint, cifar10
from batchscale.engine.data import MAX_MEMBER_BYTES, read_image_folder
from batchscale.engine.train import train
from batchscale.errors import UserError

from conftest import PATIENCE_S, tiny_config


class Payload:
    """Unpickling this creates the file it names: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "batchscale", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=PATIENCE_S)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    train(tiny_config(epochs=1, train_subset=128, batch_size=32), out, quiet=True)
    return out


def test_a_checkpoint_that_would_run_code_is_refused_unexecuted(trained_run, tmp_path):
    run = tmp_path / "run"
    subprocess.run(["cp", "-r", str(trained_run), str(run)], check=True)
    marker = tmp_path / "pwned"
    torch.save({"model": Payload(marker)}, run / checkpoint.NAME)
    for command in (["analyze", "hessian", str(run)], ["train", "--out", str(run), "--resume"]):
        result = _cli(*command, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert not marker.exists()
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "refused unopened" in lines[0] and "checkpoint" in lines[0]


def test_checkpoints_hold_only_weights_only_types_and_resume(trained_run):
    state = torch.load(trained_run / checkpoint.NAME, weights_only=True)
    assert set(state["rng"]) >= {"torch", "numpy", "python"}
    checkpoint.set_rng_state(state["rng"])
    np_after, py_after = np.random.rand(), __import__("random").random()
    checkpoint.set_rng_state(state["rng"])
    assert (np.random.rand(), __import__("random").random()) == (np_after, py_after)


def test_an_older_numpy_checkpoint_is_refused_with_how_to_convert_it(trained_run, tmp_path):
    state = torch.load(trained_run / checkpoint.NAME, weights_only=True)
    state["rng"]["numpy"] = np.random.get_state()  # what checkpoints held before
    path = tmp_path / checkpoint.NAME
    torch.save(state, path)
    with pytest.raises(UserError, match="--convert-trusted"):
        checkpoint.load(path)
    checkpoint.main(["--convert-trusted", str(path)])
    converted = checkpoint.load(path)
    checkpoint.set_rng_state(converted["rng"])
    first = np.random.rand()
    np.random.set_state(state["rng"]["numpy"])
    assert np.random.rand() == first


def _official_folder(root: Path, data_batch) -> Path:
    folder = root / cifar10.FOLDER_NAME
    folder.mkdir(parents=True)
    good = {b"labels": [0], b"data": np.zeros((1, 3072), np.uint8)}
    for name in cifar10.TRAIN_MEMBERS:
        (folder / name).write_bytes(pickle.dumps(good, protocol=2))
    (folder / cifar10.TEST_MEMBER).write_bytes(pickle.dumps(data_batch, protocol=2))
    meta = {b"label_names": [b"a"] * 10}
    (folder / cifar10.META_MEMBER).write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def test_official_pickles_still_load_through_the_restricted_unpickler(tmp_path):
    folder = _official_folder(tmp_path, {b"labels": [3], b"data": np.ones((1, 3072), np.uint8)})
    arrays = cifar10.read_official(folder)
    assert arrays["test_labels"].tolist() == [3] and arrays["test_images"].sum() == 3072


def test_a_crafted_cifar_pickle_is_refused_unexecuted(tmp_path):
    marker = tmp_path / "pwned"
    folder = _official_folder(tmp_path / "data", {b"labels": Payload(marker)})
    result = _cli("train", "--dataset", str(folder), "--width", "4", "--epochs", "1",
                  "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 2
    assert not marker.exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "posix.system" in lines[0] and "refused" in lines[0]
    assert not (tmp_path / "run").exists()


def _zip_with(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_a_zip_bomb_is_refused_before_decoding(tmp_path):
    bomb = _zip_with(tmp_path / "bomb.zip", {"train/cat/0.png": b"\0" * (MAX_MEMBER_BYTES + 1),
                                             "test/cat/0.png": b"x"})
    assert bomb.stat().st_size < 10_000  # it is small on disk
    with pytest.raises(UserError, match="would decompress"):
        read_image_folder(bomb)


@pytest.mark.parametrize("name", ["../train/cat/0.png", "/train/cat/0.png",
                                  "train/../../cat/0.png"])
def test_a_member_that_leaves_the_archive_root_is_refused(tmp_path, name):
    archive = _zip_with(tmp_path / "escape.zip", {name: b"x", "test/cat/0.png": b"x"})
    with pytest.raises(UserError, match="leaves the archive's root"):
        read_image_folder(archive)


def test_a_one_machine_launch_listens_on_loopback_only(tmp_path):
    """Every listening socket of the workers' process tree is bound to 127.0.0.1."""
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux /proc/net/tcp to list listening sockets")
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "batchscale", "train", "--workers", "2", "--width", "4",
         "--train-subset", "128", "--batch-size", "32", "--epochs", "2", "--quiet",
         "--device", "cpu", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen: set[str] = set()
    while process.poll() is None:
        seen |= _listening_addresses()
        time.sleep(0.05)
    assert process.returncode == 0, process.stderr.read().decode()[-2000:]
    assert seen, "the workers listened on nothing while they ran"
    assert seen <= {"127.0.0.1"}, seen


def _listening_addresses() -> set[str]:
    """Local addresses of listening TCP sockets (state 0A) owned by this process's children."""
    inodes = set()
    for pid in _descendants(os.getpid()):
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            for fd in fd_dir.iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                address = fields[1].split(":")[0]
                found.add(_address(address, width))
    return found


def _address(hex_address: str, width: int) -> str:
    if width == 8:
        return ".".join(str(int(hex_address[i:i + 2], 16)) for i in (6, 4, 2, 0))
    return "ipv6:" + hex_address


def _descendants(pid: int) -> set[int]:
    children, frontier = set(), [pid]
    while frontier:
        parent = frontier.pop()
        try:
            text = Path(f"/proc/{parent}/task/{parent}/children").read_text()
        except OSError:
            continue
        for child in map(int, text.split()):
            children.add(child)
            frontier.append(child)
    return children

"""Tests for batchscale.engine.cifar10 against a tiny official-format archive on a local server."""

from __future__ import annotations

import hashlib
import pickle
import re
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from batchscale.engine import cifar10
from batchscale.errors import UserError

PER_BATCH = 4
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# --------------------------------------------------------------------------- tiny archive


def pixel(g: int, c: int, h: int, w: int) -> np.ndarray:
    """The value packed for image ``g``, channel ``c`` (0=R), row ``h``, column ``w``."""
    return (g * 37 + c * 100 + h * 7 + w) % 256


def raw_rows(first: int, n: int) -> np.ndarray:
    """Official rows: channel-planar R, G, B planes, each row-major 32×32 (index c*1024+h*32+w)."""
    g, c, h, w = np.meshgrid(
        np.arange(first, first + n), np.arange(3), np.arange(32), np.arange(32), indexing="ij"
    )
    return pixel(g, c, h, w).reshape(n, 3072).astype(np.uint8)


def labels_for(first: int, n: int) -> list[int]:
    """Deterministic labels for images ``first .. first+n-1``."""
    return [(g * 3 + 1) % 10 for g in range(first, first + n)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """Build ``cifar-10-batches-py/`` and its ``.tar.gz`` with 4 images per batch."""
    root = tmp_path_factory.mktemp("tiny")
    folder = root / "extracted" / cifar10.FOLDER_NAME
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        first = 0 if name == "test_batch" else k * PER_BATCH
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels_for(first, PER_BATCH),
            b"data": raw_rows(first, PER_BATCH),
            b"filenames": [f"img{first + i}.png".encode() for i in range(PER_BATCH)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {
        b"num_cases_per_batch": PER_BATCH,
        b"num_vis": 3072,
        b"label_names": [c.encode() for c in CLASSES],
    }
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    archive = root / cifar10.ARCHIVE_NAME
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=cifar10.FOLDER_NAME)
    body = archive.read_bytes()
    return {
        "folder": folder,
        "archive": archive,
        "body": body,
        "md5": hashlib.md5(body).hexdigest(),
    }


# --------------------------------------------------------------------------- local server


class RangeHandler(BaseHTTPRequestHandler):
    """Serves ``server.body`` at any path, honouring ``Range: bytes=N-``; can drop mid-way."""

    def do_GET(self):
        """Answer 200, 206 or 416; send only ``server.drop_after`` bytes once if it is set."""
        srv = self.server
        rng = self.headers.get("Range")
        srv.ranges.append(rng)
        body, start, status = srv.body, 0, 200
        if rng and srv.honour_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng.strip()).group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        payload = body[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        if srv.drop_after is not None:  # one interrupted transfer, then normal service
            payload, srv.drop_after = payload[: srv.drop_after], None
            self.close_connection = True
        self.wfile.write(payload)

    def log_message(self, *args):
        """Keep test output quiet."""


@pytest.fixture
def server(tiny):
    """A threaded server on 127.0.0.1 serving the tiny archive; yields it (``.url`` added)."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    srv.body, srv.ranges, srv.drop_after, srv.honour_range = tiny["body"], [], None, True
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/{cifar10.ARCHIVE_NAME}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield srv
    srv.shutdown()
    thread.join()
    srv.server_close()


def closed_port_url() -> str:
    """A URL on a port nobody listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/x.tar.gz"


def assert_matches_packed(data: dict) -> None:
    """Check every array against the values packed by the fixture."""
    n_train = 5 * PER_BATCH
    assert data["classes"] == CLASSES
    assert data["train_images"].shape == (n_train, 32, 32, 3)
    assert data["train_images"].dtype == np.uint8 and data["train_labels"].dtype == np.int64
    assert data["test_images"].shape == (PER_BATCH, 32, 32, 3)
    # one known pixel, HWC: image 5 (data_batch_2, row 1), row h=1, column w=2
    assert tuple(data["train_images"][5, 1, 2]) == (
        pixel(5, 0, 1, 2),
        pixel(5, 1, 1, 2),
        pixel(5, 2, 1, 2),
    )
    assert tuple(data["train_images"][5, 1, 2]) == (194, 38, 138)
    g, h, w, c = np.meshgrid(
        np.arange(n_train), np.arange(32), np.arange(32), np.arange(3), indexing="ij"
    )
    np.testing.assert_array_equal(data["train_images"], pixel(g, c, h, w))
    np.testing.assert_array_equal(data["test_images"], pixel(g, c, h, w)[:PER_BATCH])
    np.testing.assert_array_equal(data["train_labels"], labels_for(0, n_train))
    np.testing.assert_array_equal(data["test_labels"], labels_for(0, PER_BATCH))


def one_line_error(excinfo) -> str:
    """Return the UserError message, asserting it is a single line."""
    msg = str(excinfo.value)
    assert msg and "\n" not in msg
    return msg


# --------------------------------------------------------------------------- tests


def test_download_verify_and_read(server, tiny, tmp_path):
    dest = tmp_path / "data" / cifar10.ARCHIVE_NAME
    out = cifar10.download(server.url, dest, md5=tiny["md5"], progress=False)
    assert out == dest and dest.read_bytes() == tiny["body"]
    assert not (tmp_path / "data" / (cifar10.ARCHIVE_NAME + ".part")).exists()
    assert_matches_packed(cifar10.read_official(dest))


def test_resume_sends_range_from_part_size(server, tiny, tmp_path):
    dest = tmp_path / cifar10.ARCHIVE_NAME
    half = len(tiny["body"]) // 2
    Path(str(dest) + ".part").write_bytes(tiny["body"][:half])
    cifar10.download(server.url, dest, md5=tiny["md5"], progress=True)
    assert server.ranges == [f"bytes={half}-"]
    assert cifar10.md5sum(dest) == tiny["md5"]


def test_interrupted_transfer_keeps_part_then_resumes(server, tiny, tmp_path):
    dest = tmp_path / cifar10.ARCHIVE_NAME
    part = Path(str(dest) + ".part")
    server.drop_after = 1000
    with pytest.raises(UserError) as excinfo:
        cifar10.download(server.url, dest, md5=tiny["md5"], progress=False)
    assert server.url in one_line_error(excinfo)
    assert part.read_bytes() == tiny["body"][:1000] and not dest.exists()
    cifar10.download(server.url, dest, md5=tiny["md5"], progress=False)
    assert server.ranges == [None, "bytes=1000-"]
    assert dest.read_bytes() == tiny["body"] and not part.exists()


def test_server_without_range_support_restarts_from_zero(server, tiny, tmp_path):
    dest = tmp_path / cifar10.ARCHIVE_NAME
    Path(str(dest) + ".part").write_bytes(b"garbage that must be overwritten")
    server.honour_range = False
    cifar10.download(server.url, dest, md5=tiny["md5"], progress=False)
    assert dest.read_bytes() == tiny["body"]


def test_complete_part_answered_416_is_accepted(server, tiny, tmp_path):
    dest = tmp_path / cifar10.ARCHIVE_NAME
    Path(str(dest) + ".part").write_bytes(tiny["body"])
    cifar10.download(server.url, dest, md5=tiny["md5"], progress=False)
    assert server.ranges == [f"bytes={len(tiny['body'])}-"]
    assert dest.read_bytes() == tiny["body"]


def test_md5_mismatch_is_one_line_and_leaves_nothing(server, tiny, tmp_path):
    dest = tmp_path / cifar10.ARCHIVE_NAME
    wrong = "0" * 32
    with pytest.raises(UserError) as excinfo:
        cifar10.download(server.url, dest, md5=wrong, progress=False)
    msg = one_line_error(excinfo)
    assert wrong in msg and tiny["md5"] in msg and cifar10.ARCHIVE_NAME in msg
    assert list(tmp_path.iterdir()) == []


def test_offline_names_the_folder(tmp_path):
    data_dir = tmp_path / "data"
    url = closed_port_url()
    with pytest.raises(UserError) as excinfo:
        cifar10.ensure_archive(data_dir, url=url, progress=False)
    msg = one_line_error(excinfo)
    assert str(data_dir) in msg and cifar10.ARCHIVE_NAME in msg and url in msg


def test_ensure_archive_uses_local_files_without_network(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv(cifar10.URL_ENV, closed_port_url())
    monkeypatch.setenv(cifar10.MD5_ENV, tiny["md5"])
    archive = tmp_path / cifar10.ARCHIVE_NAME
    archive.write_bytes(tiny["body"])
    assert cifar10.ensure_archive(tmp_path, progress=False) == archive
    assert_matches_packed(cifar10.load(tmp_path, progress=False))
    folder = tmp_path / cifar10.FOLDER_NAME
    folder.mkdir()
    assert cifar10.ensure_archive(tmp_path, url=closed_port_url(), progress=False) == folder


def test_corrupt_local_archive_is_one_line_error(tiny, tmp_path):
    body = bytearray(tiny["body"])
    body[len(body) // 2] ^= 0xFF
    (tmp_path / cifar10.ARCHIVE_NAME).write_bytes(bytes(body))
    with pytest.raises(UserError) as excinfo:
        cifar10.ensure_archive(tmp_path, url=closed_port_url(), md5=tiny["md5"], progress=False)
    assert "delete" in one_line_error(excinfo)
    with pytest.raises(UserError) as excinfo:  # the parser alone also fails cleanly
        cifar10.read_official(tmp_path / cifar10.ARCHIVE_NAME)
    one_line_error(excinfo)


def test_extracted_folder_equals_archive(tiny):
    from_folder = cifar10.read_official(tiny["folder"])
    from_archive = cifar10.read_official(tiny["archive"])
    assert from_folder["classes"] == from_archive["classes"]
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(from_folder[key], from_archive[key])
    assert_matches_packed(from_folder)


def test_missing_member_is_one_line_error(tiny, tmp_path):
    folder = tmp_path / cifar10.FOLDER_NAME
    folder.mkdir()
    for f in tiny["folder"].iterdir():
        if f.name != "data_batch_3":
            (folder / f.name).write_bytes(f.read_bytes())
    with pytest.raises(UserError) as excinfo:
        cifar10.read_official(folder)
    assert "data_batch_3" in one_line_error(excinfo)


def test_default_locations(monkeypatch, tmp_path):
    monkeypatch.delenv(cifar10.URL_ENV, raising=False)
    assert cifar10.default_url() == cifar10.CIFAR10_URL
    monkeypatch.setenv(cifar10.URL_ENV, "http://mirror/x.tar.gz")
    assert cifar10.default_url() == "http://mirror/x.tar.gz"
    monkeypatch.delenv(cifar10.DATA_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cifar10.default_data_dir() == tmp_path / "batchscale"
    monkeypatch.setenv(cifar10.DATA_ENV, str(tmp_path / "d"))
    assert cifar10.default_data_dir() == tmp_path / "d"

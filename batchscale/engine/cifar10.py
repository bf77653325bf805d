"""The official CIFAR-10 python archive: find it, download it (resumable, MD5-checked), parse it.

Every failure a user can fix (no network, corrupt archive, missing member) is a one-line
:class:`batchscale.errors.UserError`.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import pickle
import pickletools
import tarfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from batchscale.errors import UserError

# --------------------------------------------------------------------------- constants

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
FOLDER_NAME = "cifar-10-batches-py"

URL_ENV = "BATCHSCALE_CIFAR10_URL"  # override the download URL (end-to-end tests, mirrors)
MD5_ENV = "BATCHSCALE_CIFAR10_MD5"  # override the expected MD5 (tests serving a tiny archive)
DATA_ENV = "BATCHSCALE_DATA"  # override the data folder

TIMEOUT_S = 30.0
CHUNK_BYTES = 1 << 20
BAR_STYLE = {"unit": "B", "unit_scale": True, "unit_divisor": 1024, "leave": False}
TRAIN_MEMBERS = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_MEMBER = "test_batch"
META_MEMBER = "batches.meta"
# Bounds on what a (possibly crafted) archive may make us hold. An official batch is ~31 MB
# (31,035,704 bytes) and ~35,000 pickle opcodes; the whole tar stream ~186 MB in 8 members. A
# batch re-pickled by Python 3 at protocol 2 holds its pixels as UTF-8 text: up to ~62 MB.
MAX_BATCH_BYTES = 80 << 20  # one member (the tar header's size is the size that is read)
MAX_ARCHIVE_BYTES = 640 << 20  # the whole decompressed tar stream, counted while streaming
MAX_ARCHIVE_MEMBERS = 1000
MAX_PICKLE_OPS = 1_000_000  # each opcode makes at most one object: objects are bounded too


# --------------------------------------------------------------------------- locations


def default_url() -> str:
    """Return the archive URL: ``$BATCHSCALE_CIFAR10_URL`` if set, else the official one."""
    return os.environ.get(URL_ENV) or CIFAR10_URL


def default_md5() -> str:
    """Return the expected archive MD5: ``$BATCHSCALE_CIFAR10_MD5`` if set, else the official."""
    return (os.environ.get(MD5_ENV) or CIFAR10_MD5).lower()


def default_data_dir() -> Path:
    """``$BATCHSCALE_DATA``, else ``$XDG_CACHE_HOME/batchscale`` or ``~/.cache/batchscale``."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "batchscale"


# --------------------------------------------------------------------------- download


def md5sum(path: Path | str) -> str:
    """Return the hex MD5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _one_line(reason: object) -> str:
    """Collapse an exception or message into a single line."""
    return " ".join(str(reason).split()) or type(reason).__name__


def _network_error(url: str, dest: Path, reason: object) -> UserError:
    """Build the one-line error for a failed download, telling how to place the file by hand."""
    return UserError(
        f"download from {url} failed ({_one_line(reason)}); you can place "
        f"{dest.name} (from {url}) into the folder {dest.parent} by hand"
    )


def download(url: str, dest: Path, md5: str | None = None, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` via ``<dest>.part``, resuming a partial part file.

    A present part file is continued with ``Range: bytes=N-``; a 200 answer restarts from
    zero, a 416 answer means the part is already complete. The MD5 is checked (if given)
    before the part is atomically renamed to ``dest``. Returns ``dest``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "batchscale"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if not (e.code == 416 and offset):
            raise _network_error(url, dest, f"HTTP {e.code} {e.reason}") from None
        response = None  # the server has nothing past our offset: the part is complete
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _network_error(url, dest, getattr(e, "reason", e)) from None
    if response is not None:
        with response:
            _receive(response, part, offset, url, dest, progress)
    if md5 is not None:
        actual = md5sum(part)
        if actual != md5.lower():
            part.unlink()
            raise UserError(
                f"MD5 mismatch for {dest.name} downloaded from {url}: expected "
                f"{md5.lower()}, got {actual}; the file was deleted, run again"
            )
    os.replace(part, dest)
    return dest


def _receive(response, part: Path, offset: int, url: str, dest: Path, progress: bool) -> None:
    """Stream an open HTTP response into the part file (append on 206, truncate otherwise)."""
    from tqdm import tqdm

    if response.status == 206:
        content_range = response.headers.get("Content-Range", "")
        if not content_range.startswith(f"bytes {offset}-"):
            raise _network_error(url, dest, f"unexpected Content-Range {content_range!r}")
    else:
        offset = 0  # the server ignored the Range header: start over
    length = response.headers.get("Content-Length")
    total = offset + int(length) if length and length.isdigit() else None
    received, failure = offset, None
    with (
        open(part, "ab" if offset else "wb") as f,
        tqdm(total=total, initial=offset, desc=dest.name, disable=not progress, **BAR_STYLE) as bar,
    ):
        try:
            while chunk := response.read(CHUNK_BYTES):
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as e:
            failure = _one_line(e)
    if failure is None and total is not None and received < total:
        failure = f"connection closed at {received} of {total} bytes"  # urllib does not flag it
    if failure is not None:
        reason = f"interrupted after {received} bytes: {failure}; run again to resume"
        raise _network_error(url, dest, reason)


def ensure_archive(
    data_dir: Path, url: str | None = None, progress: bool = True, md5: str | None = None
) -> Path:
    """Return the extracted folder or the (MD5-verified) archive in ``data_dir``, downloading it.

    ``url`` defaults to :func:`default_url`, ``md5`` to :func:`default_md5`.
    """
    data_dir = Path(data_dir).expanduser()
    folder = data_dir / FOLDER_NAME
    if folder.is_dir():
        return folder
    archive = data_dir / ARCHIVE_NAME
    expected = (md5 or default_md5()).lower()
    if archive.is_file():
        actual = md5sum(archive)
        if actual != expected:
            raise UserError(
                f"{archive} is corrupt (MD5 {actual}, expected {expected}); "
                "delete it and run again to download it afresh"
            )
        return archive
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create data folder {data_dir}: {_one_line(e)}") from None
    return download(url or default_url(), archive, expected, progress)


# --------------------------------------------------------------------------- parsing


# What the official batches hold besides dicts, lists, bytes, strings and ints: numpy's array
# reconstruction, and the bytes codec that protocol-2 pickles written by Python 3 use.
ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})


class RefusedGlobal(Exception):
    """A pickle asked for something a CIFAR-10 batch never holds."""


def _plain_dtype(*args):
    """numpy.dtype, refusing dtypes of Python objects (their arrays are allocated from the
    pickle's declared shape before any data is checked)."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise RefusedGlobal("numpy.dtype of Python objects")
    return dtype


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that resolves only ALLOWED_GLOBALS: a crafted member runs no code."""

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_GLOBALS:
            raise RefusedGlobal(f"{module}.{name}")
        if (module, name) == ("numpy", "dtype"):
            return _plain_dtype
        return super().find_class(module, name)


def check_pickle(data: bytes, name: str, source: Path) -> None:
    """Walk the pickle's opcodes without building anything: every length it declares must be
    there (so nothing is allocated past the member's own bytes, which are bounded), and it may
    hold at most MAX_PICKLE_OPS opcodes (so at most as many objects)."""
    stream = io.BytesIO(data)
    try:
        for count, (op, arg, _) in enumerate(pickletools.genops(stream), 1):
            if count > MAX_PICKLE_OPS:
                raise UserError(f"{source}: member {name} holds more than {MAX_PICKLE_OPS} "
                                "pickle opcodes (an official batch: ~35,000); refused")
            if op.name == "FRAME" and arg > len(data) - stream.tell():
                raise ValueError(f"a frame of {arg} bytes, but only "
                                 f"{len(data) - stream.tell()} remain")
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 (a declared length past the end, a bad opcode, ...)
        raise UserError(f"{source}: member {name} is corrupt ({_one_line(e)[:200]})") from None


def _unpickle(data: bytes, name: str, source: Path) -> dict:
    """Unpickle one CIFAR member (Python 2 pickle, so ``encoding="bytes"``), allowing only what
    the official batches hold, after check_pickle has bounded what it can allocate."""
    check_pickle(data, name, source)
    try:
        obj = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except RefusedGlobal as e:
        raise UserError(f"{source}: member {name} holds {e}, which no CIFAR-10 batch holds; "
                        "refused unopened (loading it could run code)") from None
    except Exception as e:  # noqa: BLE001 (a corrupt pickle or gzip stream can raise anything)
        raise UserError(f"{source}: member {name} is corrupt ({_one_line(e)[:200]})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{source}: member {name} is not a CIFAR-10 dictionary")
    return obj


def _too_large(source: Path, what: str, size: int, bound: int) -> UserError:
    return UserError(f"{source}: {what} is {size} bytes, past the bound of {bound} (an official "
                     "CIFAR-10 batch is ~31 MB); refused")


def _read_bounded(f, name: str, size: int, source: Path) -> bytes:
    """A member's bytes, refused unread when its size is past MAX_BATCH_BYTES."""
    if size > MAX_BATCH_BYTES:
        raise _too_large(source, f"member {name}", size, MAX_BATCH_BYTES)
    return f.read(MAX_BATCH_BYTES + 1)


def _read_members(path: Path) -> dict[str, dict]:
    """Return ``{member name: unpickled dict}`` from a ``.tar.gz`` archive or extracted folder."""
    wanted = {*TRAIN_MEMBERS, TEST_MEMBER, META_MEMBER}
    found: dict[str, dict] = {}
    if path.is_dir():
        for name in wanted:
            if (path / name).is_file():
                with open(path / name, "rb") as f:
                    data = _read_bounded(f, name, (path / name).stat().st_size, path)
                found[name] = _unpickle(data, name, path)
    elif path.is_file():
        try:
            with tarfile.open(path, "r:*") as tar:
                stream = tar.fileobj
                # one sequential pass: no seeking back in the gzip stream
                for count, member in enumerate(tar, 1):
                    _check_stream(path, stream, count)
                    name = PurePosixPath(member.name).name
                    if member.isfile() and name in wanted and name not in found:
                        data = _read_bounded(tar.extractfile(member), name, member.size, path)
                        found[name] = _unpickle(data, name, path)
                    tar.members = []  # keep no headers: a million tiny members cost nothing
                # read on to the end: gzip checks its CRC there, which catches a flipped byte
                # that still decompresses (and unpickles) into wrong pixels
                while stream.read(1 << 20):
                    _check_stream(path, stream, 0)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            msg = f"{path} is not a readable archive ({_one_line(e)}); delete it and run again"
            raise UserError(msg) from None
    else:
        raise UserError(f"CIFAR-10 data not found at {path}")
    missing = sorted(wanted - found.keys())
    if missing:
        raise UserError(f"{path} lacks CIFAR-10 member(s) {', '.join(missing)}")
    return found


def _check_stream(path: Path, stream, members: int) -> None:
    """Stop reading a tar stream past MAX_ARCHIVE_BYTES decompressed or MAX_ARCHIVE_MEMBERS."""
    if members > MAX_ARCHIVE_MEMBERS:
        raise UserError(f"{path}: more than {MAX_ARCHIVE_MEMBERS} members (the official "
                        "archive has 8); refused")
    position = stream.tell()
    if position > MAX_ARCHIVE_BYTES:
        raise _too_large(path, "the decompressed archive", position, MAX_ARCHIVE_BYTES)


def _batch_arrays(batch: dict, name: str, source: Path, n_classes: int):
    """Turn one batch dict into ``(uint8 images N×32×32×3 HWC, int64 labels N)``."""
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64).reshape(-1)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{source}: member {name} is malformed ({_one_line(e)})") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise UserError(
            f"{source}: member {name} has data of shape {data.shape} "
            f"and {len(labels)} labels, expected N×3072 and N"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise UserError(f"{source}: member {name} has labels outside 0..{n_classes - 1}")
    # rows are channel-planar (all R, then G, then B), each plane row-major 32×32
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


def read_official(path: Path) -> dict:
    """Parse the official archive (``.tar.gz``, read in place) or its extracted folder.

    Returns ``train_images``/``test_images`` (uint8, N×32×32×3 HWC), ``train_labels``/
    ``test_labels`` (int64, N) and ``classes`` (the label names).
    """
    path = Path(path).expanduser()
    members = _read_members(path)
    try:
        classes = [n.decode("utf-8") for n in members[META_MEMBER][b"label_names"]]
    except (KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: member {META_MEMBER} is malformed ({_one_line(e)})") from None
    train = [_batch_arrays(members[n], n, path, len(classes)) for n in TRAIN_MEMBERS]
    test_images, test_labels = _batch_arrays(members[TEST_MEMBER], TEST_MEMBER, path, len(classes))
    return {
        "train_images": np.concatenate([images for images, _ in train]),
        "train_labels": np.concatenate([labels for _, labels in train]),
        "test_images": test_images,
        "test_labels": test_labels,
        "classes": classes,
    }


def load(data_dir: Path | None = None, url: str | None = None, progress: bool = True) -> dict:
    """Find or download CIFAR-10 in ``data_dir`` (default :func:`default_data_dir`) and parse it."""
    return read_official(ensure_archive(Path(data_dir or default_data_dir()), url, progress))

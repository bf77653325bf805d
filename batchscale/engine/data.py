"""Data: where the images come from, and the on-device loader that crops and flips whole batches.

Sources (`--dataset`):
  sample                 the real CIFAR-10 subset shipped in the package (scripts/make_sample.py)
  cifar10                the official python archive, downloaded once and MD5-checked
  PATH.zip | PATH/       an image folder, train/<class>/*.jpg|png and test/<class>/...
  PATH.tar.gz | PATH/    the official archive or its extracted cifar-10-batches-py folder

Every split is held as one uint8 tensor (N, 32, 32, 3) on the training device. The data order of
an epoch and its augmentation are functions of (seed, epoch) only, so a resumed run sees exactly
the batches an uninterrupted one would.
"""

from __future__ import annotations

import io
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from batchscale.engine import cifar10
from batchscale.errors import UserError, one_line

SAMPLE_PATH = Path(__file__).parent / "sample" / "cifar10-sample.zip"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
# Per-channel mean and std of the official CIFAR-10 training split, on a 0-1 scale.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IMAGE_SIZE = (32, 32, 3)  # height, width, channels of every image the models take
# A zip is refused before anything is decoded if a member declares more than MAX_MEMBER_BYTES
# or all of them more than MAX_ZIP_BYTES (a CIFAR-10 JPEG is ~1-2 KB; the whole set ~150 MB as raw
# pixels). A header can lie: members are read in chunks of READ_CHUNK and reading stops at the
# bound whatever the header says (zipfile's own read() inflates a whole member at once, then
# checks). Only stored and deflated members are read: bzip2 and LZMA inflate a chunk unbounded.
MAX_MEMBER_BYTES = 1 << 20
MAX_ZIP_BYTES = 4 << 30
READ_CHUNK = 64 << 10
ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, H, W, 3); with `prepared`, the model's inputs (N, ...)
    labels: torch.Tensor  # int64 (N,)
    prepared: bool = False  # a user's data: inputs as given, neither normalized nor augmented

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device) -> Split:
        return Split(self.images.to(device), self.labels.to(device), self.prepared)

    def inputs(self, index: torch.Tensor) -> torch.Tensor:
        """The model's inputs of the samples at `index`, unaugmented (CIFAR-normalized unless
        the split holds a user's prepared inputs)."""
        chosen = self.images.index_select(0, index)
        return chosen if self.prepared else normalize(chosen)


# ---------------------------------------------------------------------- image folders
def _decode(data: bytes, name: str) -> np.ndarray:
    """A 32x32 image's RGB pixels; its size is checked from the header, before decoding."""
    try:
        with warnings.catch_warnings():  # its size is checked here, before any decoding
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        width, height = image.size
        if (height, width) != IMAGE_SIZE[:2]:
            raise UserError(f"image {name} is {width}x{height}; every image must be "
                            f"{IMAGE_SIZE[1]}x{IMAGE_SIZE[0]} RGB")
        pixels = np.asarray(image.convert("RGB"))
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 (a damaged image can raise anything in a decoder)
        raise UserError(f"image {name} cannot be decoded: {one_line(err)}") from None
    if pixels.shape != IMAGE_SIZE:
        raise UserError(f"image {name} is {pixels.shape[1]}x{pixels.shape[0]}; every image "
                        f"must be {IMAGE_SIZE[1]}x{IMAGE_SIZE[0]} RGB")
    return pixels


def check_zip_members(path: Path, members: list[zipfile.ZipInfo]) -> None:
    """Refuse, before decoding anything, a zip with a member name outside its root or members
    that would decompress past MAX_MEMBER_BYTES each or MAX_ZIP_BYTES together."""
    total = 0
    for member in members:
        parts = member.filename.replace("\\", "/").split("/")
        if member.filename.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
            raise UserError(f"{path}: member name {member.filename!r} leaves the archive's root; "
                            "refused")
        if member.compress_type not in ZIP_METHODS and not member.is_dir():
            raise UserError(f"{path}: member {member.filename} is compressed with method "
                            f"{member.compress_type}; only stored and deflated members are "
                            "read")
        if member.file_size > MAX_MEMBER_BYTES:
            raise UserError(f"{path}: member {member.filename} would decompress to "
                            f"{member.file_size} bytes (bound {MAX_MEMBER_BYTES}); refused")
        total += member.file_size
    if total > MAX_ZIP_BYTES:
        raise UserError(f"{path}: members would decompress to {total} bytes (bound "
                        f"{MAX_ZIP_BYTES}); refused")


def read_member(archive: zipfile.ZipFile, name: str, path: Path) -> bytes:
    """A member's bytes, inflated READ_CHUNK at a time: at most MAX_MEMBER_BYTES are held
    whatever its header declares (a longer member is refused there, a shorter or lying one
    fails its CRC-32 check)."""
    parts, total = [], 0
    with archive.open(name) as member:
        while chunk := member.read(READ_CHUNK):
            total += len(chunk)
            if total > MAX_MEMBER_BYTES:
                raise UserError(f"{path}: member {name} decompresses past {MAX_MEMBER_BYTES} "
                                "bytes; refused")
            parts.append(chunk)
    return b"".join(parts)


def read_image_file(file: Path) -> bytes:
    """An image file of a folder, refused unread past MAX_MEMBER_BYTES."""
    size = file.stat().st_size
    if size > MAX_MEMBER_BYTES:
        raise UserError(f"{file} is {size} bytes (bound {MAX_MEMBER_BYTES}); not a 32x32 image")
    return file.read_bytes()


def _folder_entries(names: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Group 'split/class/file' names into {split: [(class, name), ...]} in sorted order."""
    entries: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    for name in sorted(names):
        parts = name.split("/")
        if len(parts) == 3 and parts[0] in entries and name.lower().endswith(IMAGE_SUFFIXES):
            entries[parts[0]].append((parts[1], name))
    return entries


def _build_split(entries: list[tuple[str, str]], classes: list[str], read) -> Split:
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({c for c, _ in entries} - index.keys())
    if unknown:
        raise UserError(f"test class(es) {', '.join(unknown)} have no training images")
    images = np.stack([_decode(read(name), name) for _, name in entries])
    labels = np.array([index[c] for c, _ in entries], dtype=np.int64)
    return Split(torch.from_numpy(images), torch.from_numpy(labels))


def read_image_folder(path: Path) -> tuple[Split, Split, list[str]]:
    """Read an image folder (a directory or a zip of one) into uint8 splits."""
    try:
        if path.is_dir():
            names = [p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()]
            entries = _folder_entries(names)
            return _splits_from(entries, lambda n: read_image_file(path / n))
        with zipfile.ZipFile(path) as archive:
            check_zip_members(path, archive.infolist())
            entries = _folder_entries(archive.namelist())
            return _splits_from(entries, lambda name: read_member(archive, name, path))
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 (a damaged zip: BadZipFile, OSError, zlib, EOF, ...)
        raise UserError(f"cannot read image folder {path}: {one_line(err)}") from None


def _splits_from(entries, read) -> tuple[Split, Split, list[str]]:
    if not entries["train"] or not entries["test"]:
        raise UserError("an image folder needs train/<class>/<image> and test/<class>/<image>")
    found = sorted({c for c, _ in entries["train"]})
    classes = list(CLASSES) if set(found) <= set(CLASSES) else found
    return (_build_split(entries["train"], classes, read),
            _build_split(entries["test"], classes, read), classes)


# ---------------------------------------------------------------------- sources
def _from_official(arrays: dict) -> tuple[Split, Split, list[str]]:
    def split(prefix):
        return Split(torch.from_numpy(arrays[f"{prefix}_images"]),
                     torch.from_numpy(arrays[f"{prefix}_labels"]))

    return split("train"), split("test"), list(arrays["classes"])


def load_dataset(name: str, data_dir: str = "", progress: bool = True):
    """(train, test, classes) for a `--dataset` value."""
    if name == "sample":
        return read_image_folder(SAMPLE_PATH)
    if name == "cifar10":
        directory = Path(data_dir) if data_dir else None
        return _from_official(cifar10.load(directory, progress=progress))
    path = Path(name).expanduser()
    if not path.exists():
        raise UserError(f"dataset '{name}' is neither sample, cifar10 nor an existing path")
    if path.name.endswith(".tar.gz") or (path / "data_batch_1").exists():
        return _from_official(cifar10.read_official(path))
    return read_image_folder(path)


def balanced_subset(split: Split, size: int, seed: int) -> Split:
    """A class-balanced subset of `size` samples chosen by `seed` (classes differ by ≤ 1)."""
    if size <= 0 or size >= len(split):
        return split
    generator = torch.Generator().manual_seed(seed)
    classes = split.labels.unique()
    per_class = [size // len(classes) + (i < size % len(classes)) for i in range(len(classes))]
    chosen = []
    for count, label in zip(per_class, classes, strict=True):
        members = torch.nonzero(split.labels == label).flatten()
        if count > len(members):
            raise UserError(f"train_subset {size} needs {count} images of class {int(label)}, "
                            f"the split has {len(members)}")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:count]])
    index = torch.cat(chosen).sort().values
    return Split(split.images[index], split.labels[index], split.prepared)


# ---------------------------------------------------------------------- on-device batches
def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


_SCALE_SHIFT: dict = {}  # (device, dtype, H, W) -> 1/(255 std) and -mean/std per pixel


def normalize(images: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """uint8 (B, H, W, 3) → normalized float (B, 3, H, W) in channels_last memory layout.

    x * (1 / (255 std)) - mean / std. The per-channel constants are laid out once as
    whole (H, W, 3) images, so both in-place ops run over contiguous memory; broadcasting a
    size-3 last dimension (or one addcmul) measured ~10x slower on CPU."""
    height, width, channels = images.shape[1:]
    key = (images.device, dtype, height, width)
    if key not in _SCALE_SHIFT:
        scale = torch.tensor([1 / (255 * s) for s in STD], dtype=dtype)
        shift = torch.tensor([-m / s for m, s in zip(MEAN, STD, strict=True)], dtype=dtype)
        _SCALE_SHIFT[key] = tuple(t.expand(height, width, channels).contiguous().to(images.device)
                                  for t in (scale, shift))
    scale, shift = _SCALE_SHIFT[key]
    return images.to(dtype).mul_(scale).add_(shift).permute(0, 3, 1, 2)


def crop_flip(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor,
              pad: int = 4) -> torch.Tensor:
    """Random-crop (zero padding `pad`) and flip a uint8 (B, H, W, C) batch in one gather.

    Image b's output pixel (i, j) is input pixel (i + dy[b] - pad, j' + dx[b] - pad), where
    j' = W - 1 - j if flip[b] else j; pixels falling outside the image are 0.
    """
    batch, height, width, channels = images.shape
    padded = images.new_zeros(batch, height + 2 * pad, width + 2 * pad, channels)
    padded[:, pad:pad + height, pad:pad + width] = images
    pixel = crop_flip_index(dy, dx, flip, height, width, pad)
    return padded.view(-1, channels).index_select(0, pixel).view(batch, height, width, channels)


def crop_flip_index(dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, height: int,
                    width: int, pad: int) -> torch.Tensor:
    """The flat pixel index into the zero-padded batch, one entry per output pixel: a single
    index_select with it is 3x faster than 3-D advanced indexing."""
    cols = torch.arange(width, device=dx.device)
    cols = torch.where(flip[:, None], width - 1 - cols, cols) + dx[:, None]
    rows = torch.arange(height, device=dy.device) + dy[:, None]
    first_row = torch.arange(len(dy), device=dy.device)[:, None] * (height + 2 * pad)
    return ((first_row + rows)[:, :, None] * (width + 2 * pad) + cols[:, None, :]).view(-1)


class EpochLoader:
    """The batches of one epoch: a seeded permutation, cut into full batches, augmented on device.

    `rank`/`world_size` give each worker a disjoint contiguous share of every global batch.
    """

    def __init__(self, split: Split, batch_size: int, seed: int, epoch: int, augment: bool = True,
                 rank: int = 0, world_size: int = 1, pad: int = 4):
        generator = _epoch_generator(seed, epoch)
        n = len(split)
        self.split, self.batch_size, self.augment, self.pad = split, batch_size, augment, pad
        self.order = torch.randperm(n, generator=generator)
        self.dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        self.dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        self.flip = torch.rand(n, generator=generator) < 0.5
        device = split.images.device  # moved once, not four small copies a step
        self.order, self.dy, self.dx, self.flip = (t.to(device) for t in (self.order, self.dy,
                                                                           self.dx, self.flip))
        self.steps = n // batch_size
        self.local = batch_size // world_size
        self.offset = rank * self.local

    def __len__(self) -> int:
        return self.steps

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized images (B, 3, H, W) and labels of step `step` of this epoch."""
        start = step * self.batch_size + self.offset
        positions = slice(start, start + self.local)
        index = self.order[positions]
        images = self.split.images.index_select(0, index)
        if self.split.prepared:  # a user's inputs: as given
            return images, self.split.labels[index]
        if self.augment:
            images = crop_flip(images, self.dy[positions], self.dx[positions],
                               self.flip[positions], self.pad)
        return normalize(images), self.split.labels[index]


def eval_batches(split: Split, batch_size: int):
    """Unaugmented batches in order, for evaluation."""
    for start in range(0, len(split), batch_size):
        part = slice(start, start + batch_size)
        images = split.images[part]
        yield (images if split.prepared else normalize(images)), split.labels[part]


# ---------------------------------------------------------------------- a user's data
def split_from(data, classes: int | None = None) -> tuple[Split, int]:
    """A user's classification data as a prepared Split and its number of classes: tensors
    `(x, y)` or any `torch.utils.data.Dataset` (map-style: `len()` and `[i]`) of `(input, label)`
    pairs, materialized into one tensor of inputs (used as given: not normalized, not
    augmented) and one of int64 labels 0..C-1. Classes: `classes`, else the largest label + 1.
    Anything else is a UserError: no samples, items that are not pairs of tensors of one shape,
    labels that are not integers (a regression target: advise judges trials against chance,
    ln C, and needs classes)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(torch.is_tensor(t)
                                                                   for t in data):
        x, y = data
        if len(x) != len(y):
            raise UserError(f"dataset: {len(x)} inputs but {len(y)} labels")
    else:
        try:
            size = len(data)
            items = [data[i] for i in range(size)]
        except TypeError:
            raise UserError(f"dataset must be tensors (x, y) or a map-style "
                            f"torch.utils.data.Dataset of (input, label) pairs, got "
                            f"{type(data).__name__}") from None
        if not all(isinstance(item, (tuple, list)) and len(item) == 2 for item in items):
            raise UserError("dataset: every item must be an (input, label) pair")
        if not items:
            raise UserError("dataset is empty")
        try:
            x = torch.stack([torch.as_tensor(item[0]) for item in items])
            y = torch.stack([torch.as_tensor(item[1]) for item in items])
        except (RuntimeError, TypeError, ValueError) as err:
            raise UserError(f"dataset: its items cannot be stacked into tensors: "
                            f"{one_line(err)}") from None
    if len(y) == 0:
        raise UserError("dataset is empty")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.ndim != 1:
        raise UserError(f"dataset: labels must be integer class indices, one per sample (got "
                        f"{y.dtype} of shape {tuple(y.shape)}); advise judges trials against "
                        "chance (ln C) and does not take regression targets")
    y = y.long()
    low, high = int(y.min()), int(y.max())
    count = classes if classes is not None else high + 1
    if low < 0 or high >= count:
        raise UserError(f"dataset: labels must lie in 0..{count - 1}, found {low}..{high}")
    if count < 2:
        raise UserError(f"dataset: a classifier needs at least 2 classes, got {count}")
    return Split(x.detach(), y, prepared=True), count

"""Where an augmented batch's time goes: the pieces of `EpochLoader.batch`, and the alternatives
to its crop/flip gather that were measured and not taken.

    python benchmarks/data_pieces.py [--batch-size 128 --repeats 300 --threads 1 --json PATH]

Times each piece on the embedded sample (median of 5 blocks of --repeats calls, ms per batch):
the whole `batch()`, the zero-padded copy, the flat pixel index, the 3-byte pixel gather, the
normalization; then the same gather over 4-byte pixels (RGBX: fast, but the resident set would
cost 4/3 of its uint8 size), the per-batch repack to RGBX it would otherwise need, and per-(dx,
flip) slicing as airbench does it. Every alternative is checked equal to `crop_flip` first.
"""

import argparse
import statistics
import time

import torch

from batchscale.bench import save_json
from batchscale.engine.data import EpochLoader, crop_flip, crop_flip_index, load_dataset, normalize


def timed(fn, repeats: int) -> float:
    """Median over 5 blocks of the ms per call."""
    fn()
    blocks = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        blocks.append((time.perf_counter() - start) / repeats * 1e3)
    return statistics.median(blocks)


def padded(images: torch.Tensor, pad: int, channels: int) -> torch.Tensor:
    batch, height, width, _ = images.shape
    out = images.new_zeros(batch, height + 2 * pad, width + 2 * pad, channels)
    out[:, pad:pad + height, pad:pad + width, :images.shape[3]] = images
    return out


def sliced(images, dy, dx, flip, pad: int) -> torch.Tensor:
    """Crop/flip by slicing each (dy, dx, flip) subset of the batch (airbench's way)."""
    batch, height, width, _ = images.shape
    source, out = padded(images, pad, images.shape[3]), torch.empty_like(images)
    key = (dy * (2 * pad + 1) + dx) * 2 + flip.long()
    for k in torch.unique(key).tolist():
        chosen = (key == k).nonzero().view(-1)
        (y, x), mirror = divmod(k // 2, 2 * pad + 1), k % 2
        part = source.index_select(0, chosen)[:, y:y + height, x:x + width]
        out.index_copy_(0, chosen, part.flip(2) if mirror else part)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train = load_dataset("sample")[0]
    loader, pad, size = EpochLoader(train, args.batch_size, 0, 0), 4, args.batch_size
    images = train.images.index_select(0, loader.order[:size])
    dy, dx, flip = loader.dy[:size], loader.dx[:size], loader.flip[:size]
    _, height, width, channels = images.shape
    index = crop_flip_index(dy, dx, flip, height, width, pad)
    rgb, rgbx = padded(images, pad, channels), padded(images, pad, 4)
    as_int32 = rgbx.view(torch.int32).view(-1)
    reference = crop_flip(images, dy, dx, flip, pad)
    gathered32 = as_int32.index_select(0, index).view(torch.uint8).view(size, height, width, 4)
    assert torch.equal(gathered32[..., :3], reference)
    assert torch.equal(sliced(images, dy, dx, flip, pad), reference)
    results = {
        "batch() in all": timed(lambda: loader.batch(3), args.repeats),
        "crop_flip in all": timed(lambda: crop_flip(images, dy, dx, flip, pad), args.repeats),
        "  zero-padded copy": timed(lambda: padded(images, pad, channels), args.repeats),
        "  flat pixel index": timed(lambda: crop_flip_index(dy, dx, flip, height, width, pad),
                                    args.repeats),
        "  3-byte pixel gather": timed(lambda: rgb.view(-1, channels).index_select(0, index),
                                       args.repeats),
        "normalize": timed(lambda: normalize(reference), args.repeats),
        "alt: 4-byte pixel gather (RGBX resident set)": timed(
            lambda: as_int32.index_select(0, index), args.repeats),
        "alt: per-batch repack to RGBX": timed(lambda: padded(images, pad, 4), args.repeats),
        "alt: per-(dy, dx, flip) slicing": timed(lambda: sliced(images, dy, dx, flip, pad),
                                                  max(1, args.repeats // 10)),
    }
    for name, ms in results.items():
        print(f"{name:<48} {ms:7.3f} ms")
    save_json({"data_pieces_ms": results, "batch_size": size, "threads": args.threads},
              args.json)


if __name__ == "__main__":
    main()

"""Build the embedded sample, batchscale/sample/cifar10-sample.zip, from the full CIFAR-10 zip.

    python scripts/make_sample.py [--source ZIP] [--train 500] [--test 100]

Takes, per class, the first TRAIN training and first TEST test images in name order (the JPEG
bytes unchanged), and writes them with fixed timestamps, so that the output is byte-identical
every time it is built from the same source.
"""

import argparse
import hashlib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "batchscale" / "engine" / "sample" / "cifar10-sample.zip"


def select(names, split, per_class):
    by_class = {}
    for name in sorted(names):
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == split and name.endswith(".jpg"):
            by_class.setdefault(parts[1], []).append(name)
    return [n for cls in sorted(by_class) for n in by_class[cls][:per_class]]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(ROOT.parent / "shared/data/cifar10-jpeg.zip"))
    parser.add_argument("--train", type=int, default=500, help="training images per class")
    parser.add_argument("--test", type=int, default=100, help="test images per class")
    args = parser.parse_args()
    with zipfile.ZipFile(args.source) as source, zipfile.ZipFile(OUT, "w") as out:
        names = source.namelist()
        chosen = select(names, "train", args.train) + select(names, "test", args.test)
        for name in chosen:
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            out.writestr(info, source.read(name), compress_type=zipfile.ZIP_STORED)
    digest = hashlib.sha256(OUT.read_bytes()).hexdigest()
    print(f"wrote {OUT} ({len(chosen)} images, {OUT.stat().st_size / 1e6:.1f} MB, sha256 {digest})")


if __name__ == "__main__":
    main()

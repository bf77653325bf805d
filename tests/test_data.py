"""Data: the embedded sample, balanced subsets, and on-device crop/flip (values by hand)."""

import zipfile

import pytest
import torch

from batchscale.engine.data import (
    MEAN,
    STD,
    EpochLoader,
    Split,
    balanced_subset,
    crop_flip,
    load_dataset,
    normalize,
    read_image_folder,
)
from batchscale.errors import UserError


@pytest.fixture(scope="module")
def sample():
    return load_dataset("sample")


def test_embedded_sample_is_real_balanced_cifar10(sample):
    train, test, classes = sample
    assert classes[0] == "airplane" and len(classes) == 10
    assert train.images.shape == (5000, 32, 32, 3) and train.images.dtype == torch.uint8
    assert test.images.shape == (1000, 32, 32, 3)
    assert torch.bincount(train.labels).tolist() == [500] * 10
    mean = train.images.float().mean(dim=(0, 1, 2)) / 255  # natural images, near CIFAR's mean
    torch.testing.assert_close(mean, torch.tensor(MEAN), atol=0.03, rtol=0)


def test_balanced_subset_is_balanced_and_seed_determined(sample):
    train = sample[0]
    a, b, c = (balanced_subset(train, 1003, seed) for seed in (1, 1, 2))
    counts = torch.bincount(a.labels)
    assert len(a) == 1003 and counts.max() - counts.min() <= 1
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    skewed = Split(train.images[:20], torch.tensor([0] * 18 + [1] * 2))
    with pytest.raises(UserError, match="class 1"):
        balanced_subset(skewed, 15, 0)  # class 1 would need 7 images and has 2


def test_crop_without_shift_or_flip_is_identity_and_shift_pads_with_zeros():
    images = torch.arange(2 * 5 * 5 * 3, dtype=torch.int64).remainder(250).add(1)
    images = images.to(torch.uint8).view(2, 5, 5, 3)
    same = crop_flip(images, torch.tensor([4, 4]), torch.tensor([4, 4]),
                     torch.tensor([False, False]))
    assert torch.equal(same, images)
    # dy = dx = 0: output (i, j) = input (i - 4, j - 4); only (4, 4) stays inside the image
    shifted = crop_flip(images, torch.tensor([0, 0]), torch.tensor([0, 0]),
                        torch.tensor([False, False]))
    assert torch.equal(shifted[:, 4, 4], images[:, 0, 0])
    assert shifted[:, :4].sum() == 0 and shifted[:, :, :4].sum() == 0
    # dy = 5, dx = 3: output (i, j) = input (i + 1, j - 1)
    moved = crop_flip(images, torch.tensor([5, 5]), torch.tensor([3, 3]),
                      torch.tensor([False, False]))
    assert torch.equal(moved[:, 0:4, 1:5], images[:, 1:5, 0:4])
    flipped = crop_flip(images, torch.tensor([4, 4]), torch.tensor([4, 4]),
                        torch.tensor([True, False]))
    assert torch.equal(flipped[0], images[0].flip(1)) and torch.equal(flipped[1], images[1])


def test_normalize_gives_channels_last_standardized_floats():
    images = torch.full((2, 4, 4, 3), 255, dtype=torch.uint8)
    out = normalize(images)
    assert out.shape == (2, 3, 4, 4) and out.is_contiguous(memory_format=torch.channels_last)
    expected = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(out[0, :, 0, 0], expected)


def test_epoch_loader_is_a_function_of_seed_and_epoch(sample):
    train = balanced_subset(sample[0], 500, 0)
    first = EpochLoader(train, 100, seed=7, epoch=2).batch(3)
    again = EpochLoader(train, 100, seed=7, epoch=2).batch(3)
    other = EpochLoader(train, 100, seed=7, epoch=3).batch(3)
    assert first[0].shape == (100, 3, 32, 32) and first[1].shape == (100,)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])
    loader = EpochLoader(train, 96, seed=7, epoch=0)
    assert len(loader) == 5  # 500 // 96: the partial batch is dropped
    seen = torch.cat([loader.order[s * 96:(s + 1) * 96] for s in range(len(loader))])
    assert len(seen.unique()) == 480  # no image twice in an epoch


def test_worker_shards_are_disjoint_and_cover_the_global_batch(sample):
    train = balanced_subset(sample[0], 256, 0)
    whole = EpochLoader(train, 64, seed=1, epoch=0).batch(2)
    parts = [EpochLoader(train, 64, seed=1, epoch=0, rank=r, world_size=2).batch(2)
             for r in range(2)]
    assert torch.equal(torch.cat([p[0] for p in parts]), whole[0])
    assert torch.equal(torch.cat([p[1] for p in parts]), whole[1])


def test_image_folder_zip_and_directory_read_the_same(tmp_path):
    source = zipfile.ZipFile(load_dataset.__globals__["SAMPLE_PATH"])
    small = tmp_path / "small.zip"
    names = [n for n in source.namelist() if n.split("/")[2] < "0003"]
    with zipfile.ZipFile(small, "w") as out:
        for name in names:
            out.writestr(name, source.read(name))
            (tmp_path / "dir" / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "dir" / name).write_bytes(source.read(name))
    from_zip = read_image_folder(small)
    from_dir = read_image_folder(tmp_path / "dir")
    assert len(from_zip[0]) == 30 and len(from_zip[1]) == 30
    assert torch.equal(from_zip[0].images, from_dir[0].images)
    assert torch.equal(from_zip[1].labels, from_dir[1].labels)


def test_bad_dataset_values_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="neither"):
        load_dataset(str(tmp_path / "missing.zip"))
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="cannot read"):
        load_dataset(str(tmp_path / "bad.zip"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="train/<class>"):
        load_dataset(str(tmp_path / "empty"))

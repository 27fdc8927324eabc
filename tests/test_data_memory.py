"""Tests of course_utils.data.memory: CachedPetDataset gives PetDataset's items, decoded once."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from course_utils import config
from course_utils.data import (
    CachedPetDataset,
    PetDataset,
    PetRecord,
    bundled_records,
    cache_side_for,
    denormalize,
    eval_transform,
    make_loader,
    train_transform,
)
from course_utils.data import dataset as dataset_module

BUNDLED = config.repo_root() / "data" / "pets"


@pytest.fixture(autouse=True)
def _course_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Use the repository's bundled data; keep artifacts out of the repo; no progress bars."""
    monkeypatch.setenv(config.DATA_DIR_ENV, str(BUNDLED.parent))
    monkeypatch.setenv(config.ARTIFACTS_DIR_ENV, str(tmp_path / "artifacts"))
    monkeypatch.setenv("CI", "1")


@pytest.fixture(scope="module")
def records() -> list[PetRecord]:
    """16 bundled validation images (shorter side up to 288 px), with masks."""
    return bundled_records("val", root=BUNDLED)[:16]


@pytest.fixture
def square_record(tmp_path: Path) -> PetRecord:
    """A white 60 x 80 rectangle on a black 120 x 160 image; its trimap marks the rectangle."""
    pixels = np.zeros((120, 160, 3), dtype=np.uint8)
    trimap = np.full((120, 160), 2, dtype=np.uint8)
    pixels[30:90, 40:120] = 255
    trimap[30:90, 40:120] = 1
    Image.fromarray(pixels).save(tmp_path / "square.png")
    Image.fromarray(trimap).save(tmp_path / "square_mask.png")
    return PetRecord(tmp_path / "square.png", 1, None, tmp_path / "square_mask.png")


def test_cache_side_keeps_the_smallest_training_crop_at_full_detail() -> None:
    assert (cache_side_for(64), cache_side_for(128), cache_side_for(224)) == (125, 250, 438)
    for size in (64, 128, 224):
        smallest_crop_side = math.sqrt(0.35 * 3 / 4) * cache_side_for(size)
        assert size <= smallest_crop_side < size + 1


def test_cache_side_follows_a_wider_crop_scale() -> None:
    """With 8 % crops the smallest crop is 0.24 of the side: 523 px for 128 px training, so the
    bundled 288 px files are cached as they are instead of enlarged from 250 px."""
    assert cache_side_for(128, (0.08, 1.0)) == 523
    assert cache_side_for(128, (0.35, 1.0)) == cache_side_for(128)
    smallest_crop_side = math.sqrt(0.08 * 3 / 4) * cache_side_for(224, (0.08, 1.0))
    assert 224 <= smallest_crop_side < 225


def test_uncached_sizes_give_identical_items(records: list[PetRecord]) -> None:
    for transform in (None, eval_transform(64)):
        plain = PetDataset(records[:4], transform, with_mask=True)
        cached = CachedPetDataset(records[:4], transform, with_mask=True, cache_side=1000)
        for a, b in zip(plain, cached, strict=True):
            assert a.keys() == b.keys() and a["label"] == b["label"] and a["breed"] == b["breed"]
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
            assert type(b["image"]) is type(b["mask"]) is torch.Tensor


def test_cached_items_have_the_uncached_formats(records: list[PetRecord]) -> None:
    torch.manual_seed(0)
    side = 100
    raw = CachedPetDataset(records, with_mask=True, cache_side=side)
    for sample in raw:
        assert sample["image"].dtype == sample["mask"].dtype == torch.uint8
        assert min(sample["image"].shape[-2:]) == side
        assert sample["mask"].shape == sample["image"].shape[-2:]
        assert set(sample["mask"].unique().tolist()) <= {0, 1}
    assert raw.nbytes == sum(s["image"].numel() + s["mask"].numel() for s in raw)

    transform = train_transform(64)
    plain = PetDataset(records, transform, with_mask=True)[0]
    for sample in CachedPetDataset(records, transform, with_mask=True, cache_side=side):
        assert sample.keys() == plain.keys()
        assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == torch.float32
        assert sample["mask"].shape == (64, 64) and sample["mask"].dtype == torch.uint8
        assert type(sample["image"]) is type(sample["mask"]) is torch.Tensor

    image, label = CachedPetDataset(records, transform, cache_side=side)[-1]
    assert type(image) is torch.Tensor and image.shape == (3, 64, 64)
    assert label == records[-1].label and isinstance(label, int)


def test_cached_eval_images_are_close_to_uncached(records: list[PetRecord]) -> None:
    """Only the resize order differs (file -> 250 -> 146 px vs file -> 146 px). Measured over the
    376 bundled val + test images: mean absolute difference 0.0044 (max 0.034 for one image) on
    the [0, 1] scale, masks disagreeing on 0.6 % of pixels (max 2.1 %)."""
    transform = eval_transform(128)
    plain = PetDataset(records, transform, with_mask=True)
    cached = CachedPetDataset(records, transform, with_mask=True, cache_side=cache_side_for(128))
    image_diffs, mask_diffs = [], []
    for a, b in zip(plain, cached, strict=True):
        image_diffs.append((denormalize(a["image"]) - denormalize(b["image"])).abs().mean())
        mask_diffs.append((a["mask"] != b["mask"]).float().mean())
    assert max(image_diffs) < 0.04 and sum(image_diffs) / len(image_diffs) < 0.01
    assert max(mask_diffs) < 0.03


def test_mask_follows_the_cached_image(square_record: PetRecord) -> None:
    torch.manual_seed(0)
    geometric = v2.Compose([v2.RandomResizedCrop(48, scale=(0.3, 1.0)), v2.RandomHorizontalFlip()])
    dataset = CachedPetDataset([square_record] * 8, geometric, with_mask=True, cache_side=60)
    for sample in dataset:
        bright = sample["image"][0] > 127
        agreement = (bright == sample["mask"].bool()).float().mean().item()
        assert agreement > 0.95  # same crop and flip for both, up to edge pixels


def counting(function: Callable[..., Any], calls: list[object]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0])
        return function(*args, **kwargs)

    return wrapper


def test_each_record_is_decoded_once(
    records: list[PetRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    images: list[object] = []
    masks: list[object] = []
    monkeypatch.setattr(dataset_module, "load_rgb", counting(dataset_module.load_rgb, images))
    monkeypatch.setattr(
        dataset_module, "load_pet_mask", counting(dataset_module.load_pet_mask, masks)
    )
    dataset = CachedPetDataset(records[:6], train_transform(32), with_mask=True, cache_side=48)
    assert len(images) == len(masks) == 6
    for _ in range(2):
        for _ in make_loader(dataset, 4, train=True, num_workers=0):
            pass
        dataset[-1]
    assert len(images) == len(masks) == 6


def test_items_are_copies_of_the_cache(records: list[PetRecord]) -> None:
    dataset = CachedPetDataset(records[:2], with_mask=True)
    first = dataset[0]
    first["image"].zero_()
    first["mask"].fill_(1)
    again = dataset[0]
    assert again["image"].any() and not again["mask"].all()
    assert torch.equal(dataset[-1]["image"], dataset[1]["image"])
    with pytest.raises(IndexError):
        dataset[2]
    assert len(CachedPetDataset([])) == 0


@pytest.mark.parametrize("num_workers", [0, 1])
def test_data_loader_batches(records: list[PetRecord], num_workers: int) -> None:
    dataset = CachedPetDataset(records[:6], eval_transform(32), with_mask=True, cache_side=40)
    loader = make_loader(dataset, 4, train=False, num_workers=num_workers)
    batches = list(loader)
    assert [len(b["label"]) for b in batches] == [4, 2]
    expected = torch.stack([dataset[i]["image"] for i in range(4)])
    assert torch.equal(batches[0]["image"], expected)
    assert batches[0]["mask"].shape == (4, 32, 32) and batches[0]["mask"].dtype == torch.uint8
    assert batches[1]["breed"] == [r.breed for r in records[4:6]]

"""Tests of course_utils.data: the bundled set, every record source, image safety, transforms."""

from __future__ import annotations

import csv
import dataclasses
import shutil
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from course_utils import config
from course_utils.data import (
    CLASSES,
    CORNERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataIntegrityError,
    DatasetUnavailable,
    PetDataset,
    PetRecord,
    balanced_subset,
    bundled_records,
    check_image,
    corner_crop_transform,
    dataset_in_use,
    denormalize,
    eval_transform,
    folder_records,
    format_skipped,
    get_records,
    load_rgb,
    make_loader,
    oxford_pets_records,
    train_transform,
    validate_images,
)
from course_utils.data import images as images_module
from course_utils.data import oxford as oxford_module
from course_utils.data.splits import stratified_split

BUNDLED = config.repo_root() / "data" / "pets"
WHITE = (255, 255, 255)


@pytest.fixture(autouse=True)
def _course_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Use the repository's bundled data, and keep downloads and artifacts out of the repo."""
    monkeypatch.setenv(config.DATA_DIR_ENV, str(BUNDLED.parent))
    monkeypatch.setenv(config.ARTIFACTS_DIR_ENV, str(tmp_path / "artifacts"))


def save(image: Image.Image, path: Path, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def photo(size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A small RGB image with some structure (so JPEG truncation is visible)."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# --- the bundled set ---------------------------------------------------------------------


def test_bundled_index_composition() -> None:
    splits = {split: bundled_records(split) for split in ("train", "val", "test")}
    everything = [r for records in splits.values() for r in records]
    assert len(everything) == 940
    assert Counter(CLASSES[r.label] for r in everything) == {"cat": 500, "dog": 440}
    breeds = {r.breed for r in everything}
    assert len(breeds) == 37
    for split in ("val", "test"):
        assert {r.breed for r in splits[split]} == breeds, f"a breed is missing from {split}"
    paths = [set(r.image_path for r in records) for records in splits.values()]
    assert sum(map(len, paths)) == len(set().union(*paths)) == 940  # disjoint
    assert all(r.image_path.is_file() and r.mask_path.is_file() for r in everything)


def test_bundled_images_match_their_index_row() -> None:
    with (BUNDLED / "index.csv").open(newline="") as file:
        row = next(csv.DictReader(file))
    image = Image.open(BUNDLED / row["image"])
    mask = Image.open(BUNDLED / row["mask"])
    assert image.mode == "RGB" and mask.mode == "L"
    assert image.size == mask.size == (int(row["width"]), int(row["height"]))
    assert min(image.size) <= 288
    assert not image.getexif()
    assert set(np.unique(np.asarray(mask))) <= {1, 2, 3}


def copy_bundled_subset(destination: Path, rows: int = 4) -> Path:
    """A small copy of data/pets: the first rows of index.csv and their files."""
    with (BUNDLED / "index.csv").open(newline="") as file:
        lines = file.read().splitlines()[: rows + 1]
    destination.mkdir()
    (destination / "index.csv").write_text("\n".join(lines) + "\n")
    for row in csv.DictReader(lines):
        for column in ("image", "mask"):
            (destination / row[column]).parent.mkdir(exist_ok=True)
            shutil.copyfile(BUNDLED / row[column], destination / row[column])
    return destination


def test_checksum_catches_a_modified_file(tmp_path: Path) -> None:
    root = copy_bundled_subset(tmp_path / "pets")
    good = bundled_records("train", root=root) + bundled_records("val", root=root)
    assert good and all(r.image_path.parent.parent == root for r in good)

    tampered = copy_bundled_subset(tmp_path / "tampered")
    victim = sorted((tampered / "images").iterdir())[1]
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(DataIntegrityError) as error:
        bundled_records("train", root=tampered)
    message = str(error.value)
    assert victim.name in message and "git checkout -- data/" in message
    assert "build_bundled_data.py" in message
    assert bundled_records("train", root=tampered, verify=False)  # opt-out still reads


def test_unknown_split_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="Valid splits: train, val, test"):
        bundled_records("training")
    with pytest.raises(ValueError, match="Valid splits"):
        oxford_pets_records("dev", download=False)


def test_missing_bundled_data_names_the_place_and_the_variable(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        bundled_records("train", root=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(error.value)
    assert config.DATA_DIR_ENV in str(error.value)


# --- safe image loading ------------------------------------------------------------------


def _rgba() -> Image.Image:
    image = Image.new("RGBA", (40, 40), (255, 0, 0, 255))
    image.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent: becomes white
    return image


def _palette_with_transparency() -> Image.Image:
    image = Image.new("P", (40, 40), 1)
    image.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.info["transparency"] = 0
    return image


@pytest.mark.parametrize(
    ("name", "make", "corner", "centre"),
    [
        ("cmyk.jpg", lambda: Image.new("CMYK", (40, 40), (0, 0, 0, 0)), WHITE, WHITE),
        ("grey.png", lambda: Image.new("L", (40, 40), 128), (128,) * 3, (128,) * 3),
        ("grey16.png", lambda: Image.new("I;16", (40, 40), 65535), WHITE, WHITE),
        ("bilevel.png", lambda: Image.new("1", (40, 40), 1), WHITE, WHITE),
        ("rgba.png", _rgba, WHITE, (255, 0, 0)),
        ("palette.png", _palette_with_transparency, WHITE, (0, 0, 255)),
        ("grey-alpha.png", lambda: Image.new("LA", (40, 40), (0, 0)), WHITE, WHITE),
    ],
)
def test_load_rgb_converts_to_rgb(tmp_path: Path, name, make, corner, centre) -> None:
    source = make()
    path = save(source, tmp_path / name)
    assert Image.open(path).mode == source.mode or name.endswith(".jpg")
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (40, 40)
    assert image.getpixel((0, 0)) == pytest.approx(corner, abs=2)
    assert image.getpixel((20, 20)) == pytest.approx(centre, abs=2)


def test_load_rgb_applies_exif_orientation(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = save(photo((60, 30)), tmp_path / "rotated.jpg", exif=exif)
    assert load_rgb(path).size == (30, 60)


def test_check_image_reasons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = save(photo(), tmp_path / "good.jpg")
    data = good.read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    tiny = save(photo((16, 40)), tmp_path / "tiny.png")

    assert check_image(good) is None
    assert check_image(truncated).startswith("truncated or corrupt")
    assert check_image(text).startswith("not an image (the course reads JPEG, PNG")
    assert check_image(tiny).startswith("too small")
    usable, skipped = validate_images([good, text, tiny])
    assert usable == [good]
    assert [s.path for s in skipped] == [text, tiny]

    monkeypatch.setattr(images_module, "MAX_PIXELS", 64 * 48 - 1)  # rather than a huge file
    assert check_image(good).startswith("too large")


# --- user folders ------------------------------------------------------------------------


def test_folder_records_with_skip_list(tmp_path: Path) -> None:
    root = tmp_path / "my_pets"
    save(photo(), root / "Cats" / "tom.jpg")
    save(photo((50, 50)), root / "Cats" / "indoor" / "kitty.PNG")
    save(photo(), root / "DOGS" / "rex.webp")
    save(photo((8, 8)), root / "DOGS" / "thumb.jpg")
    (root / "DOGS" / "readme.txt").write_text("hello")
    (root / "DOGS" / "fake.jpg").write_text("not an image")
    (root / "DOGS" / ".hidden.jpg").write_text("ignored")

    records, skipped = folder_records(root)
    assert [(r.image_path.name, CLASSES[r.label]) for r in records] == [
        ("kitty.PNG", "cat"),  # sorted paths: Cats/indoor/... before Cats/tom.jpg
        ("tom.jpg", "cat"),
        ("rex.webp", "dog"),
    ]
    assert all(r.breed is None and r.mask_path is None for r in records)
    reasons = {s.path.name: s.reason for s in skipped}
    assert set(reasons) == {"thumb.jpg", "readme.txt", "fake.jpg"}
    assert reasons["fake.jpg"].startswith("not an image") and reasons["thumb.jpg"].startswith(
        "too small"
    )
    report = format_skipped(skipped)
    assert report.startswith("Skipped 3 file(s)") and "readme.txt" in report
    assert format_skipped([]) == "No images skipped."


def test_folder_records_wrong_layout_shows_expected_tree(tmp_path: Path) -> None:
    root = tmp_path / "holiday"
    save(photo(), root / "images" / "a.jpg")
    (root / "cats").mkdir()
    with pytest.raises(ValueError) as error:
        folder_records(root)
    message = str(error.value)
    assert "no 'dogs/' folder" in message
    assert "├── cats/" in message and "└── dogs/" in message
    assert "Found in" in message and "images/" in message


# --- dataset, transforms, loader ----------------------------------------------------------


@pytest.fixture
def square_record(tmp_path: Path) -> PetRecord:
    """A white square on black, with a trimap marking exactly the square as pet (1), its
    outline as border (3) and the rest as background (2)."""
    pixels = np.zeros((120, 160, 3), dtype=np.uint8)
    trimap = np.full((120, 160), 2, dtype=np.uint8)
    pixels[30:90, 40:120] = 255
    trimap[30:90, 40:120] = 1
    trimap[30, 40:120] = 3
    image = save(Image.fromarray(pixels), tmp_path / "square.png")
    mask = save(Image.fromarray(trimap), tmp_path / "square_mask.png")
    return PetRecord(image, label=1, breed=None, mask_path=mask)


def test_pet_dataset_mask_follows_the_image(square_record: PetRecord) -> None:
    torch.manual_seed(0)
    dataset = PetDataset([square_record] * 8, transform=train_transform(64), with_mask=True)
    for sample in dataset:
        assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == torch.float32
        assert sample["mask"].shape == (64, 64) and sample["mask"].dtype == torch.uint8
        assert set(sample["mask"].unique().tolist()) <= {0, 1}
        assert sample["label"] == 1 and sample["breed"] == ""
        assert type(sample["image"]) is torch.Tensor

    geometric = v2.Compose([v2.RandomResizedCrop(48, scale=(0.3, 1.0)), v2.RandomHorizontalFlip()])
    for sample in PetDataset([square_record] * 8, transform=geometric, with_mask=True):
        bright = sample["image"][0] > 127
        agreement = (bright == sample["mask"].bool()).float().mean().item()
        assert agreement > 0.95  # same crop and flip for both, up to edge pixels


def test_pet_dataset_default_items_and_errors(square_record: PetRecord) -> None:
    image, label = PetDataset([square_record])[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 120, 160) and label == 1
    image, _ = PetDataset([square_record], transform=eval_transform(56))[0]
    assert image.shape == (3, 56, 56)
    no_mask = dataclasses.replace(square_record, mask_path=None)
    with pytest.raises(ValueError, match="no pet mask"):
        PetDataset([square_record, no_mask], with_mask=True)


def test_transforms_and_denormalize() -> None:
    pil = photo((100, 80))
    out = eval_transform(32)(pil)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    plain = v2.Compose([v2.ToImage(), v2.Resize(37), v2.CenterCrop(32)])(pil)
    expected = plain.float() / 255
    assert torch.allclose(denormalize(out), expected, atol=1e-5)
    batch = torch.stack([out, out])
    assert denormalize(batch).shape == (2, 3, 32, 32)
    assert len(IMAGENET_MEAN) == len(IMAGENET_STD) == 3


def test_corner_crop_takes_each_corner_of_image_and_mask_alike() -> None:
    # A 60 x 90 image whose pixel value encodes its position; zoom 1.5 of 40 px -> shorter side 60.
    ys, xs = torch.meshgrid(torch.arange(60), torch.arange(90), indexing="ij")
    image = tv_tensors.Image(torch.stack([ys, xs, ys * 0]).to(torch.uint8))
    mask = tv_tensors.Mask((xs >= 45).to(torch.uint8))  # the right half is "pet"
    corners = {}
    for corner in CORNERS:
        out, out_mask = corner_crop_transform(40, corner)(image, mask)
        assert out.shape == (3, 40, 40) and out_mask.shape == (40, 40)
        pixels = (denormalize(out) * 255).round()
        corners[corner] = (int(pixels[0, 0, 0]), int(pixels[1, 0, 0]))  # (row, col) of top-left
        assert bool(out_mask.all()) == corner.endswith("right")
        assert not out_mask.any() or corner.endswith("right")
    assert corners == {
        "top-left": (0, 0),
        "top-right": (0, 50),
        "bottom-left": (20, 0),
        "bottom-right": (20, 50),
    }
    with pytest.raises(ValueError, match="corner must be one of"):
        corner_crop_transform(40, "centre")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="zoom must be at least 1"):
        corner_crop_transform(40, "top-left", zoom=0.9)


def test_make_loader(square_record: PetRecord) -> None:
    dataset = PetDataset([square_record] * 5, transform=eval_transform(32), with_mask=True)
    train = make_loader(dataset, 2, train=True, num_workers=0)
    evaluation = make_loader(dataset, 2, train=False, num_workers=0)
    assert train.drop_last and not evaluation.drop_last
    assert len(train) == 2 and len(evaluation) == 3
    batch = next(iter(evaluation))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["mask"].shape == (2, 32, 32)
    assert batch["breed"] == ["", ""] and batch["label"].tolist() == [1, 1]
    assert make_loader(dataset, 8, train=True, num_workers=0).drop_last is False  # tiny set


# --- profiles, subsets, the full data set -------------------------------------------------


def test_get_records_smoke_profile_is_capped_and_balanced() -> None:
    profile = config.get_profile("smoke")
    records, source = get_records(profile, "train")
    cap = profile.max_images_per_split
    assert len(records) == cap
    assert Counter(r.label for r in records) == {0: cap // 2, 1: cap // 2}
    assert len({r.breed for r in records}) > 20  # spread over the breeds
    assert records == get_records(profile, "train")[0]  # deterministic
    assert "bundled" in source and f"{cap} of 564" in source and "\n" not in source


def test_balanced_subset_fills_from_the_larger_class() -> None:
    records = [PetRecord(Path(f"c{i}"), 0, "a", None) for i in range(3)]
    records += [PetRecord(Path(f"d{i}"), 1, "b" if i % 2 else "c", None) for i in range(20)]
    subset = balanced_subset(records, 10)
    assert len(subset) == 10 and sum(r.label == 0 for r in subset) == 3
    assert subset == [r for r in records if r in subset]  # input order kept
    assert {r.breed for r in subset if r.label == 1} == {"b", "c"}


def test_oxford_unavailable_falls_back_to_bundled(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    attempts = []

    def no_network(request: urllib.request.Request, timeout: float) -> None:
        attempts.append(request.full_url)
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(oxford_module, "_failed_downloads", {})
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(DatasetUnavailable, match="no internet"):
        oxford_pets_records("train")

    profile = dataclasses.replace(config.get_profile("gpu"), max_images_per_split=None)
    records, source = get_records(profile, "val")
    printed = caplog.text
    assert "Full Oxford-IIIT Pet could not be downloaded" in printed
    assert "Temporary failure in name resolution" in printed
    assert "Falling back to the bundled 940-image sample" in printed
    assert records == bundled_records("val")
    assert "fallback" in source
    assert dataset_in_use(profile) == "bundled"  # what a trained run records as its data
    assert "data/pets" in source and str(config.repo_root()) not in source  # relative path
    assert len(attempts) == 1  # a failed download is not retried at once in the process


def make_fake_oxford(root: Path, comments: bool) -> Path:
    """A tiny oxford-iiit-pet/ tree: 2 breeds x 10 trainval images, 2 x 2 test images."""
    base = root / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True)
    (base / "annotations" / "trimaps").mkdir(parents=True)
    breeds = [("Bengal", 1, 2), ("beagle", 2, 11)]  # name, species, breed id
    header = ["#Image CLASS-ID SPECIES BREED ID", "#ID: 1:37 Class ids"] if comments else []
    for split, numbers in (("trainval", range(1, 11)), ("test", range(11, 13))):
        lines = header + [
            f"{name}_{n} {bid} {species} {bid}" for name, species, bid in breeds for n in numbers
        ]
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    oxford_module.mark_complete(base)
    return base


def test_oxford_list_files_become_records(tmp_path: Path) -> None:
    base = make_fake_oxford(tmp_path, comments=False)
    train = oxford_pets_records("train", root=tmp_path, download=False)
    val = oxford_pets_records("val", root=tmp_path, download=False)
    test = oxford_pets_records("test", root=tmp_path, download=False)
    assert len(test) == 4 and len(val) == 4 and len(train) == 16  # round(0.15 * 10) = 2 a breed
    assert {r.image_path for r in train}.isdisjoint(r.image_path for r in val)
    assert {r.breed for r in val} == {"Bengal", "beagle"}
    cat = next(r for r in test if r.breed == "Bengal")
    assert cat.label == 0 and cat.image_path == base / "images" / "Bengal_11.jpg"
    assert cat.mask_path == base / "annotations" / "trimaps" / "Bengal_11.png"
    assert all(r.label == 1 for r in test if r.breed == "beagle")
    assert val == oxford_pets_records("val", root=tmp_path, download=False)  # deterministic


def test_oxford_list_parser_skips_comments(tmp_path: Path) -> None:
    make_fake_oxford(tmp_path, comments=True)
    assert len(oxford_pets_records("test", root=tmp_path, download=False)) == 4


def test_oxford_missing_without_download(tmp_path: Path) -> None:
    with pytest.raises(DatasetUnavailable, match="download=False"):
        oxford_pets_records("test", root=tmp_path, download=False)


def test_stratified_split_rules() -> None:
    items = [(f"a{i}", "a") for i in range(200)] + [(f"b{i}", "b") for i in range(10)]
    held_out = {"test": (0.25, 2), "val": (0.15, 1)}
    assignment = stratified_split(items, held_out, seed=0)
    counts = Counter((name[0], split) for name, split in assignment.items())
    assert counts == {
        ("a", "test"): 50, ("a", "val"): 30, ("a", "train"): 120,
        ("b", "test"): 2, ("b", "val"): 2, ("b", "train"): 6,
    }  # fmt: skip
    assert assignment == stratified_split(reversed(items), held_out, seed=0)
    assert assignment != stratified_split(items, held_out, seed=1)
    with pytest.raises(ValueError, match="too few"):
        stratified_split([("x", "tiny"), ("y", "tiny")], held_out, seed=0)

"""The full Oxford-IIIT Pet data set (7,349 images, 37 breeds), downloaded with torchvision.

torchvision's ``OxfordIIITPet`` only downloads and checks the archives (MD5); the official list
files are read here into :class:`PetRecord` lists with the same layout as the other sources.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torchvision.datasets import OxfordIIITPet

from course_utils import config
from course_utils.data.records import PetRecord
from course_utils.data.splits import check_split, stratified_split

HOMEPAGE = "https://www.robots.ox.ac.uk/~vgg/data/pets/"
VAL_FRACTION = 0.15  # of the official trainval list, per breed
SPLIT_SEED = 0
DOWNLOAD_TIMEOUT_S = 60  # per network operation, so that a blocked network fails instead of hanging
_SPECIES_TO_LABEL = {1: 0, 2: 1}  # list files: species 1 = cat, 2 = dog
_failed_downloads: dict[Path, str] = {}  # root -> reason: a failed download is not retried


class DatasetUnavailable(RuntimeError):
    """The full data set could not be downloaded or found."""


def default_download_root() -> Path:
    """``<artifacts>/downloads``: where the Oxford-IIIT Pet archives are downloaded."""
    return config.artifacts_dir() / "downloads"


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _fetch(root: Path, official_split: str, download: bool) -> Path:
    """Download (if asked) and check the data set with torchvision; return its base folder.

    A failed download is remembered for the rest of the process (each try on a blocked network
    can take minutes); restart the Python process to try again.
    """
    if download and root in _failed_downloads:
        raise DatasetUnavailable(f"{_failed_downloads[root]} (earlier in this session)")
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            OxfordIIITPet(
                root,
                split=official_split,
                target_types=("binary-category", "segmentation"),
                download=download,
            )
    except Exception as err:  # any failure means: not available here
        if download:
            why = (
                f"tried torchvision's OxfordIIITPet download from {HOMEPAGE} into {root}: "
                f"{type(err).__name__}: {err}; no internet, or the site is blocked?"
            )
            _failed_downloads[root] = why
        else:
            why = f"not found in {root / 'oxford-iiit-pet'} and download=False: {err}"
        raise DatasetUnavailable(why) from err
    return root / "oxford-iiit-pet"


def read_oxford_list(list_file: Path, base: Path) -> list[PetRecord]:
    """Records from an official list file (lines ``Abyssinian_100 1 1 1``: name, class, species,
    breed id; ``#`` lines skipped) with ``base/images/NAME.jpg`` and its trimap."""
    records = []
    for line in list_file.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, _class_id, species, _breed_id = line.split()
        records.append(
            PetRecord(
                image_path=base / "images" / f"{name}.jpg",
                label=_SPECIES_TO_LABEL[int(species)],
                breed=name.rsplit("_", 1)[0],
                mask_path=base / "annotations" / "trimaps" / f"{name}.png",
            )
        )
    return records


def oxford_pets_records(
    split: str, root: Path | None = None, download: bool = True
) -> list[PetRecord]:
    """Records of one split of the full Oxford-IIIT Pet, downloaded on first use.

    ``"test"`` is the official test list; ``"train"`` and ``"val"`` divide the official trainval
    list, per breed, into 85 % / 15 % (deterministic). ``root`` defaults to
    ``config.artifacts_dir() / "downloads"``. Raises :class:`DatasetUnavailable` when the data
    set can be neither found nor downloaded.
    """
    check_split(split)
    root = Path(root) if root is not None else default_download_root()
    official = "test" if split == "test" else "trainval"
    base = _fetch(root, official, download)
    records = read_oxford_list(base / "annotations" / f"{official}.txt", base)
    if split == "test":
        return records
    assignment = stratified_split(
        ((r.image_path.stem, r.breed or "") for r in records),
        {"val": (VAL_FRACTION, 1)},
        seed=SPLIT_SEED,
    )
    return [r for r in records if assignment[r.image_path.stem] == split]

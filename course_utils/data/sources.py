"""One entry point for notebooks: the records of a split for the active profile's data set."""

from __future__ import annotations

import logging
import os

from course_utils import config
from course_utils.data.bundled import bundled_records, default_bundled_root, read_index
from course_utils.data.oxford import DatasetUnavailable, oxford_pets_records
from course_utils.data.records import PetRecord, balanced_subset, class_counts
from course_utils.errors import CourseError

DATASETS: tuple[str, ...] = ("bundled", "oxford-iiit-pet")
DATASET_ENV = "COURSE_DATASET"  # overrides every profile's dataset, e.g. "bundled"

log = logging.getLogger(__name__)


def _bundled(split: str) -> tuple[list[PetRecord], str]:
    root = default_bundled_root()
    total = len(read_index(root))
    source = f"bundled Oxford-IIIT Pet sample ({total} images, {config.display_path(root)})"
    return bundled_records(split, root), source


def dataset_in_use(profile: config.Profile) -> str:
    """The data set that :func:`get_records` serves for ``profile``: ``$COURSE_DATASET`` when
    set (``bundled`` keeps any profile off the download), else ``profile.dataset``; and
    ``"bundled"`` when the full Oxford-IIIT Pet is asked for but cannot be downloaded (announced
    with the reason, as a warning; a bad ``$COURSE_OXFORD_DIR`` raises instead). Resolve it once
    per run and pass it on to :func:`get_records`."""
    dataset = os.environ.get(DATASET_ENV, "").strip().lower() or profile.dataset
    if dataset not in DATASETS:
        where = f"${DATASET_ENV}" if dataset != profile.dataset else f"Profile {profile.name!r}"
        raise CourseError(
            f"{where} asks for unknown dataset {dataset!r}. Valid datasets: {', '.join(DATASETS)}."
        )
    if dataset != profile.dataset:
        log.info("$%s=%s overrides profile %s's dataset.", DATASET_ENV, dataset, profile.name)
    if dataset == "oxford-iiit-pet":
        try:
            oxford_pets_records("test")
        except DatasetUnavailable as err:
            if os.environ.get(config.OXFORD_DIR_ENV):
                raise
            total = len(read_index(default_bundled_root()))
            log.warning("%s Falling back to the bundled %d-image sample.", err, total)
            return "bundled"
    return dataset


def get_records(
    profile: config.Profile, split: str, dataset: str | None = None
) -> tuple[list[PetRecord], str]:
    """The records of ``split`` for ``profile``, and a one-line description of the source.

    ``dataset`` is the data set to read, as :func:`dataset_in_use` resolved it (default: resolve
    it now, which announces a fallback to the bundled sample). ``profile.max_images_per_split``
    then caps the split with a deterministic, class-balanced subset.
    """
    dataset = dataset or dataset_in_use(profile)
    if dataset == "oxford-iiit-pet":
        records = oxford_pets_records(split)
        source = "full Oxford-IIIT Pet (official lists; train/val carved from trainval)"
    else:
        records, source = _bundled(split)
        if profile.dataset != dataset:
            chosen = os.environ.get(DATASET_ENV, "").strip().lower() == dataset
            source += (
                f", chosen by ${DATASET_ENV}" if chosen else ", as the fallback for the full set"
            )
    available = len(records)
    cap = profile.max_images_per_split
    if cap is not None and cap < available:
        records = balanced_subset(records, cap)
        detail = (
            f"{len(records)} of {available} images, class-balanced subset (profile {profile.name})"
        )
    else:
        detail = f"{available} images"
    return records, f"{source}: {split} split, {detail}: {class_counts(records)}"

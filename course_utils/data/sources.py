"""One entry point for notebooks: the records of a split for the active profile's data set."""

from __future__ import annotations

from course_utils import config
from course_utils.data.bundled import bundled_records, default_bundled_root, read_index
from course_utils.data.oxford import DatasetUnavailable, oxford_pets_records
from course_utils.data.records import PetRecord, balanced_subset, class_counts

DATASETS: tuple[str, ...] = ("bundled", "oxford-iiit-pet")


def _bundled(split: str) -> tuple[list[PetRecord], str]:
    root = default_bundled_root()
    total = len(read_index(root))
    return bundled_records(split, root), f"bundled Oxford-IIIT Pet sample ({total} images, {root})"


def dataset_in_use(profile: config.Profile) -> str:
    """The data set that :func:`get_records` serves for ``profile``: ``profile.dataset``, or
    ``"bundled"`` when the full Oxford-IIIT Pet is asked for but cannot be had."""
    if profile.dataset == "oxford-iiit-pet":
        try:
            oxford_pets_records("test")
        except DatasetUnavailable:
            return "bundled"
    return profile.dataset


def get_records(profile: config.Profile, split: str) -> tuple[list[PetRecord], str]:
    """The records of ``split`` for ``profile.dataset``, and a one-line description of the source.

    When the full Oxford-IIIT Pet is asked for but cannot be had, this prints why and falls back
    to the bundled sample. ``profile.max_images_per_split`` then caps the split with a
    deterministic, class-balanced subset.
    """
    if profile.dataset == "bundled":
        records, source = _bundled(split)
    elif profile.dataset == "oxford-iiit-pet":
        try:
            records = oxford_pets_records(split)
            source = "full Oxford-IIIT Pet (official lists; train/val carved from trainval)"
        except DatasetUnavailable as err:
            total = len(read_index(default_bundled_root()))
            print(
                f"Full Oxford-IIIT Pet could not be downloaded ({err}); "
                f"falling back to the bundled {total}-image sample."
            )
            records, source = _bundled(split)
            source += ", as the fallback for the full Oxford-IIIT Pet"
    else:
        raise ValueError(
            f"Profile {profile.name!r} asks for unknown dataset {profile.dataset!r}. "
            f"Valid datasets: {', '.join(DATASETS)}."
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

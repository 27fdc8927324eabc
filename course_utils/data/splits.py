"""Deterministic train/val/test splits, stratified by breed (shared by every data source)."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping

SPLITS: tuple[str, ...] = ("train", "val", "test")


def check_split(split: str) -> str:
    """Return ``split`` if it is one of :data:`SPLITS`, else raise a ``ValueError`` naming them."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}. Valid splits: {', '.join(SPLITS)}.")
    return split


def stratified_split(
    items: Iterable[tuple[str, str]],
    held_out: Mapping[str, tuple[float, int]],
    seed: int,
    rest: str = "train",
) -> dict[str, str]:
    """Assign every ``(name, breed)`` pair to a split, breed by breed.

    ``held_out`` maps a split name to ``(fraction, minimum)``: each breed gives that split
    ``max(minimum, round(fraction * n))`` of its ``n`` images, in the order of ``held_out``;
    the remaining images go to ``rest``. Breeds are visited in sorted order and each breed's
    sorted names are shuffled by one ``random.Random(seed)``, so the result depends only on the
    names and the seed. Returns ``{name: split}``.
    """
    by_breed: dict[str, list[str]] = {}
    for name, breed in items:
        by_breed.setdefault(breed, []).append(name)
    rng = random.Random(seed)
    assignment: dict[str, str] = {}
    for breed in sorted(by_breed):
        names = sorted(by_breed[breed])
        rng.shuffle(names)
        counts = {
            split: max(minimum, round(frac * len(names)))
            for split, (frac, minimum) in held_out.items()
        }
        if sum(counts.values()) >= len(names):
            raise ValueError(
                f"Breed {breed!r} has only {len(names)} images: too few for held-out splits "
                f"{counts} plus at least one {rest!r} image."
            )
        start = 0
        for split, count in counts.items():
            assignment.update(dict.fromkeys(names[start : start + count], split))
            start += count
        assignment.update(dict.fromkeys(names[start:], rest))
    return assignment

"""What every data source produces: a list of :class:`PetRecord`, and helpers on such lists."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CLASSES: tuple[str, ...] = ("cat", "dog")  # label 0 = cat, 1 = dog


@dataclass(frozen=True)
class PetRecord:
    """One image: its file, class label (index into :data:`CLASSES`), breed and pet mask.

    ``breed`` and ``mask_path`` are ``None`` for images from a user's own folder.
    """

    image_path: Path
    label: int
    breed: str | None
    mask_path: Path | None


def class_counts(records: Sequence[PetRecord]) -> str:
    """``"300 cats, 264 dogs"``: the number of records per class, for messages."""
    return ", ".join(
        f"{sum(r.label == label for r in records)} {name}s" for label, name in enumerate(CLASSES)
    )


def balanced_subset(
    records: Sequence[PetRecord], max_images: int, seed: int = 0
) -> list[PetRecord]:
    """At most ``max_images`` records, as many per class as possible, spread over the breeds.

    Each class gets ``max_images // len(CLASSES)`` records (a class with fewer gives all of its
    records and the other class fills the gap). Within a class the records are drawn round-robin
    over its breeds, each breed shuffled with ``random.Random(seed)``. The subset keeps the input
    order, and the same input and seed always give the same subset.
    """
    if max_images >= len(records):
        return list(records)
    rng = random.Random(seed)
    queues: list[list[int]] = []  # per class: record indices, round-robin over its breeds
    for label in range(len(CLASSES)):
        by_breed: dict[str, list[int]] = {}
        for index, record in enumerate(records):
            if record.label == label:
                by_breed.setdefault(record.breed or "", []).append(index)
        groups = [by_breed[breed] for breed in sorted(by_breed)]
        for group in groups:
            rng.shuffle(group)
        longest = max(map(len, groups), default=0)
        queues.append([g[i] for i in range(longest) for g in groups if i < len(g)])
    quota = [min(len(q), max_images // len(CLASSES)) for q in queues]
    for i, queue in enumerate(queues):  # hand the unused quota of short classes to the others
        quota[i] += max(0, min(len(queue) - quota[i], max_images - sum(quota)))
    chosen = sorted(i for queue, n in zip(queues, quota, strict=True) for i in queue[:n])
    return [records[i] for i in chosen]

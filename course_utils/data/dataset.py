"""A torch ``Dataset`` over :class:`PetRecord` lists, and the course's seeded ``DataLoader``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from course_utils import config
from course_utils.data.images import load_rgb
from course_utils.data.records import PetRecord

PET_TRIMAP_VALUES = (1, 3)  # trimap: 1 = pet, 2 = background, 3 = border (counted as pet)


def load_pet_mask(record: PetRecord) -> np.ndarray:
    """The record's trimap as an ``H x W`` uint8 array: 1 = pet (trimap 1 or 3), 0 = background."""
    if record.mask_path is None:
        raise ValueError(f"{record.image_path} has no pet mask (only bundled/Oxford images do).")
    with Image.open(record.mask_path) as mask:
        values = np.asarray(mask)  # raw values; for palette PNGs the indices are the values
    if values.ndim == 3:
        values = values[..., 0]
    return np.isin(values, PET_TRIMAP_VALUES).astype(np.uint8)


def load_record(
    record: PetRecord, with_mask: bool = False
) -> tuple[tv_tensors.Image, tv_tensors.Mask | None]:
    """Decode a record: a uint8 ``(3, H, W)`` image and, with ``with_mask``, its pet mask."""
    image = F.to_image(load_rgb(record.image_path))
    if not with_mask:
        return image, None
    mask = tv_tensors.Mask(torch.from_numpy(load_pet_mask(record)))
    if mask.shape != image.shape[-2:]:
        raise ValueError(
            f"Mask {record.mask_path} is {tuple(mask.shape)} but image {record.image_path} "
            f"is {tuple(image.shape[-2:])} (height, width); they must match."
        )
    return image, mask


def _plain(value: Any) -> Any:
    """A ``tv_tensors`` subclass as a plain tensor (what models and collate expect)."""
    return value.as_subclass(torch.Tensor) if isinstance(value, torch.Tensor) else value


class PetDataset(Dataset):
    """Images (and optionally pet masks) of a list of :class:`PetRecord`.

    ``dataset[i]`` is ``(image, label)``; with ``with_mask=True`` it is a dict with ``"image"``,
    ``"label"``, ``"breed"`` (``""`` when unknown) and ``"mask"`` (uint8 ``H x W``, 1 = pet),
    where one ``transform`` call moves image and mask together. Without a transform the image is
    a uint8 ``(3, H, W)`` tensor. Every item is decoded from its file; :class:`CachedPetDataset`
    decodes each image once and keeps it in memory.
    """

    def __init__(
        self,
        records: Sequence[PetRecord],
        transform: Callable[..., Any] | None = None,
        with_mask: bool = False,
    ) -> None:
        self.records = list(records)
        self.transform = transform
        self.with_mask = with_mask
        if with_mask:
            missing = [r.image_path for r in self.records if r.mask_path is None]
            if missing:
                raise ValueError(
                    f"with_mask=True, but {len(missing)} record(s) have no pet mask "
                    f"(e.g. {missing[0]}). Masks exist for the bundled set and the full "
                    "Oxford-IIIT Pet, not for your own folders."
                )

    def __len__(self) -> int:
        return len(self.records)

    def _decoded(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask | None]:
        """Item ``index`` before the transform: its image, and its mask with ``with_mask``."""
        return load_record(self.records[index], self.with_mask)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | dict[str, Any]:
        record = self.records[index]
        image, mask = self._decoded(index)
        if mask is None:
            if self.transform is not None:
                image = self.transform(image)
            return _plain(image), record.label
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return {
            "image": _plain(image),
            "label": record.label,
            "breed": record.breed or "",
            "mask": _plain(mask),
        }


def breed_balanced_weights(records: Sequence[PetRecord]) -> list[float]:
    """Per record, 1 / (the number of records of its breed): every breed gets the same total
    weight. Records without a breed (a user's folder) share one group."""
    counts = Counter(record.breed for record in records)
    return [1 / counts[record.breed] for record in records]


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    seed: int = 0,
    num_workers: int | None = None,
    weights: Sequence[float] | None = None,
) -> DataLoader:
    """A reproducible ``DataLoader``: shuffled (seeded) and ``drop_last`` only when training.

    With ``weights`` (training only, e.g. :func:`breed_balanced_weights`) each epoch draws
    ``len(dataset)`` images with replacement, in proportion to them, instead of a shuffle.
    ``drop_last`` is skipped when the data set is smaller than one batch, so that a tiny training
    set still gives one batch. Workers default to :func:`config.default_num_workers`, are seeded by
    :func:`config.seed_worker` and kept alive between epochs; memory is pinned on CUDA.
    """
    workers = config.default_num_workers() if num_workers is None else num_workers
    sampler = None
    if weights is not None:
        if not train:
            raise ValueError("weights draw training batches; an evaluation loader reads in order.")
        if len(weights) != len(dataset):
            raise ValueError(f"{len(weights)} weights for {len(dataset)} images.")
        sampler = WeightedRandomSampler(
            weights, len(dataset), replacement=True, generator=torch.Generator().manual_seed(seed)
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        drop_last=train and len(dataset) >= batch_size,
        num_workers=workers,
        worker_init_fn=config.seed_worker,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=workers > 0,
        pin_memory=config.get_device().type == "cuda",
    )

"""Decode once, keep in memory: a :class:`PetDataset` whose images (and masks) live in RAM.

Decoding a JPEG costs about as much as the whole training transform on the decoded pixels, and
a :class:`PetDataset` pays it for every image of every epoch. :class:`CachedPetDataset` decodes
each record once, in the process that builds it, shrinks it to a training-sized shorter side and
keeps the pixels as uint8, so an epoch only runs the (random) transforms.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F
from tqdm.auto import tqdm

from course_utils.config import progress_bars_off
from course_utils.data.dataset import PetDataset, load_record
from course_utils.data.records import PetRecord
from course_utils.data.transforms import TRAIN_CROP_RATIO, TRAIN_CROP_SCALE

CACHE_BUDGET_BYTES = 4 * 2**30  # decoded images: leaves a 12 GB Colab runtime room for the rest
CACHE_ASPECT = 4 / 3  # longer / shorter side assumed per image (Oxford's typical 500 x 375 px)

log = logging.getLogger(__name__)


def cache_side_for(image_size: int, crop_scale: tuple[float, float] = TRAIN_CROP_SCALE) -> int:
    """The shorter side (px) to cache images at for training at ``image_size`` px.

    ``RandomResizedCrop``'s smallest crop (``crop_scale[0]`` of the area at aspect 3:4, in a
    square image) has a shorter side of ``sqrt(crop_scale[0] * 3/4)`` times the image's: 0.51
    for the default 35 %, 0.24 for 8 %. Caching at ``image_size`` divided by that (250 px for
    128 px with the default scale; 523 px with ``(0.08, 1.0)``) means that even this crop is not
    enlarged to reach ``image_size``, so training sees every pixel of detail it would see from
    the files; larger crops and :func:`eval_transform` (8/7 x) shrink it further. Images
    smaller than this are cached as they are, never enlarged.
    """
    return math.ceil(image_size / math.sqrt(crop_scale[0] * TRAIN_CROP_RATIO[0]))


def cache_bytes_bound(side: int, n_images: int, bytes_per_pixel: int = 3) -> int:
    """Bytes of ``n_images`` cached at most at ``side`` px shorter side, each at most
    :data:`CACHE_ASPECT` long (``bytes_per_pixel``: 3 for RGB, 4 with masks)."""
    return math.ceil(n_images * bytes_per_pixel * side * side * CACHE_ASPECT)


def capped_cache_side(
    side: int, n_images: int, budget_bytes: int = CACHE_BUDGET_BYTES, bytes_per_pixel: int = 3
) -> int:
    """``side``, or the largest smaller one whose :func:`cache_bytes_bound` fits the budget.

    A cap is announced as a warning. Images smaller than the side are cached as they are, so
    the bound holds whatever the files' sizes (for aspect ratios up to :data:`CACHE_ASPECT`).
    7,349 Oxford-IIIT Pet images fit 4 GiB at 382 px; train + val (3,680) at 540 px.
    """
    if cache_bytes_bound(side, n_images, bytes_per_pixel) <= budget_bytes:
        return side
    capped = max(
        1, math.isqrt(math.floor(budget_bytes / (n_images * bytes_per_pixel * CACHE_ASPECT)))
    )
    log.warning(
        "Caching %d images at %d px (shorter side) could take %.1f GiB, over the %.1f GiB budget "
        "for decoded images: caching at %d px instead (small crops are enlarged a little).",
        n_images,
        side,
        cache_bytes_bound(side, n_images, bytes_per_pixel) / 2**30,
        budget_bytes / 2**30,
        capped,
    )
    return capped


class CachedPetDataset(PetDataset):
    """A :class:`PetDataset` that decodes every image (and mask) once, into memory.

    Same arguments, items and transforms as :class:`PetDataset`, so switching is one line.
    The constructor decodes every record (a progress bar, quiet when ``$CI`` is set), shrinks
    images whose shorter side exceeds ``cache_side`` to it (antialiased bilinear; masks nearest;
    ``None`` keeps the files' sizes; see :func:`cache_side_for`) and packs all pixels into one
    uint8 tensor. ``DataLoader`` workers share that tensor: copy-on-write when forked (Linux),
    one shared-memory block when spawned (macOS, Windows). Items are copies, so a transform or
    caller cannot alter the cache. The bundled train split (564 images) takes about 134 MiB at
    250 px (172 MiB at the files' 288 px) and a second or two to decode.
    """

    def __init__(
        self,
        records: Sequence[PetRecord],
        transform: Callable[..., Any] | None = None,
        with_mask: bool = False,
        *,
        cache_side: int | None = None,
    ) -> None:
        super().__init__(records, transform, with_mask)
        shapes: list[tuple[int, int]] = []
        images: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        for record in tqdm(
            self.records, desc="decoding images", leave=False, disable=progress_bars_off()
        ):
            image, mask = load_record(record, with_mask)
            if cache_side is not None and min(image.shape[-2:]) > cache_side:
                image = F.resize(image, [cache_side], antialias=True)
                if mask is not None:
                    mask = F.resize(mask, [cache_side])  # nearest, as for every tv_tensors.Mask
            shapes.append((image.shape[-2], image.shape[-1]))
            images.append(image.flatten())
            if mask is not None:
                masks.append(mask.flatten())
        self._shapes = shapes
        self._starts = list(itertools.accumulate((h * w for h, w in shapes), initial=0))
        self._images = _pack(images)
        self._masks = _pack(masks) if with_mask else None

    @property
    def nbytes(self) -> int:
        """Bytes of cached pixels (images and masks)."""
        masks = 0 if self._masks is None else self._masks.nbytes
        return self._images.nbytes + masks

    def _decoded(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask | None]:
        index = range(len(self))[index]  # negative indices count from the end, as for lists
        height, width = self._shapes[index]
        start, end = self._starts[index], self._starts[index + 1]
        image = tv_tensors.Image(self._images[3 * start : 3 * end].view(3, height, width).clone())
        if self._masks is None:
            return image, None
        return image, tv_tensors.Mask(self._masks[start:end].view(height, width).clone())


def _pack(parts: list[torch.Tensor]) -> torch.Tensor:
    """1-D uint8 tensors concatenated into one (a single storage to share with workers)."""
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8)

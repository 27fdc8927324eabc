"""What the training crops contain: how much of each ``RandomResizedCrop`` is pet.

The crops are drawn with torchvision's own ``RandomResizedCrop.get_params`` (the course's area
range and aspect-ratio range, :data:`course_utils.data.TRAIN_CROP_RATIO`) on each image's pet
mask, so the numbers describe exactly the crops a recipe trains on. A recipe that crops 8 % of
the area may cut a patch of background or fur with no recognisable pet in it, and still label it
"cat": :func:`pet_share_of_crops` measures how often.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchvision.transforms as T

from course_utils.data import PetRecord
from course_utils.data.dataset import load_pet_mask
from course_utils.data.transforms import TRAIN_CROP_RATIO

__all__ = ["pet_share_of_crops"]


def pet_share_of_crops(
    records: Sequence[PetRecord],
    crop_scale: tuple[float, float],
    *,
    crops_per_image: int = 20,
    seed: int = 0,
) -> np.ndarray:
    """Share of pet pixels in ``crops_per_image`` random training crops of every record.

    Returns an ``(images, crops_per_image)`` array of fractions in ``[0, 1]`` (0: the crop holds
    no pet pixel at all). Pet pixels are the trimap's pet and border classes
    (:func:`course_utils.data.load_pet_mask`); records without a mask are an error.
    """
    generator = torch.Generator().manual_seed(seed)
    shares = np.empty((len(records), crops_per_image))
    for row, record in enumerate(records):
        mask = torch.from_numpy(load_pet_mask(record))
        canvas = mask[None]  # get_params reads only the (height, width) of its input
        for column in range(crops_per_image):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
                top, left, height, width = T.RandomResizedCrop.get_params(
                    canvas, list(crop_scale), list(TRAIN_CROP_RATIO)
                )
            shares[row, column] = mask[top : top + height, left : left + width].float().mean()
    return shares

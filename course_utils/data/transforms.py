"""Training and evaluation transforms (torchvision.transforms.v2) and the inverse for display.

The transforms take ``tv_tensors.Image`` (and ``tv_tensors.Mask``, which follows the image's
geometry with nearest-neighbour interpolation and is left out of colour changes), plain tensors or
PIL images, and return a normalised float image.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torchvision.transforms import v2

Corner = Literal["top-left", "top-right", "bottom-left", "bottom-right"]
CORNERS: tuple[Corner, ...] = ("top-left", "top-right", "bottom-left", "bottom-right")

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
TRAIN_CROP_SCALE: tuple[float, float] = (0.35, 1.0)  # fraction of the image's area
TRAIN_CROP_RATIO: tuple[float, float] = (3 / 4, 4 / 3)  # crop width / height


def normalize_steps() -> list[v2.Transform]:
    """uint8 image -> float in [0, 1] -> ImageNet-normalised: the last steps of every transform."""
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def centre_crop_steps(size: int) -> list[v2.Transform]:
    """Shorter side to ``round(size * 8 / 7)`` (224 -> 256), then the central ``size`` square."""
    return [v2.ToImage(), v2.Resize(round(size * 8 / 7), antialias=True), v2.CenterCrop(size)]


def train_transform(size: int, scale: tuple[float, float] = TRAIN_CROP_SCALE) -> v2.Compose:
    """Random crop of ``scale`` (default 35-100 %) of the area resized to ``size`` x ``size``,
    horizontal flip, colour jitter."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(size, scale=scale, ratio=TRAIN_CROP_RATIO, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
            *normalize_steps(),
        ]
    )


def eval_transform(size: int) -> v2.Compose:
    """Shorter side to ``round(size * 8 / 7)`` (224 -> 256), then the central ``size`` square."""
    return v2.Compose([*centre_crop_steps(size), *normalize_steps()])


class CornerCrop(v2.Transform):
    """The ``size`` x ``size`` square in one corner of the image (image and mask alike)."""

    def __init__(self, size: int, corner: Corner) -> None:
        super().__init__()
        if corner not in CORNERS:
            raise ValueError(f"corner must be one of {CORNERS}, not {corner!r}.")
        self.size, self.corner = size, corner

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        if min(height, width) < self.size:
            raise ValueError(f"a {height} x {width} image is smaller than the {self.size} px crop.")
        bottom, right = self.corner.startswith("bottom"), self.corner.endswith("right")
        return {
            "top": height - self.size if bottom else 0,
            "left": width - self.size if right else 0,
        }

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(
            v2.functional.crop, inpt, params["top"], params["left"], self.size, self.size
        )


def corner_crop_transform(size: int, corner: Corner, zoom: float = 1.5) -> v2.Compose:
    """Shorter side to ``round(size * zoom)``, then the ``size`` square in ``corner``.

    An off-centre view: the image's centre (where photographers put the pet) is no longer the
    crop's centre, so a map that only knows "the middle" stops being a good guess. ``zoom = 1.5``
    keeps two thirds of the shorter side.
    """
    if zoom < 1:
        raise ValueError(f"zoom must be at least 1 (the crop must fit), not {zoom}.")
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(round(size * zoom), antialias=True),
            CornerCrop(size, corner),
            *normalize_steps(),
        ]
    )


def denormalize(tensor: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation of a ``(C, H, W)`` or ``(N, C, H, W)`` image, into [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=tensor.dtype, device=tensor.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=tensor.dtype, device=tensor.device).view(3, 1, 1)
    return (tensor * std + mean).clamp(0, 1)

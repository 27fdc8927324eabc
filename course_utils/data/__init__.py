"""The course's data: the bundled sample, the full Oxford-IIIT Pet, user folders, transforms.

Every source gives a list of :class:`PetRecord` (image path, label 0 = cat / 1 = dog, breed, pet
mask); :class:`PetDataset` turns such a list into tensors (:class:`CachedPetDataset`: decoded
once, kept in memory) and :func:`make_loader` into batches.
Notebooks usually need only :func:`get_records`, which follows the active profile.
"""

from course_utils.data.bundled import DataIntegrityError, bundled_records
from course_utils.data.dataset import PetDataset, breed_balanced_weights, make_loader
from course_utils.data.folders import FolderLayoutError, folder_records
from course_utils.data.images import (
    MAX_PIXELS,
    MIN_SIDE,
    SkippedImage,
    check_image,
    format_skipped,
    load_rgb,
    validate_images,
)
from course_utils.data.memory import (
    CACHE_BUDGET_BYTES,
    CachedPetDataset,
    cache_side_for,
    capped_cache_side,
)
from course_utils.data.oxford import DatasetUnavailable, oxford_pets_records
from course_utils.data.records import CLASSES, PetRecord, balanced_subset
from course_utils.data.sources import dataset_in_use, get_records
from course_utils.data.splits import SPLITS
from course_utils.data.transforms import (
    CORNERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    CornerCrop,
    centre_crop_steps,
    corner_crop_transform,
    denormalize,
    eval_transform,
    normalize_steps,
    train_transform,
)

__all__ = [
    "CACHE_BUDGET_BYTES",
    "CLASSES",
    "CORNERS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_PIXELS",
    "MIN_SIDE",
    "SPLITS",
    "CachedPetDataset",
    "CornerCrop",
    "DataIntegrityError",
    "DatasetUnavailable",
    "FolderLayoutError",
    "PetDataset",
    "PetRecord",
    "SkippedImage",
    "balanced_subset",
    "breed_balanced_weights",
    "bundled_records",
    "cache_side_for",
    "capped_cache_side",
    "centre_crop_steps",
    "check_image",
    "corner_crop_transform",
    "dataset_in_use",
    "denormalize",
    "eval_transform",
    "folder_records",
    "format_skipped",
    "get_records",
    "load_rgb",
    "make_loader",
    "normalize_steps",
    "oxford_pets_records",
    "train_transform",
    "validate_images",
]

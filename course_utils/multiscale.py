"""Accuracy at many input resolutions: the course's multi-scale evaluation.

A ResNet ends in global average pooling, so it accepts any input size: the last feature map is
``ceil(s / 32)`` cells wide instead of 7, and the pooling averages whatever is there. This module
measures what that does to accuracy:

- :func:`decode_once` decodes the test images into memory once; every size is resized from those
  pixels, so ten sizes cost one JPEG decode per image.
- :func:`evaluate_at_scales` runs a model at several sizes and returns one row per size
  (accuracy with a 95 % bootstrap interval, mean confidence, ms per image, and the per-image
  results for paired comparisons). Two ways to resize (``mode``):

  * ``"crop"``: :func:`course_utils.data.eval_transform` at ``s``: shorter side to
    ``round(8 s / 7)``, then the central ``s x s`` square (the course's standard evaluation);
  * ``"shorter_side"``: shorter side to ``s``, no crop: the whole photo, at its own aspect ratio.

  Batching never pads (zeros would enter the average pool): images are grouped by their exact
  resized shape and each group is cut into batches, so every result equals the per-image one.
- :func:`compare_frames`: per size, :func:`course_utils.evaluate.paired_difference` (accuracy
  of the first frame minus the second on the same images, with a paired bootstrap interval; an
  interval that contains 0 means no detectable difference), and the exact McNemar p-value of
  every size with Holm's correction over all the sizes compared (a verdict that survives it is
  not one lucky size out of ten).

Test-time augmentation and low-resolution robustness are in :mod:`course_utils.multiscale_tta`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn
from torchvision.transforms import v2
from tqdm.auto import tqdm

from course_utils.config import progress_bars_off
from course_utils.data import (
    CachedPetDataset,
    PetDataset,
    PetRecord,
    eval_transform,
    normalize_steps,
)
from course_utils.evaluate import Predictions, Verdict, bootstrap_ci, paired_difference
from course_utils.models import eval_mode
from course_utils.significance import holm_adjust, mcnemar_exact

MODES: tuple[str, ...] = ("crop", "shorter_side")
CHUNK_IMAGES = 512  # images resized at a time (at least one batch): bounds the memory used
Transform = Callable[[torch.Tensor], torch.Tensor]


class Outputs(NamedTuple):
    """What :func:`run_transformed` returns."""

    logits: torch.Tensor  # (N, C) float32 on the CPU, in the data set's order
    labels: torch.Tensor  # (N,) int64
    seconds: float  # time spent in the model's forward passes (not in resizing)
    pixels: float  # mean input pixels per image (height x width)


def decode_once(
    records_or_dataset: Sequence[PetRecord] | PetDataset, cache_side: int | None = None
) -> CachedPetDataset:
    """The images as uint8 ``(3, H, W)`` tensors in memory, decoded once.

    Takes a list of :class:`PetRecord` or a :class:`PetDataset` (its records are used and its
    transform is ignored: every size brings its own). Images keep the files' sizes, or are shrunk
    to a shorter side of ``cache_side`` (to save memory on large photos: keep it at least
    ``8/7`` of the largest test size). A :class:`CachedPetDataset` without a transform or masks
    (e.g. an earlier result of this function) is returned as it is, so passing it to several
    evaluations decodes nothing again.
    """
    source = records_or_dataset
    if isinstance(source, CachedPetDataset) and source.transform is None and not source.with_mask:
        return source
    records = source.records if isinstance(source, PetDataset) else list(source)
    return CachedPetDataset(records, transform=None, cache_side=cache_side)


def size_transform(size: int, mode: str = "crop") -> Transform:
    """uint8 image -> normalised float input of the network at ``size`` (see the module doc)."""
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}.")
    if mode == "crop":
        return eval_transform(size)
    if mode == "shorter_side":
        return v2.Compose([v2.Resize(size, antialias=True), *normalize_steps()])
    raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}.")


def _batches(shapes: Sequence[tuple[int, ...]], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped by equal shape (first-seen order), each group cut into ``batch_size``."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, shape in enumerate(shapes):
        groups.setdefault(tuple(shape), []).append(index)
    for indices in groups.values():
        for start in range(0, len(indices), batch_size):
            yield indices[start : start + batch_size]


@torch.no_grad()
def run_transformed(
    model: nn.Module,
    images: CachedPetDataset,
    transform: Transform,
    *,
    batch_size: int = 32,
    flip: bool = False,
) -> Outputs:
    """Run ``model`` on every image of ``images`` after ``transform``: logits, labels, time.

    Every image goes through ``transform`` (uint8 -> normalised float); ``flip`` mirrors each
    network input left-right. Images are prepared a chunk at a time (memory stays bounded);
    within a chunk, images of equal input shape share batches and nothing is padded. The model
    runs in eval mode on its own device; every module's train/eval mode is restored afterwards.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    if len(images) == 0:
        raise ValueError("No images to evaluate.")
    device = next(model.parameters()).device
    logits, labels, pixels, seconds = [], [], [], 0.0
    chunk = max(batch_size, CHUNK_IMAGES)
    with eval_mode(model):
        for first in range(0, len(images), chunk):
            items = [images[i] for i in range(first, min(first + chunk, len(images)))]
            inputs = [transform(image).as_subclass(torch.Tensor) for image, _ in items]
            out: list[torch.Tensor] = [torch.empty(0)] * len(inputs)
            for indices in _batches([x.shape for x in inputs], batch_size):
                batch = torch.stack([inputs[i] for i in indices]).to(device)
                if flip:
                    batch = batch.flip(-1)
                start = time.perf_counter()
                result = model(batch)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds += time.perf_counter() - start
                for i, row in zip(indices, result.float().cpu(), strict=True):
                    out[i] = row
            logits += out
            labels += [label for _, label in items]
            pixels += [x.shape[-2] * x.shape[-1] for x in inputs]
    return Outputs(
        torch.stack(logits),
        torch.as_tensor(labels, dtype=torch.long),
        seconds,
        float(np.mean(pixels)),
    )


def result_row(out: Outputs) -> dict[str, object]:
    """Accuracy, 95 % interval, mean confidence, ms per image and per-image results of ``out``."""
    predictions = Predictions(out.logits, out.labels)
    correct = predictions.correct
    low, high = bootstrap_ci(correct)
    return {
        "n": len(correct),
        "accuracy": float(correct.mean()),
        "ci_low": low,
        "ci_high": high,
        "mean_confidence": float(predictions.confidence.mean()),
        "ms_per_image": 1e3 * out.seconds / len(correct),
        "correct": correct,
        "logits": out.logits,
    }


def evaluate_at_scales(
    model: nn.Module,
    records_or_dataset: Sequence[PetRecord] | PetDataset,
    sizes: Sequence[int],
    *,
    mode: str = "crop",
    batch_size: int = 32,
    progress: bool = True,
) -> pd.DataFrame:
    """Evaluate ``model`` at every size in ``sizes``; one row per size.

    Columns: ``size``, ``mode``, ``n``, ``accuracy``, ``ci_low``/``ci_high`` (95 % bootstrap),
    ``mean_confidence`` (mean top-class probability), ``ms_per_image`` (forward passes only, at
    ``batch_size``, on the model's device), ``pixels`` (mean input pixels per image), and per
    image: ``correct`` (bool array) and ``logits`` (``(N, C)`` tensor), in the data set's order,
    for paired comparisons (:func:`compare_frames`). Images are decoded once (:func:`decode_once`;
    pass its result to skip even that). Any size >= 1 works: below the total stride of 32 the
    last feature map is 1 x 1 and the adaptive average pool still gives one vector per image.
    """
    images = decode_once(records_or_dataset)
    rows = []
    for size in tqdm(
        sizes, desc=f"{mode} sizes", leave=False, disable=not progress or progress_bars_off()
    ):
        out = run_transformed(model, images, size_transform(int(size), mode), batch_size=batch_size)
        rows.append({"size": int(size), "mode": mode, "pixels": out.pixels, **result_row(out)})
    return pd.DataFrame(rows)


def compare_frames(
    first: pd.DataFrame,
    second: pd.DataFrame,
    labels: tuple[str, str] = ("first", "second"),
    *,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Per size present in both, accuracy of ``first`` minus ``second`` (two
    :func:`evaluate_at_scales` results on the same images), by :func:`paired_difference`.

    Columns: ``size``, ``n``, ``difference`` (positive: ``first`` is more accurate),
    ``ci_low``/``ci_high`` (95 % paired bootstrap), ``verdict`` worded with ``labels``
    (``"ResNet-101 higher"``, ``"ResNet-50 higher"`` or ``"no detectable difference"``; one size
    on its own), ``p_value`` (exact McNemar), ``p_holm`` (Holm-adjusted over the sizes compared)
    and ``holm_verdict`` (the side that is higher where ``p_holm < alpha``).
    """
    second_by_size = second.set_index("size")
    rows = []
    for row in first.itertuples():
        if row.size not in second_by_size.index:
            continue
        other = second_by_size.loc[row.size, "correct"]
        diff = paired_difference(row.correct, other)
        rows.append(
            {
                "size": row.size,
                "n": diff.n,
                "difference": diff.difference,
                "ci_low": diff.ci_low,
                "ci_high": diff.ci_high,
                "verdict": diff.describe(*labels),
                "p_value": mcnemar_exact(row.correct, other),
            }
        )
    table = pd.DataFrame(
        rows, columns=["size", "n", "difference", "ci_low", "ci_high", "verdict", "p_value"]
    )
    table["p_holm"] = holm_adjust(table.p_value.to_numpy()) if rows else []
    table["holm_verdict"] = [
        _significant_side(d, p, alpha).describe(*labels)
        for d, p in zip(table.difference, table.p_holm, strict=True)
    ]
    return table


def _significant_side(difference: float, p_value: float, alpha: float) -> Verdict:
    """The higher side where the test rejects equality at ``alpha``, else no detectable one."""
    if p_value >= alpha or difference == 0:
        return Verdict.NO_DETECTABLE_DIFFERENCE
    return Verdict.FIRST_HIGHER if difference > 0 else Verdict.SECOND_HIGHER

"""Multi-scale test-time augmentation (TTA) and low-resolution robustness.

- TTA: run the network on several *views* of each image (sizes, each also mirrored left-right)
  and average. Averaging ``combine="logits"`` takes the mean of the raw scores;
  ``combine="probabilities"`` the mean of the softmax outputs (returned as their logarithm, so a
  softmax of the result gives the averaged probabilities back). Each view is one more forward
  pass: :func:`compare_tta` reports the gain in accuracy *and* what it costs.
- Low resolution: :func:`lowres_transform` takes the standard ``eval_size`` centre crop, shrinks
  it to ``s x s`` and enlarges it back to ``eval_size`` (what a low-quality photo looks like: the
  network sees its usual input size, but only ``s x s`` pixels of information).
  :func:`evaluate_low_resolution` compares that with *native* resizing (the network simply sees
  the ``s x s`` input).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torchvision.transforms import v2

from course_utils.cost import count_macs
from course_utils.data import PetDataset, PetRecord, centre_crop_steps, normalise_steps
from course_utils.multiscale import (
    Outputs,
    Transform,
    decode_once,
    paired_difference,
    result_row,
    run_transformed,
    size_transform,
)

COMBINE: tuple[str, ...] = ("logits", "probabilities")


def combine_views(views: Sequence[torch.Tensor], combine: str = "logits") -> torch.Tensor:
    """Average ``(N, C)`` logits of several views: their mean, or the log of their mean softmax."""
    if not views:
        raise ValueError("combine_views needs at least one view.")
    stacked = torch.stack(list(views))
    if combine == "logits":
        return stacked.mean(0)
    if combine == "probabilities":
        return stacked.softmax(-1).mean(0).log()
    raise ValueError(f"combine must be one of {', '.join(COMBINE)}; got {combine!r}.")


def tta_predict(
    model: nn.Module,
    records_or_dataset: Sequence[PetRecord] | PetDataset,
    sizes: Sequence[int],
    *,
    flip: bool = True,
    combine: str = "logits",
    mode: str = "crop",
    batch_size: int = 32,
) -> Outputs:
    """Multi-scale TTA: combined logits over ``sizes`` (and their mirror images with ``flip``).

    ``seconds`` is the total forward time of all views: the cost of TTA per image is
    ``seconds / N``. With one size and ``flip=False`` this is plain single-scale evaluation.
    """
    images = decode_once(records_or_dataset)
    views = [
        run_transformed(
            model, images, size_transform(int(size), mode), batch_size=batch_size, flip=mirrored
        )
        for size in sizes
        for mirrored in ((False, True) if flip else (False,))
    ]
    return _combined(views, combine)


def _combined(views: Sequence[Outputs], combine: str) -> Outputs:
    """One :class:`Outputs` for several views: combined logits, summed time and pixels."""
    return Outputs(
        combine_views([view.logits for view in views], combine),
        views[0].labels,
        sum(view.seconds for view in views),
        sum(view.pixels for view in views),
    )


def compare_tta(
    model: nn.Module,
    records_or_dataset: Sequence[PetRecord] | PetDataset,
    base_size: int,
    sizes: Sequence[int],
    *,
    combine: str = "logits",
    mode: str = "crop",
    batch_size: int = 32,
) -> pd.DataFrame:
    """Single scale (``base_size``) vs + flip vs multi-scale (``sizes``) vs multi-scale + flip.

    Every view is computed once and reused by the rows that need it. Columns: ``method``,
    ``views`` (forward passes per image), ``accuracy``, ``ci_low``/``ci_high``, ``gain`` over
    single scale with its paired interval (``gain_low``/``gain_high``) and ``verdict``
    (``"tie"`` when the interval contains 0), ``gmacs_per_image`` (``mode="crop"`` only),
    ``ms_per_image`` and ``cost`` (ms relative to single scale), plus ``correct`` per image.
    """
    images = decode_once(records_or_dataset)
    needed = dict.fromkeys([int(base_size), *map(int, sizes)])
    views = {
        (size, mirrored): run_transformed(
            model, images, size_transform(size, mode), batch_size=batch_size, flip=mirrored
        )
        for size in needed
        for mirrored in (False, True)
    }
    methods = {
        f"single scale ({base_size} px)": [(base_size, False)],
        "single scale + flip": [(base_size, False), (base_size, True)],
        f"multi-scale ({', '.join(map(str, sizes))} px)": [(s, False) for s in sizes],
        "multi-scale + flip": [(s, m) for s in sizes for m in (False, True)],
    }
    macs = {size: count_macs(model, size) for size in needed} if mode == "crop" else {}
    rows, single = [], None
    for method, keys in methods.items():
        out = _combined([views[(int(s), m)] for s, m in keys], combine)
        row = {"method": method, "views": len(keys), **result_row(out)}
        single = single or row
        gain = paired_difference(row["correct"], single["correct"])
        total_macs = sum(macs[int(s)] for s, _ in keys) if macs else np.nan
        rows.append(
            {
                **row,
                "gain": gain["difference"],
                "gain_low": gain["ci_low"],
                "gain_high": gain["ci_high"],
                "verdict": {"A better": "better", "B better": "worse"}.get(gain["verdict"], "tie"),
                "gmacs_per_image": total_macs / 1e9,
                "cost": row["ms_per_image"] / single["ms_per_image"],
            }
        )
    first = ["method", "views", "accuracy", "ci_low", "ci_high", "gain", "gain_low", "gain_high"]
    return pd.DataFrame(rows)[
        [
            *first,
            "verdict",
            "gmacs_per_image",
            "ms_per_image",
            "cost",
            "mean_confidence",
            "correct",
            "logits",
        ]
    ]


def lowres_transform(size: int, eval_size: int) -> Transform:
    """The ``eval_size`` centre crop with only ``size x size`` pixels of detail (``size`` <=
    ``eval_size``): crop as :func:`course_utils.data.eval_transform`, shrink to ``size``
    (antialiased), enlarge back to ``eval_size`` (bilinear), all in uint8 like a saved photo.
    ``size == eval_size`` is exactly the standard evaluation input."""
    if not 1 <= size <= eval_size:
        raise ValueError(f"size must lie in [1, eval_size={eval_size}]; got {size}.")
    steps = centre_crop_steps(eval_size)
    if size != eval_size:
        steps += [
            v2.Resize((size, size), antialias=True),
            v2.Resize((eval_size, eval_size), antialias=True),
        ]
    return v2.Compose([*steps, *normalise_steps()])


def evaluate_low_resolution(
    model: nn.Module,
    records_or_dataset: Sequence[PetRecord] | PetDataset,
    sizes: Sequence[int],
    eval_size: int,
    *,
    batch_size: int = 32,
) -> pd.DataFrame:
    """Per size ``s``: accuracy when the network sees ``s x s`` pixels natively (``"native"``)
    and when they are enlarged back to ``eval_size`` (``"down-up"``, :func:`lowres_transform`).

    Columns as :func:`course_utils.multiscale.evaluate_at_scales` plus ``condition``.
    """
    images = decode_once(records_or_dataset)
    rows = []
    for size in map(int, sizes):
        native = result_row(
            run_transformed(model, images, size_transform(size), batch_size=batch_size)
        )
        if size == eval_size:  # the same input (lowres_transform), so the same row: run it once
            down_up = native
        else:
            transform = lowres_transform(size, eval_size)
            down_up = result_row(run_transformed(model, images, transform, batch_size=batch_size))
        rows.append({"size": size, "condition": "native", **native})
        rows.append({"size": size, "condition": "down-up", **down_up})
    return pd.DataFrame(rows)

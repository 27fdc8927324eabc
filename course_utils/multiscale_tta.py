"""Multi-scale test-time augmentation (TTA) and low-resolution robustness.

- TTA: run the network on several *views* of each image (sizes, each also mirrored left-right)
  and average. Averaging ``combine="logits"`` takes the mean of the raw scores;
  ``combine="probabilities"`` the mean of the softmax outputs (returned as their logarithm, so a
  softmax of the result gives the averaged probabilities back). Each view is one more forward
  pass: :func:`compare_tta` reports the gain in accuracy *and* what it costs. Both go through
  :func:`tta_predict`; a shared ``views`` dict computes each view once for several of its calls.
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
from course_utils.data import PetDataset, PetRecord, centre_crop_steps, normalize_steps
from course_utils.evaluate import paired_difference
from course_utils.multiscale import (
    Outputs,
    Transform,
    decode_once,
    result_row,
    run_transformed,
    size_transform,
)

COMBINE: tuple[str, ...] = ("logits", "probabilities")
ViewCache = dict[tuple[int, bool, str, int], Outputs]  # (size, mirrored, mode, batch size)


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
    views: ViewCache | None = None,
) -> Outputs:
    """Multi-scale TTA: combined logits over ``sizes`` (and their mirror images with ``flip``).

    ``seconds`` is the total forward time of all views: the cost of TTA per image is
    ``seconds / N``; ``pixels`` is the total over the views. With one size and ``flip=False``
    this is plain single-scale evaluation. ``views`` is a cache of the views' outputs, filled
    here: share one dict between calls on the same model and images (only) to run each view once.
    """
    images = decode_once(records_or_dataset)
    views = {} if views is None else views
    outputs = []
    for size in map(int, sizes):
        for mirrored in (False, True) if flip else (False,):
            key = (size, mirrored, mode, batch_size)
            if key not in views:
                views[key] = run_transformed(
                    model, images, size_transform(size, mode), batch_size=batch_size, flip=mirrored
                )
            outputs.append(views[key])
    return Outputs(
        combine_views([out.logits for out in outputs], combine),
        outputs[0].labels,
        sum(out.seconds for out in outputs),
        sum(out.pixels for out in outputs),
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

    Every row is a :func:`tta_predict` call; they share their views, so each is computed once.
    Columns: ``method``, ``views`` (forward passes per image), ``n``, ``accuracy``,
    ``ci_low``/``ci_high``, ``gain`` (accuracy minus single scale's) with its paired interval
    ``gain_low``/``gain_high`` and ``verdict`` (``"TTA higher"``, ``"single scale higher"`` or
    ``"no detectable difference"``), ``gmacs_per_image`` (``mode="crop"`` only),
    ``ms_per_image`` and ``cost`` (ms relative to single scale), ``mean_confidence``, and per
    image ``correct`` and ``logits``.
    """
    images = decode_once(records_or_dataset)
    base_size, sizes = int(base_size), [int(s) for s in sizes]
    views: ViewCache = {}
    methods = {
        f"single scale ({base_size} px)": ([base_size], False),
        "single scale + flip": ([base_size], True),
        f"multi-scale ({', '.join(map(str, sizes))} px)": (sizes, False),
        "multi-scale + flip": (sizes, True),
    }
    macs = {size: count_macs(model, size) for size in {base_size, *sizes}} if mode == "crop" else {}
    rows = []
    for method, (method_sizes, flip) in methods.items():
        out = tta_predict(
            model,
            images,
            method_sizes,
            flip=flip,
            combine=combine,
            mode=mode,
            batch_size=batch_size,
            views=views,
        )
        row = {"method": method, "views": len(method_sizes) * (1 + flip), **result_row(out)}
        single = rows[0] if rows else row
        gain = paired_difference(row["correct"], single["correct"])
        total_macs = (1 + flip) * sum(macs[s] for s in method_sizes) if macs else np.nan
        rows.append(
            {
                **row,
                "gain": gain.difference,
                "gain_low": gain.ci_low,
                "gain_high": gain.ci_high,
                "verdict": gain.describe("TTA", "single scale"),
                "gmacs_per_image": total_macs / 1e9,
                "cost": row["ms_per_image"] / single["ms_per_image"],
            }
        )
    columns = ["method", "views", "n", "accuracy", "ci_low", "ci_high", "gain", "gain_low"]
    columns += ["gain_high", "verdict", "gmacs_per_image", "ms_per_image", "cost"]
    return pd.DataFrame(rows)[[*columns, "mean_confidence", "correct", "logits"]]


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
    return v2.Compose([*steps, *normalize_steps()])


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

"""Metrics: predictions over a loader, accuracy with a bootstrap interval, confusion, per group.

Small test sets get confidence intervals (the course's honesty rule): :func:`bootstrap_ci` gives a
percentile bootstrap interval for the mean of any per-image score. For two networks scored on the
same images, :func:`paired_difference` gives the paired interval of the difference; when it
contains 0 the difference is inside the noise: call it a tie.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler


@dataclass(frozen=True)
class Predictions:
    """What a model said about every image of a loader, in the loader's order.

    ``logits`` is ``(N, C)`` float32 on the CPU, ``labels`` ``(N,)`` int64; ``metadata`` holds one
    item per image (e.g. the data set's ``PetRecord`` list) or is ``None``.
    """

    logits: torch.Tensor
    labels: torch.Tensor
    metadata: Sequence[Any] | None = None

    @property
    def probabilities(self) -> torch.Tensor:
        """Softmax of the logits, ``(N, C)``."""
        return self.logits.softmax(dim=1)

    @property
    def predicted(self) -> torch.Tensor:
        """Predicted class index per image, ``(N,)``."""
        return self.logits.argmax(dim=1)

    @property
    def confidence(self) -> torch.Tensor:
        """Probability of the predicted class per image, ``(N,)``."""
        return self.probabilities.max(dim=1).values

    @property
    def correct(self) -> np.ndarray:
        """Boolean array: was image ``i`` classified correctly?"""
        return (self.predicted == self.labels).numpy()

    def to_frame(self, class_names: Sequence[str] | None = None) -> pd.DataFrame:
        """One row per image: label, predicted, correct, one probability column per class, and
        the metadata's fields (dataclasses and mappings are expanded into columns)."""
        names = list(class_names or range(self.logits.shape[1]))
        frame = pd.DataFrame(
            {
                "label": [names[i] for i in self.labels.tolist()],
                "predicted": [names[i] for i in self.predicted.tolist()],
                "correct": self.correct,
                **{f"p_{name}": self.probabilities[:, i].numpy() for i, name in enumerate(names)},
            }
        )
        if self.metadata is None:
            return frame
        extra = pd.DataFrame([_as_row(item) for item in self.metadata])
        extra = extra.drop(columns=[c for c in extra.columns if c in frame.columns])
        return pd.concat([extra, frame], axis=1)


def _as_row(item: Any) -> dict[str, Any]:
    """A metadata item as a flat dict of printable values (paths become strings)."""
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        row = dataclasses.asdict(item)
    elif isinstance(item, Mapping):
        row = dict(item)
    else:
        row = {"item": item}
    return {key: str(v) if isinstance(v, Path) else v for key, v in row.items()}


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of a batch: an ``(image, label, ...)`` tuple or a dict with ``"image"``
    and ``"label"`` (``PetDataset(..., with_mask=True)``)."""
    if isinstance(batch, Mapping):
        return batch["image"], batch["label"]
    return batch[0], batch[1]


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device | str | None = None,
    *,
    metadata: Sequence[Any] | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> Predictions:
    """Run ``model`` (in eval mode) over every batch of ``loader`` and collect its logits.

    ``device`` defaults to the model's. ``metadata`` (one item per image, e.g.
    ``loader.dataset.records``) is passed through to the result; it must follow the loader's
    order, so a shuffling loader is refused. ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs
    the forward pass in mixed precision; ``channels_last`` feeds NHWC images. The model's
    train/eval mode is restored afterwards.
    """
    if metadata is not None and isinstance(getattr(loader, "sampler", None), RandomSampler):
        raise ValueError("metadata must follow the loader's order: use a loader without shuffle.")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    precision = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    was_training = model.training
    model.eval()
    logits, labels = [], []
    try:
        for batch in loader:
            images, targets = split_batch(batch)
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            with precision:
                logits.append(model(images).float().cpu())
            labels.append(torch.as_tensor(targets).long())
    finally:
        model.train(was_training)
    if not logits:
        raise ValueError("The loader yielded no batches: nothing to predict.")
    result = Predictions(torch.cat(logits), torch.cat(labels), metadata)
    if metadata is not None and len(metadata) != len(result.labels):
        raise ValueError(f"{len(metadata)} metadata items for {len(result.labels)} images.")
    return result


def accuracy(pred: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """Fraction of correct predictions; ``pred`` is class indices ``(N,)`` or scores ``(N, C)``."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    if pred.ndim == 2:
        pred = pred.argmax(axis=1)
    if pred.shape != labels.shape or pred.size == 0:
        raise ValueError(f"pred {pred.shape} and labels {labels.shape}: need equal, non-empty.")
    return float((pred == labels).mean())


def bootstrap_ci(
    correct: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``correct`` (0/1 per image, or any scores).

    Draw ``n_boot`` resamples of the ``n`` values with replacement, take each resample's mean, and
    return the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of those means. For 0/1
    values and large ``n`` this approaches ``p ± 1.96 * sqrt(p (1 - p) / n)`` (at 95 %).
    """
    values = np.asarray(correct, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("bootstrap_ci needs at least one value.")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}.")
    rng = np.random.default_rng(seed)
    n = values.size
    chunk = max(1, 4_000_000 // n)  # resamples per step: at most ~32 MB of indices at a time
    means = np.concatenate(
        [
            values[rng.integers(0, n, size=(min(chunk, n_boot - start), n))].mean(axis=1)
            for start in range(0, n_boot, chunk)
        ]
    )
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def paired_difference(
    scores_a: np.ndarray, scores_b: np.ndarray, seed: int = 0
) -> dict[str, object]:
    """Mean of A minus B on the same images (0/1 correctness or any scores), with a paired 95 %
    bootstrap interval.

    ``verdict`` is ``"tie"`` when the interval contains 0, else ``"A better"`` / ``"B better"``.
    """
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"Paired comparison needs the same images: {a.shape} vs {b.shape}.")
    low, high = bootstrap_ci(a - b, seed=seed)
    verdict = "tie" if low <= 0 <= high else ("A better" if low > 0 else "B better")
    return {"difference": float((a - b).mean()), "ci_low": low, "ci_high": high, "verdict": verdict}


def format_accuracy(correct: np.ndarray, level: float = 0.95, seed: int = 0) -> str:
    """``"81.5% (95% CI 76.4-86.6%, n=216)"``: accuracy with its bootstrap interval."""
    values = np.asarray(correct, dtype=np.float64)
    low, high = bootstrap_ci(values, seed=seed, level=level)
    return (
        f"{values.mean():.1%} ({level:.0%} CI {low * 100:.1f}-{high * 100:.1f}%, n={values.size})"
    )


def confusion_matrix(
    labels: torch.Tensor | np.ndarray, preds: torch.Tensor | np.ndarray, num_classes: int
) -> np.ndarray:
    """``(num_classes, num_classes)`` counts: row = true class, column = predicted class."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    preds = np.asarray(preds, dtype=np.int64).ravel()
    if labels.shape != preds.shape:
        raise ValueError(f"{labels.size} labels but {preds.size} predictions.")
    for name, values in (("labels", labels), ("preds", preds)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"{name} must lie in [0, {num_classes}), got {values.min()}..{values.max()}."
            )
    counts = np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def per_group_accuracy(
    correct: np.ndarray,
    groups: Sequence[str | None],
    *,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Accuracy per group (e.g. per breed) with its bootstrap interval, worst group first.

    Columns: ``group``, ``n``, ``accuracy``, ``ci_low``, ``ci_high``. Groups of a few images have
    wide intervals: read them before ranking breeds. ``None`` groups are labelled ``"(unknown)"``.
    """
    correct = np.asarray(correct, dtype=np.float64).ravel()
    keys = np.array(["(unknown)" if g is None else str(g) for g in groups], dtype=object)
    if keys.shape != correct.shape:
        raise ValueError(f"{correct.size} results but {keys.size} group names.")
    rows = []
    for group in sorted(set(keys)):
        values = correct[keys == group]
        low, high = bootstrap_ci(values, seed=seed, level=level)
        rows.append(
            {
                "group": group,
                "n": values.size,
                "accuracy": values.mean(),
                "ci_low": low,
                "ci_high": high,
            }
        )
    frame = pd.DataFrame(rows, columns=["group", "n", "accuracy", "ci_low", "ci_high"])
    return frame.sort_values(["accuracy", "group"], ignore_index=True)

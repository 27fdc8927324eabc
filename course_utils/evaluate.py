"""Metrics: predictions over a loader, accuracy with its interval, confusion, per group.

Small test sets get confidence intervals (the course's honesty rule):

- :func:`bootstrap_ci`: percentile bootstrap interval for the mean of any per-image score;
- :func:`wilson_interval`: Wilson score interval of a proportion, sound down to a few images
  (used by :func:`per_group_accuracy`, where a breed may have two test images);
- :func:`paired_difference`: two networks (or settings) scored on the same images, *first minus
  second*, with a paired bootstrap interval. Its :attr:`PairedDifference.verdict` says which side
  is higher when the interval excludes 0, and "no detectable difference" when it contains 0;
- :func:`minimum_detectable_difference` and :func:`paired_sample_size`: what a paired test on
  this many images can see at all (from the observed :func:`discordance`), so that "no
  detectable difference" comes with the size of difference it rules out;
- :func:`format_interval`: every estimate-with-interval text of the course, in one style.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from course_utils.models import eval_mode


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
    the forward pass in mixed precision; ``channels_last`` feeds NHWC images. The train/eval mode
    of every module is restored afterwards.
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
    logits, labels = [], []
    with eval_mode(model):
        for batch in loader:
            images, targets = split_batch(batch)
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            with precision:
                logits.append(model(images).float().cpu())
            labels.append(torch.as_tensor(targets).long())
    if not logits:
        raise ValueError("The loader yielded no batches: nothing to predict.")
    result = Predictions(torch.cat(logits), torch.cat(labels), metadata)
    if metadata is not None and len(metadata) != len(result.labels):
        raise ValueError(f"{len(metadata)} metadata items for {len(result.labels)} images.")
    return result


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


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the proportion ``successes / n`` (e.g. correct images of a breed).

    Unlike a bootstrap, it is not zero-width when every one of a few images is right (or wrong):
    at 95 %, ``0 / 2`` gives ``(0, 0.66)`` and ``5 / 10`` gives ``(0.24, 0.76)``. ``n`` must be at
    least 1: no images, no proportion.
    """
    if n < 1:
        raise ValueError(f"wilson_interval needs at least one trial, got n={n}.")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n={n}], got {successes}.")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}.")
    z = NormalDist().inv_cdf((1 + level) / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


NO_DIFFERENCE_TEXT = "no detectable difference"


class Verdict(str, enum.Enum):
    """Which side of a paired difference (first minus second) is higher, beyond the noise."""

    FIRST_HIGHER = "first higher"
    SECOND_HIGHER = "second higher"
    NO_DETECTABLE_DIFFERENCE = NO_DIFFERENCE_TEXT

    def word(
        self, first_higher: str, second_higher: str, no_difference: str = NO_DIFFERENCE_TEXT
    ) -> str:
        """The caller's word for this outcome, e.g. ``word("is above", "is below", "shows no
        detectable difference from")`` or ``word("the depths agree more", "the seeds agree
        more")``."""
        if self is Verdict.FIRST_HIGHER:
            return first_higher
        if self is Verdict.SECOND_HIGHER:
            return second_higher
        return no_difference

    def describe(self, first: str, second: str) -> str:
        """The verdict in the caller's names: ``"ResNet-101 higher"`` or "no detectable
        difference"."""
        return self.word(f"{first} higher", f"{second} higher")


@dataclass(frozen=True)
class PairedDifference:
    """Mean of *first minus second* over the same ``n`` images, with its paired interval."""

    difference: float
    ci_low: float
    ci_high: float
    level: float
    n: int

    @property
    def verdict(self) -> Verdict:
        """The side that is higher when the interval excludes 0, else no detectable difference."""
        if self.ci_low > 0:
            return Verdict.FIRST_HIGHER
        if self.ci_high < 0:
            return Verdict.SECOND_HIGHER
        return Verdict.NO_DETECTABLE_DIFFERENCE

    def describe(self, first: str, second: str) -> str:
        """:meth:`Verdict.describe` of :attr:`verdict`: ``"ResNet-101 higher"``, ..."""
        return self.verdict.describe(first, second)

    def interval(self, digits: int = 2, *, percent: bool = False) -> str:
        """``"+0.08 (+0.06 to +0.10)"``: the difference with its interval, signed
        (:func:`format_interval`; ``percent`` writes ``"+0.9% (-3.7% to +5.0%)"``)."""
        return format_interval(
            self.difference, self.ci_low, self.ci_high, digits=digits, percent=percent, signed=True
        )

    def summary(self, first: str, second: str, digits: int = 2, *, percent: bool = False) -> str:
        """``"+0.08 (+0.06 to +0.10): ResNet-101 higher"``: :meth:`interval`, then
        :meth:`describe`."""
        return f"{self.interval(digits, percent=percent)}: {self.describe(first, second)}"


def paired_difference(
    first: np.ndarray, second: np.ndarray, *, level: float = 0.95, seed: int = 0
) -> PairedDifference:
    """``first - second`` per image (0/1 correctness or any scores), averaged over the images,
    with a paired bootstrap interval (:func:`bootstrap_ci` of the per-image differences).

    A positive ``difference`` means ``first`` scores higher. Both arrays must list the same
    images in the same order.
    """
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"Paired comparison needs the same images: {a.shape} vs {b.shape}.")
    low, high = bootstrap_ci(a - b, seed=seed, level=level)
    return PairedDifference(float((a - b).mean()), low, high, level, a.size)


def discordance(first_correct: np.ndarray, second_correct: np.ndarray) -> float:
    """Share of the images on which exactly one of two classifiers is right."""
    a, b = np.asarray(first_correct, dtype=bool), np.asarray(second_correct, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"Paired comparison needs the same images: {a.shape} vs {b.shape}.")
    return float((a != b).mean())


def paired_sample_size(
    difference: float, discordance: float, *, alpha: float = 0.05, power: float = 0.8
) -> int:
    """Images a paired test of two accuracies (McNemar) needs to detect ``difference`` with
    ``power`` at two-sided level ``alpha``, when the classifiers disagree on a ``discordance``
    share of the images (normal approximation; Connor, 1987, Biometrics 43:207-211)."""
    d = abs(difference)
    if not 0 < d < discordance <= 1:
        raise ValueError(f"need 0 < |difference| < discordance <= 1: {difference}, {discordance}")
    z_alpha, z_power = NormalDist().inv_cdf(1 - alpha / 2), NormalDist().inv_cdf(power)
    root = z_alpha * math.sqrt(discordance) + z_power * math.sqrt(discordance - d * d)
    return math.ceil(root**2 / d**2)


def minimum_detectable_difference(
    n: int, discordance: float, *, alpha: float = 0.05, power: float = 0.8
) -> float:
    """The smallest accuracy difference that ``n`` paired images detect with ``power`` (the
    inverse of :func:`paired_sample_size`; ``discordance`` as there).

    Two accuracies cannot differ by more than the share of images they disagree on, so when
    even a difference just below ``discordance`` needs more than ``n`` images, no difference is
    detectable and the answer is ``math.inf``."""
    if n < 1 or not 0 < discordance <= 1:
        raise ValueError(f"need n >= 1 and 0 < discordance <= 1: {n}, {discordance}")
    largest = discordance * (1 - 1e-9)
    if paired_sample_size(largest, discordance, alpha=alpha, power=power) > n:
        return math.inf
    low, high = 0.0, largest
    for _ in range(60):  # bisection: the needed images fall as the difference grows
        middle = (low + high) / 2
        if middle > 0 and paired_sample_size(middle, discordance, alpha=alpha, power=power) <= n:
            high = middle
        else:
            low = middle
    return high


def format_interval(
    estimate: float,
    low: float,
    high: float,
    *,
    digits: int = 2,
    percent: bool = False,
    signed: bool = False,
    level: float | None = None,
    n: int | None = None,
) -> str:
    """An estimate with its interval, in the course's one style: ``"0.62 (0.58 to 0.66)"``.

    ``percent`` writes fractions as percentages (``"81.5% (76.4% to 86.6%)"`` at ``digits=1``),
    ``signed`` puts a ``+`` on positive values (for differences), ``level`` names the interval
    (``"(95% CI 0.58 to 0.66)"``) and ``n`` appends the number of images (``", n=216)"``).
    """
    spec = f"{'+' if signed else ''}.{digits}{'%' if percent else 'f'}"
    label = "" if level is None else f"{level:.0%} CI "
    count = "" if n is None else f", n={n}"
    return f"{estimate:{spec}} ({label}{low:{spec}} to {high:{spec}}{count})"


def format_accuracy(correct: np.ndarray, level: float = 0.95, seed: int = 0) -> str:
    """``"81.5% (95% CI 76.4% to 86.6%, n=216)"``: accuracy with its bootstrap interval."""
    values = np.asarray(correct, dtype=np.float64)
    low, high = bootstrap_ci(values, seed=seed, level=level)
    return format_interval(
        values.mean(), low, high, digits=1, percent=True, level=level, n=values.size
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
) -> pd.DataFrame:
    """Accuracy per group (e.g. per breed) with its Wilson interval, worst group first.

    Columns: ``group``, ``n``, ``accuracy``, ``ci_low``, ``ci_high``. Groups of a few images have
    wide intervals (:func:`wilson_interval`): read them before ranking breeds. ``correct`` is 0/1
    per image; ``None`` groups are labelled ``"(unknown)"``.
    """
    correct = np.asarray(correct, dtype=np.float64).ravel()
    if not np.isin(correct, (0, 1)).all():
        raise ValueError("per_group_accuracy needs 0/1 (or bool) results per image.")
    keys = np.array(["(unknown)" if g is None else str(g) for g in groups], dtype=object)
    if keys.shape != correct.shape:
        raise ValueError(f"{correct.size} results but {keys.size} group names.")
    rows = []
    for group in sorted(set(keys)):
        values = correct[keys == group]
        low, high = wilson_interval(int(values.sum()), values.size, level)
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

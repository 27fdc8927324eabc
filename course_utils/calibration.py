"""Calibration: does a network's confidence match how often it is right?

:func:`reliability` bins the images by the confidence of the predicted class and compares each
bin's mean confidence with its accuracy; the expected calibration error (ECE) is the
image-weighted mean gap (Guo et al., 2017, "On Calibration of Modern Neural Networks", ICML).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Reliability:
    """Per-bin counts, mean confidence and accuracy, the ECE, and its bootstrap interval."""

    bin_edges: np.ndarray  # (bins + 1,), from 1 / classes to 1
    counts: np.ndarray  # (bins,) images per bin
    mean_confidence: np.ndarray  # (bins,), NaN where a bin is empty
    accuracy: np.ndarray  # (bins,), NaN where a bin is empty
    ece: float
    ece_low: float
    ece_high: float
    level: float


def _bins(confidence: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of every confidence; the top edge belongs to the last bin."""
    return np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, len(edges) - 2)


def _ece(confidence: np.ndarray, correct: np.ndarray, index: np.ndarray, bins: int) -> float:
    counts = np.bincount(index, minlength=bins)
    gap = np.abs(
        np.bincount(index, confidence, minlength=bins) - np.bincount(index, correct, minlength=bins)
    )
    return float(gap.sum() / max(counts.sum(), 1))


def reliability(
    confidence: np.ndarray,
    correct: np.ndarray,
    *,
    num_classes: int = 2,
    bins: int = 10,
    level: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> Reliability:
    """Reliability table and ECE of predictions with ``confidence`` (of the predicted class) and
    ``correct`` (0/1), in ``bins`` equal-width bins over ``[1 / num_classes, 1]`` (no prediction
    is less confident than that); the interval is a bootstrap over the images."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if confidence.shape != correct.shape or confidence.ndim != 1 or confidence.size == 0:
        raise ValueError(
            f"need two equal, non-empty 1-D arrays: {confidence.shape}, {correct.shape}"
        )
    edges = np.linspace(1 / num_classes, 1.0, bins + 1)
    index = _bins(confidence, edges)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, confidence, minlength=bins) / counts
        accuracy = np.bincount(index, correct, minlength=bins) / counts
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, confidence.size, size=(n_boot, confidence.size))
    boot = [_ece(confidence[d], correct[d], index[d], bins) for d in draws]
    low, high = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    ece = _ece(confidence, correct, index, bins)
    return Reliability(
        edges, counts, mean_confidence, accuracy, ece, float(low), float(high), level
    )

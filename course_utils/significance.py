"""Significance tests for paired accuracies, and the correction for testing many at once.

:mod:`course_utils.evaluate` compares two classifiers on the same images with a paired bootstrap
interval. When the same comparison is made many times (e.g. once per test resolution), one of
them will look significant by chance; these functions give the exact test of each comparison and
Holm's correction over the family, so that the one "significant" size out of ten is judged as one
of ten:

- :func:`mcnemar_exact`: the exact McNemar test of two classifiers on the same images;
- :func:`holm_adjust`: Holm's step-down adjusted p-values, valid whatever the tests' correlation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["holm_adjust", "mcnemar_exact"]


def mcnemar_exact(first_correct: np.ndarray, second_correct: np.ndarray) -> float:
    """Two-sided exact McNemar p-value: are two classifiers equally accurate on these images?

    Only the discordant images count: ``b`` where only the first is right, ``c`` where only the
    second is. Under the null hypothesis each discordant image is a fair coin, so the p-value is
    the two-sided binomial tail ``min(1, 2 P(X <= min(b, c)))`` for ``X ~ Bin(b + c, 1/2)``;
    1.0 when the classifiers never disagree.
    """
    a, b = np.asarray(first_correct, dtype=bool), np.asarray(second_correct, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"Paired comparison needs the same images: {a.shape} vs {b.shape}.")
    only_first, only_second = int((a & ~b).sum()), int((~a & b).sum())
    n = only_first + only_second
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_first, only_second) + 1)) / 2**n
    return min(1.0, 2 * tail)


def holm_adjust(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm, 1979), in the input order.

    Reject hypothesis ``i`` at family-wise level ``alpha`` when its adjusted p-value is below
    ``alpha``: the smallest p-value is multiplied by ``m``, the next by ``m - 1``, ... and the
    results are made monotone, so the chance of any false alarm among the ``m`` tests stays at
    most ``alpha`` whatever their correlation.
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1 or ((p < 0) | (p > 1)).any():
        raise ValueError(f"p-values must be a 1-D sequence in [0, 1], got {p_values!r}")
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted

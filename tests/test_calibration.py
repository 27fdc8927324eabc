"""Reliability bins and the expected calibration error."""

import numpy as np
import pytest

from course_utils.calibration import reliability


def test_a_perfectly_calibrated_model_has_a_small_ece() -> None:
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, 20_000)
    correct = rng.uniform(size=confidence.size) < confidence  # right as often as it is sure
    table = reliability(confidence, correct, n_boot=50)
    assert table.ece < 0.02 and table.ece_low <= table.ece <= table.ece_high
    assert table.counts.sum() == confidence.size and len(table.bin_edges) == 11
    assert np.nanmax(np.abs(table.accuracy - table.mean_confidence)) < 0.05


def test_an_overconfident_model_has_the_gap_as_ece() -> None:
    confidence = np.full(100, 0.95)
    correct = np.arange(100) < 70  # 70 % right at 95 % confidence
    table = reliability(confidence, correct, n_boot=50)
    assert table.ece == pytest.approx(0.25)
    assert table.counts[-1] == 100 and np.isnan(table.accuracy[0])  # 0.95 is in the last bin


def test_a_confidence_of_one_is_in_the_last_bin_and_bad_input_is_refused() -> None:
    assert reliability(np.array([1.0, 0.5]), np.array([1, 0]), n_boot=10).counts.tolist() == [
        1,
        *[0] * 8,
        1,
    ]
    with pytest.raises(ValueError):
        reliability(np.array([0.9]), np.array([1, 0]))

"""Metrics: intervals, paired differences, formatting, confusion, per group, predictions."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from course_utils import evaluate
from course_utils.data import PetRecord
from course_utils.evaluate import (
    PairedDifference,
    Verdict,
    bootstrap_ci,
    confusion_matrix,
    format_accuracy,
    format_interval,
    paired_difference,
    per_group_accuracy,
    predict,
    wilson_interval,
)
from course_utils.significance import holm_adjust, mcnemar_exact


def test_bootstrap_of_all_correct_is_a_point():
    assert bootstrap_ci(np.ones(50)) == (1.0, 1.0)


def test_bootstrap_matches_the_normal_approximation():
    correct = np.zeros(400)
    correct[:320] = 1  # accuracy 0.8
    low, high = bootstrap_ci(correct)
    expected_width = 2 * 1.96 * np.sqrt(0.8 * 0.2 / 400)  # 0.078
    assert low < 0.8 < high
    assert high - low == pytest.approx(expected_width, rel=0.15)


def test_bootstrap_is_seeded_and_narrows_with_the_level():
    correct = np.random.default_rng(0).random(100) < 0.7
    assert bootstrap_ci(correct, seed=3) == bootstrap_ci(correct, seed=3)
    low95, high95 = bootstrap_ci(correct, level=0.95)
    low50, high50 = bootstrap_ci(correct, level=0.5)
    assert low95 < low50 < high50 < high95
    with pytest.raises(ValueError):
        bootstrap_ci(np.array([]))


def test_wilson_interval_matches_known_values():
    # Reference values: Wilson (1927) score interval at 95 %, z = 1.959964.
    assert wilson_interval(0, 2) == pytest.approx((0.0, 0.657620), abs=1e-6)
    assert wilson_interval(2, 2) == pytest.approx((0.342380, 1.0), abs=1e-6)
    assert wilson_interval(1, 2) == pytest.approx((0.094531, 0.905469), abs=1e-6)
    assert wilson_interval(5, 10) == pytest.approx((0.236593, 0.763407), abs=1e-6)
    assert wilson_interval(0, 2)[0] == 0.0 and wilson_interval(2, 2)[1] == 1.0  # exact ends
    low90, high90 = wilson_interval(5, 10, level=0.90)
    assert 0.236593 < low90 < 0.5 < high90 < 0.763407


def test_wilson_interval_refuses_impossible_counts():
    with pytest.raises(ValueError, match="at least one trial"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(3, 2)
    with pytest.raises(ValueError, match="level"):
        wilson_interval(1, 2, level=1.0)


def test_paired_difference_is_first_minus_second():
    better, worse = np.ones(50, bool), np.zeros(50, bool)
    diff = paired_difference(better, worse)
    assert isinstance(diff, PairedDifference)
    assert (diff.difference, diff.ci_low, diff.ci_high, diff.n) == (1.0, 1.0, 1.0, 50)
    assert diff.verdict is Verdict.FIRST_HIGHER
    assert diff.describe("ResNet-101", "ResNet-50") == "ResNet-101 higher"
    swapped = paired_difference(worse, better)
    assert (swapped.difference, swapped.ci_low, swapped.ci_high) == (-1.0, -1.0, -1.0)
    assert swapped.verdict is Verdict.SECOND_HIGHER
    assert swapped.describe("ResNet-101", "ResNet-50") == "ResNet-50 higher"


def test_paired_difference_inside_the_noise_is_no_detectable_difference():
    same = paired_difference(np.ones(50), np.ones(50))
    assert same.difference == 0 and same.verdict is Verdict.NO_DETECTABLE_DIFFERENCE
    assert same.describe("A", "B") == "no detectable difference"
    a = np.r_[np.zeros(20), np.ones(80)]
    b = a.copy()
    b[0], b[50], b[51] = 1, 0, 0  # B gains one image and loses two: inside the noise
    noisy = paired_difference(a, b)
    assert noisy.difference == pytest.approx(0.01)
    assert noisy.ci_low < 0 < noisy.ci_high
    assert noisy.verdict is Verdict.NO_DETECTABLE_DIFFERENCE


def test_paired_difference_is_the_seeded_bootstrap_of_the_differences():
    rng = np.random.default_rng(1)
    a, b = rng.random(80), rng.random(80) + 0.3
    diff = paired_difference(a, b, seed=4)
    assert diff.difference == pytest.approx((a - b).mean())
    assert (diff.ci_low, diff.ci_high) == bootstrap_ci(a - b, seed=4)
    assert diff.verdict is Verdict.SECOND_HIGHER and diff.level == 0.95
    narrow = paired_difference(a, b, seed=4, level=0.5)
    assert diff.ci_low < narrow.ci_low < narrow.ci_high < diff.ci_high
    with pytest.raises(ValueError, match="same images"):
        paired_difference(np.ones(3), np.ones(4))


def test_paired_difference_texts_its_interval_and_verdict():
    a = np.r_[np.ones(60), np.zeros(40)]
    diff = paired_difference(a, np.zeros(100))
    low, high = diff.ci_low, diff.ci_high
    assert diff.interval() == f"+0.60 (+{low:.2f} to +{high:.2f})"
    assert diff.interval(1, percent=True) == f"+60.0% (+{low:.1%} to +{high:.1%})"
    assert diff.summary("ResNet-101", "ResNet-50", 1) == f"{diff.interval(1)}: ResNet-101 higher"
    lower = paired_difference(np.zeros(100), a)
    assert lower.interval().startswith("-0.60 (-")
    assert lower.summary("A", "B").endswith(": B higher")


def test_verdict_word_names_each_outcome_in_the_callers_words():
    words = ("is above", "is below", "shows no detectable difference from")
    assert [v.word(*words) for v in Verdict] == list(words)
    assert Verdict.NO_DETECTABLE_DIFFERENCE.word("up", "down") == "no detectable difference"
    assert Verdict.FIRST_HIGHER.describe("A", "B") == "A higher"


def test_format_interval_styles():
    assert format_interval(0.6234, 0.58, 0.661) == "0.62 (0.58 to 0.66)"
    assert format_interval(0.815, 0.764, 0.866, digits=1, percent=True) == "81.5% (76.4% to 86.6%)"
    signed = format_interval(0.014, -0.023, 0.05, digits=1, percent=True, signed=True)
    assert signed == "+1.4% (-2.3% to +5.0%)"
    assert (
        format_interval(0.5, 0.4, 0.6, digits=1, level=0.9, n=7) == "0.5 (90% CI 0.4 to 0.6, n=7)"
    )


def test_format_accuracy_reads_like_a_report():
    correct = np.r_[np.ones(80), np.zeros(20)]
    low, high = bootstrap_ci(correct)
    expected = f"80.0% (95% CI {low:.1%} to {high:.1%}, n=100)"
    assert format_accuracy(correct) == expected


def test_confusion_matrix_rows_are_true_classes():
    labels = [0, 0, 1, 1, 1, 2]
    preds = [0, 1, 1, 1, 0, 1]
    expected = np.array([[1, 1, 0], [1, 2, 0], [0, 1, 0]])
    np.testing.assert_array_equal(confusion_matrix(labels, preds, 3), expected)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        confusion_matrix([0, 2], [0, 1], 2)


def test_per_group_accuracy_lists_the_worst_group_first():
    correct = np.array([1, 1, 0, 1, 0, 0, 1])
    groups = ["beagle", "beagle", "pug", "pug", "sphynx", "sphynx", None]
    table = per_group_accuracy(correct, groups)
    assert list(table.columns) == ["group", "n", "accuracy", "ci_low", "ci_high"]
    assert list(table["group"]) == ["sphynx", "pug", "(unknown)", "beagle"]
    assert list(table["n"]) == [2, 2, 1, 2]
    assert list(table["accuracy"]) == [0.0, 0.5, 1.0, 1.0]
    for row in table.itertuples():  # Wilson intervals: not zero-width at n = 1 or 2
        assert (row.ci_low, row.ci_high) == wilson_interval(round(row.accuracy * row.n), row.n)
        assert row.ci_low <= row.accuracy <= row.ci_high and row.ci_high - row.ci_low > 0.5
    with pytest.raises(ValueError, match="0/1"):
        per_group_accuracy(np.array([0.3, 1.0]), ["a", "b"])


def _loader(n: int = 10, shuffle: bool = False) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, 4, 4, generator=generator)
    labels = torch.arange(n) % 2
    return DataLoader(TensorDataset(images, labels), batch_size=4, shuffle=shuffle)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2))


def test_predict_collects_logits_labels_and_metadata_in_order():
    loader, model = _loader(), _model()
    records = [PetRecord(Path(f"img{i}.jpg"), i % 2, f"breed{i % 3}", None) for i in range(10)]
    model.train()
    model[0].eval()  # a submodule frozen in eval mode inside a training model
    pred = predict(model, loader, metadata=records)
    assert model.training and model[1].training and not model[0].training  # modes restored
    images, labels = loader.dataset.tensors
    with torch.no_grad():
        torch.testing.assert_close(pred.logits, model(images))
    assert torch.equal(pred.labels, labels)
    assert pred.correct.dtype == bool and pred.probabilities.sum(1).allclose(torch.ones(10))
    frame = pred.to_frame(class_names=["cat", "dog"])
    assert isinstance(frame, pd.DataFrame) and len(frame) == 10
    assert frame.loc[3, "image_path"] == "img3.jpg" and frame.loc[3, "breed"] == "breed0"
    assert set(frame["label"]) == {"cat", "dog"}
    assert {"predicted", "correct", "p_cat", "p_dog"} <= set(frame.columns)


def test_predict_reads_dict_batches():
    images, labels = _loader().dataset.tensors
    batches = [
        {"image": images[:6], "label": labels[:6]},
        {"image": images[6:], "label": labels[6:]},
    ]
    pred = predict(_model(), batches, torch.device("cpu"))
    assert torch.equal(pred.labels, labels)


def test_predict_refuses_metadata_with_a_shuffling_loader():
    with pytest.raises(ValueError, match="without shuffle"):
        predict(_model(), _loader(shuffle=True), metadata=list(range(10)))
    with pytest.raises(ValueError, match="9 metadata items for 10 images"):
        predict(_model(), _loader(), metadata=list(range(9)))


def test_paired_sample_size_matches_connor_1987() -> None:
    # Connor's formula by hand: z = 1.96, 0.8416; discordance 0.2, difference 0.05.
    expected = math.ceil((1.959964 * 0.2**0.5 + 0.841621 * (0.2 - 0.0025) ** 0.5) ** 2 / 0.0025)
    assert evaluate.paired_sample_size(0.05, 0.2) == expected
    assert evaluate.paired_sample_size(-0.05, 0.2) == expected  # the sign does not matter
    assert evaluate.paired_sample_size(0.05, 0.2, power=0.9) > expected
    with pytest.raises(ValueError):
        evaluate.paired_sample_size(0.3, 0.2)  # cannot differ by more than they disagree


def test_minimum_detectable_difference_inverts_the_sample_size() -> None:
    mdd = evaluate.minimum_detectable_difference(218, 0.15)
    assert 0 < mdd < 0.15
    assert evaluate.paired_sample_size(mdd, 0.15) <= 218
    assert evaluate.paired_sample_size(mdd * 0.98, 0.15) > 218
    assert evaluate.minimum_detectable_difference(2000, 0.15) < mdd  # more images see less


def test_minimum_detectable_difference_is_infinite_when_no_difference_is_detectable() -> None:
    # 11 % disagreement: even all 11 % going one way needs about 70 images (the smoke profile
    # tests on 64)
    assert evaluate.paired_sample_size(0.109 * 0.999, 0.109) > 64
    assert evaluate.minimum_detectable_difference(64, 0.109) == math.inf
    assert evaluate.minimum_detectable_difference(80, 0.109) < 0.109


def test_discordance_counts_images_where_exactly_one_is_right() -> None:
    a = np.array([1, 1, 0, 0, 1], dtype=bool)
    b = np.array([1, 0, 1, 0, 1], dtype=bool)
    assert evaluate.discordance(a, b) == pytest.approx(0.4)


def test_mcnemar_exact_counts_only_discordant_images() -> None:
    first = np.array([1, 1, 1, 0, 0, 1, 1, 0], bool)
    second = np.array([1, 0, 0, 0, 0, 1, 0, 1], bool)  # b = 3 (only first), c = 1 (only second)
    # two-sided binomial: 2 * P(X <= 1), X ~ Bin(4, 1/2) = 2 * 5/16
    assert mcnemar_exact(first, second) == pytest.approx(10 / 16)
    assert mcnemar_exact(second, first) == pytest.approx(10 / 16)
    assert mcnemar_exact(first, first) == 1.0
    assert mcnemar_exact(np.ones(10, bool), np.zeros(10, bool)) == pytest.approx(2 / 2**10)
    with pytest.raises(ValueError, match="same images"):
        mcnemar_exact(first, second[:-1])


def test_holm_adjust_matches_the_step_down_rule() -> None:
    adjusted = holm_adjust([0.01, 0.04, 0.03, 0.5])
    # sorted 0.01, 0.03, 0.04, 0.5 -> x4, x3, x2, x1 = 0.04, 0.09, 0.08 -> monotone 0.09, 0.5
    assert adjusted == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm_adjust([0.3, 0.02]) == pytest.approx([0.3, 0.04])
    assert holm_adjust([0.9, 0.8]).tolist() == [1.0, 1.0]  # capped at 1
    assert holm_adjust([]).size == 0
    with pytest.raises(ValueError, match="p-values"):
        holm_adjust([1.2])

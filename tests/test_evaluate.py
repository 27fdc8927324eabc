"""Metrics: bootstrap intervals, confusion matrix, per-group accuracy, predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from course_utils.data import PetRecord
from course_utils.evaluate import (
    accuracy,
    bootstrap_ci,
    confusion_matrix,
    format_accuracy,
    per_group_accuracy,
    predict,
)


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


def test_format_accuracy_reads_like_a_report():
    text = format_accuracy(np.r_[np.ones(80), np.zeros(20)])
    assert text.startswith("80.0% (95% CI ") and text.endswith("n=100)")


def test_accuracy_takes_classes_or_scores():
    labels = np.array([0, 1, 1, 0])
    assert accuracy(np.array([0, 1, 0, 0]), labels) == 0.75
    assert accuracy(torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [5.0, 1.0]]), labels) == 0.75


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
    assert (table["ci_low"] <= table["accuracy"]).all()
    assert (table["accuracy"] <= table["ci_high"]).all()


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
    pred = predict(model, loader, metadata=records)
    assert model.training  # mode restored
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

"""course_utils.self_check: every check is quiet when blank, says so when right, explains when
wrong, and never raises."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torchvision

from course_utils import models, self_check


@functools.cache
def _resnet50_v1() -> torchvision.models.ResNet:
    """torchvision's ResNet-50 with the stride of each downsampling block moved to conv1."""
    net = torchvision.models.resnet50()
    for stage in (net.layer2, net.layer3, net.layer4):
        stage[0].conv1.stride, stage[0].conv2.stride = (2, 2), (1, 1)
    return net


def _shares(by: str, shift: float = 0.0) -> dict[str, float]:
    return {k: v + shift for k, v in self_check.pet_shares()[by].items()}


CASES: list[tuple[Callable, Callable[[], object], Callable[[], object], str]] = [
    # (check, right answer, wrong answer, words of the wrong answer's message)
    (
        self_check.pet_share_per_species,
        lambda: _shares("species"),
        lambda: _shares("species", 0.02),
        "off by",
    ),
    (self_check.pet_share_per_species, lambda: _shares("species"), lambda: {"cat": 0.5}, "keys"),
    (
        self_check.pet_share_per_mask_kind,
        lambda: _shares("mask_kind"),
        lambda: _shares("mask_kind", -0.01),
        "off by",
    ),
    (
        self_check.resnet152_network,
        lambda: models.ResNet(models.Bottleneck, self_check.RESNET152_BLOCKS),
        lambda: models.resnet101(),
        "does not load strictly",
    ),
    (
        self_check.resnet152_network,
        lambda: torchvision.models.resnet152(),
        _resnet50_v1,
        "strictly",
    ),
    (
        self_check.resnet50_v1_network,
        _resnet50_v1,
        lambda: torchvision.models.resnet50(),
        "stride 2",
    ),
    (self_check.resnet50_v1_network, _resnet50_v1, lambda: models.resnet101(), "strictly"),
    (self_check.resnet152_parameters, lambda: 60_192_808, lambda: 60_192_809, "not the count"),
    (self_check.resnet152_gmacs, lambda: 11.514, lambda: 23.028, "_ops"),
    # by hand: stem 11 px (jump 4); layer1 +3x8; layer2 +8, then +7x16; layer3 +16, then +35x32
    (self_check.resnet152_receptive_field, lambda: 1291, lambda: 1292, "is not it"),
    (self_check.weight_memory_ratio, lambda: 1.743, lambda: 2.0, "off by"),
]


@pytest.mark.parametrize(("check", "right", "wrong", "words"), CASES)
def test_blank_right_and_wrong(check, right, wrong, words, capsys) -> None:
    assert check(None, exercise=3) is None
    blank = capsys.readouterr().out
    assert blank.startswith("exercise 3: not answered yet (set ") and blank.count("\n") == 1
    assert check(right()) is True
    assert "correct" in capsys.readouterr().out
    assert check(wrong()) is False
    message = capsys.readouterr().out
    assert "not right yet" in message and words in message, message


def test_pet_shares_are_per_group_means() -> None:
    shares = self_check.pet_shares()
    assert set(shares["species"]) == {"cat", "dog"}
    assert set(shares["mask_kind"]) == {"polygon", "trimap"}
    assert all(0 < v < 1 for group in shares.values() for v in group.values())


def test_a_check_never_raises_on_a_nonsense_answer(capsys) -> None:
    assert self_check.resnet152_gmacs(float("nan")) is False
    assert self_check.pet_share_per_species({"cat": float("nan"), "dog": 0.5}) is False
    assert capsys.readouterr().out.count("not right yet") == 2

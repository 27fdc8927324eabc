"""Attacks (FGSM, PGD) and corruptions on a tiny network and small synthetic images."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny import TinyNet

from course_utils import robustness
from course_utils.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from course_utils.robustness import CORRUPTIONS, Normalized, corrupt, fgsm, pgd

EPSILONS = (0.0, 1 / 255, 4 / 255, 8 / 255, 16 / 255)


def smooth_images(n: int = 8, side: int = 64, seed: int = 0) -> torch.Tensor:
    """Images in [0, 1] with photo-like smooth regions (random 8x8 colours, upsampled)."""
    coarse = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(coarse, size=side, mode="bilinear", align_corners=False).clamp(0, 1)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = TinyNet().eval()
    images = smooth_images(16, 32)
    labels = torch.randint(0, 2, (16,), generator=torch.Generator().manual_seed(1))
    return Normalized(model), images, labels


def loss(model, images, labels) -> float:
    with torch.no_grad():
        return F.cross_entropy(model(images), labels).item()


def test_normalized_applies_the_imagenet_normalisation(setup):
    pixel_model, images, _ = setup
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(pixel_model(images), pixel_model.model((images - mean) / std))


@pytest.mark.parametrize("attack", [fgsm, pgd])
def test_attacks_stay_in_the_ball_and_in_range_and_raise_the_loss(setup, attack):
    model, images, labels = setup
    clean = loss(model, images, labels)
    for epsilon in EPSILONS:
        adversarial = attack(model, images, labels, epsilon)
        assert adversarial.shape == images.shape
        assert (adversarial - images).abs().max() <= epsilon + 1e-6
        assert adversarial.min() >= 0 and adversarial.max() <= 1
        if epsilon == 0:
            assert torch.equal(adversarial, images)
        else:
            assert loss(model, adversarial, labels) > clean


def test_pgd_is_at_least_as_strong_as_fgsm(setup):
    model, images, labels = setup
    for epsilon in EPSILONS[1:]:
        generator = torch.Generator().manual_seed(0)
        strong = loss(model, pgd(model, images, labels, epsilon, generator=generator), labels)
        assert strong >= loss(model, fgsm(model, images, labels, epsilon), labels) - 1e-6


def test_pgd_is_reproducible_with_a_generator(setup):
    model, images, labels = setup
    runs = [
        pgd(model, images, labels, 4 / 255, steps=3, generator=torch.Generator().manual_seed(5))
        for _ in range(2)
    ]
    assert torch.equal(*runs)


def test_accuracy_under_attack_falls_with_epsilon(setup):
    pixel_model, images, labels = setup
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    normalised = (images - mean) / std
    frame = robustness.accuracy_under_attack(
        pixel_model.model, (normalised, labels), [0.0, 0.25], "fgsm"
    )
    with torch.no_grad():
        clean = (pixel_model(images).argmax(1) == labels).float().mean().item()
    assert list(frame.columns) == ["epsilon", "accuracy", "ci_low", "ci_high", "n", "correct"]
    assert frame.n.tolist() == [16, 16]
    assert [c.mean() for c in frame.correct] == pytest.approx(frame.accuracy.tolist())
    assert frame.accuracy[0] == pytest.approx(clean)
    assert frame.accuracy[1] < frame.accuracy[0]  # a quarter of the range: the net is fooled


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruptions_keep_the_format_and_grow_with_severity(name):
    images = smooth_images()
    assert torch.equal(corrupt(images, name, 0), images)
    distances = []
    for severity in range(1, 6):
        out = corrupt(images, name, severity, seed=3)
        assert out.shape == images.shape and out.dtype == images.dtype
        assert out.min() >= 0 and out.max() <= 1
        assert torch.equal(out, corrupt(images, name, severity, seed=3))  # seeded
        distances.append((out - images).abs().mean().item())
    assert distances[0] > 0
    assert distances == sorted(distances), distances


@pytest.mark.parametrize("name", ["gaussian_noise", "elastic"])
def test_random_corruptions_depend_on_the_seed(name):
    images = smooth_images()
    assert not torch.equal(corrupt(images, name, 3, seed=0), corrupt(images, name, 3, seed=1))


def test_corrupt_takes_a_single_image_and_rejects_unknown_names():
    image = smooth_images(1)[0]
    assert corrupt(image, "pixelate", 5).shape == image.shape
    with pytest.raises(ValueError, match="Valid"):
        corrupt(image, "snow", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(image, "jpeg", 6)


def test_corruption_accuracy_is_tidy_and_reproducible(setup):
    pixel_model, images, labels = setup
    data = (images, labels)
    kwargs = {"corruptions": ["gaussian_noise", "contrast"], "severities": [1, 5]}
    first = robustness.corruption_accuracy(
        pixel_model.model, data, network="tiny", normalized=False, **kwargs
    )
    again = robustness.corruption_accuracy(
        pixel_model.model, data, network="tiny", normalized=False, **kwargs
    )
    assert first.equals(again)
    assert list(first.columns[:4]) == ["network", "corruption", "severity", "accuracy"]
    assert first.corruption.tolist() == ["clean"] + ["gaussian_noise"] * 2 + ["contrast"] * 2
    summary = robustness.mean_corruption_accuracy(first)
    clean = first.accuracy[0]
    mean = first.accuracy[1:].mean()
    assert summary.mean_corruption_accuracy[0] == pytest.approx(mean)
    assert summary.relative_drop[0] == pytest.approx((clean - mean) / clean)

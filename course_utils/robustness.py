"""Robustness: accuracy under adversarial attacks (FGSM, PGD) and under natural corruptions.

Attacks work in **pixel units**: images in [0, 1] *before* the ImageNet normalisation, so an
``epsilon`` of 8/255 means "each pixel moves by at most 8 grey levels". The network, trained on
normalised images, is wrapped in :class:`Normalized` so that the attack sees pixels; every
adversarial image is clamped back into [0, 1].

- :func:`fgsm` (Goodfellow et al. 2015): one step of size epsilon along the sign of the gradient.
- :func:`pgd` (Madry et al. 2018): a random start in the L∞ ball, then ``steps`` signed-gradient
  steps of size ``alpha``, each projected back into the ball (and into [0, 1]).
- :func:`corrupt`: seven corruptions at severities 1-5 (0 = the clean image), parameters in
  :data:`CORRUPTIONS`, loosely after ImageNet-C (Hendrycks & Dietterich 2019).
- :func:`corruption_accuracy` / :func:`mean_corruption_accuracy`: accuracy per corruption and
  severity, then its mean and the drop relative to clean accuracy. ImageNet-C's mCE divides each
  corruption's error by AlexNet's on the same corruption (and relative mCE subtracts the clean
  error first); we have no AlexNet on this data set, so ours is the plain mean over corruptions
  and severities, and the relative drop is taken against the network's own clean accuracy.
  Corruptions that are harder in themselves therefore weigh more than in mCE.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from course_utils.data.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize
from course_utils.evaluate import split_batch, wilson_interval
from course_utils.models import eval_mode

__all__ = [
    "ATTACKS",
    "CORRUPTIONS",
    "Normalized",
    "accuracy_under_attack",
    "corrupt",
    "corruption_accuracy",
    "fgsm",
    "mean_corruption_accuracy",
    "pgd",
]


class Normalized(nn.Module):
    """``model`` fed with images in [0, 1]: the ImageNet normalisation becomes its first layer."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        return self.model((images - self.mean) / self.std)


def _input_gradient(model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
    """d(cross-entropy summed over the batch) / d(images)."""
    images = images.detach().requires_grad_(True)
    loss = F.cross_entropy(model(images), labels, reduction="sum")
    (gradient,) = torch.autograd.grad(loss, images)
    return gradient


def fgsm(model: nn.Module, images: Tensor, labels: Tensor, epsilon: float) -> Tensor:
    """Fast gradient sign method: ``clamp(x + epsilon * sign(∇x loss), 0, 1)``.

    ``model`` takes images in [0, 1] (see :class:`Normalized`); ``epsilon`` is in pixel units.
    """
    with eval_mode(model):
        gradient = _input_gradient(model, images, labels)
    return (images + epsilon * gradient.sign()).clamp(0, 1).detach()


def pgd(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    epsilon: float,
    *,
    steps: int = 10,
    alpha: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Projected gradient descent in the L∞ ball of radius ``epsilon`` around ``images``.

    Start at a uniform random point of the ball (``random_start``), then ``steps`` times: step
    ``alpha`` (default ``2.5 * epsilon / steps``, Madry et al.) along the gradient's sign,
    project back into the ball and into [0, 1]. ``generator`` makes the start reproducible.
    """
    alpha = 2.5 * epsilon / steps if alpha is None else alpha
    adversarial = images.clone()
    if random_start:
        noise = torch.rand(images.shape, generator=generator).to(images.device)
        adversarial = (images + (2 * noise - 1) * epsilon).clamp(0, 1)
    with eval_mode(model):
        for _ in range(steps):
            gradient = _input_gradient(model, adversarial, labels)
            adversarial = adversarial + alpha * gradient.sign()
            adversarial = torch.min(torch.max(adversarial, images - epsilon), images + epsilon)
            adversarial = adversarial.clamp(0, 1).detach()
    return adversarial


Attack = Callable[[nn.Module, Tensor, Tensor, float], Tensor]
ATTACKS: dict[str, Attack] = {"fgsm": fgsm, "pgd": pgd}


def _pixel_batches(
    data: Iterable | tuple[Tensor, Tensor], normalized: bool, device: torch.device
) -> Iterable[tuple[Tensor, Tensor]]:
    """``(images in [0, 1], labels)`` on ``device`` from a loader or one ``(images, labels)``."""
    batches = [data] if isinstance(data, tuple) and isinstance(data[0], Tensor) else data
    for batch in batches:
        images, labels = split_batch(batch)
        images = denormalize(images) if normalized else images
        yield images.to(device), torch.as_tensor(labels).to(device)


def _accuracy_row(correct: list[Tensor], **keys: object) -> dict[str, object]:
    """Accuracy with its Wilson interval, and the per-image results for paired comparisons."""
    per_image = torch.cat(correct).cpu().numpy()
    n, hits = per_image.size, int(per_image.sum())
    low, high = wilson_interval(hits, n)
    return {
        **keys,
        "accuracy": hits / n,
        "ci_low": low,
        "ci_high": high,
        "n": n,
        "correct": per_image,
    }


def accuracy_under_attack(
    model: nn.Module,
    data: Iterable | tuple[Tensor, Tensor],
    epsilons: Sequence[float],
    attack: str | Attack = "pgd",
    *,
    normalized: bool = True,
) -> pd.DataFrame:
    """Accuracy of ``model`` on ``data`` attacked at each epsilon (pixel units, e.g. 2/255).

    ``model`` is the network as trained (ImageNet-normalised inputs); ``data`` is a loader or
    one ``(images, labels)`` pair, normalised as the course's transforms give them unless
    ``normalized=False`` (then already in [0, 1]). Columns: epsilon, accuracy, ci_low, ci_high
    (Wilson, 95 %), n, and ``correct`` (per image, bool array) for paired comparisons.
    """
    attack_fn = ATTACKS[attack] if isinstance(attack, str) else attack
    device = next(model.parameters()).device
    pixel_model = Normalized(model).to(device)
    correct: dict[float, list[Tensor]] = {epsilon: [] for epsilon in epsilons}
    for images, labels in _pixel_batches(data, normalized, device):
        for epsilon in epsilons:
            adversarial = attack_fn(pixel_model, images, labels, epsilon)
            with torch.no_grad(), eval_mode(pixel_model):
                correct[epsilon].append(pixel_model(adversarial).argmax(1) == labels)
    return pd.DataFrame([_accuracy_row(correct[e], epsilon=e) for e in epsilons])


# Severity 1..5 parameter of each corruption, loosely after ImageNet-C (Hendrycks & Dietterich
# 2019, their `make_imagenet_c.py`) where a torchvision operation does the same thing; spatial
# ones (blur sigma, elastic alpha/sigma) are in pixels at 224 px and scaled to the image's side.
CORRUPTIONS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),  # std of added noise (ImageNet-C's values)
    "gaussian_blur": (1.0, 2.0, 3.0, 4.0, 6.0),  # blur sigma (ImageNet-C's values)
    "jpeg": (25, 18, 15, 10, 7),  # JPEG quality (ImageNet-C's values)
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),  # brightness factor 1 + c (ImageNet-C adds c to V)
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),  # contrast factor (ImageNet-C's values)
    "elastic": (20.0, 40.0, 60.0, 80.0, 100.0),  # ElasticTransform alpha (sigma 5 px at 224 px)
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),  # downscale factor, then back up (ImageNet-C's)
}
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
ELASTIC_SIGMA = 5.0  # at 224 px


def _odd_kernel(sigma: float, side: int) -> int:
    """An odd Gaussian kernel size covering ±3 sigma, small enough for reflect padding."""
    size = 2 * math.ceil(3 * sigma) + 1
    return min(size, 2 * ((side - 1) // 2) + 1)


def _pil_jpeg(image: Tensor, quality: int) -> Tensor:
    """One ``(3, H, W)`` uint8 image through a PIL JPEG round trip (torchvision < 0.20)."""
    from PIL import Image

    buffer = io.BytesIO()
    TF.to_pil_image(image).save(buffer, format="JPEG", quality=quality)
    return TF.pil_to_tensor(Image.open(buffer))


def _jpeg(images: Tensor, quality: int) -> Tensor:
    as_uint8 = (images * 255).round().to(torch.uint8)
    if hasattr(TF, "jpeg"):
        encoded = TF.jpeg(as_uint8, quality)
    else:
        flat = as_uint8.reshape(-1, *as_uint8.shape[-3:]).cpu()
        encoded = torch.stack([_pil_jpeg(image, quality) for image in flat])
        encoded = encoded.reshape(as_uint8.shape).to(images.device)
    return TF.to_dtype(encoded, torch.float32, scale=True)


def _elastic(images: Tensor, alpha: float, sigma: float, seed: int) -> Tensor:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return v2.ElasticTransform(alpha=alpha, sigma=sigma)(images)


def corrupt(images: Tensor, corruption: str, severity: int, seed: int = 0) -> Tensor:
    """``images`` (float in [0, 1], ``(C, H, W)`` or ``(N, C, H, W)``) corrupted at ``severity``.

    Severity 0 returns the images unchanged; 1-5 read :data:`CORRUPTIONS`. The random ones
    (noise, elastic) are the same for the same ``seed``. Shape, dtype and range are kept.
    """
    if corruption not in CORRUPTIONS:
        raise ValueError(f"Unknown corruption {corruption!r}. Valid: {', '.join(CORRUPTIONS)}")
    if not 0 <= severity <= len(SEVERITIES):
        raise ValueError(f"severity must lie in 0..{len(SEVERITIES)}, got {severity}")
    if severity == 0:
        return images.clone()
    c = CORRUPTIONS[corruption][severity - 1]
    height, width = images.shape[-2:]
    scale = min(height, width) / 224
    if corruption == "gaussian_noise":
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(images.shape, generator=generator).to(images.device)
        out = images + c * noise
    elif corruption == "gaussian_blur":
        sigma = max(c * scale, 1e-3)
        out = TF.gaussian_blur(images, [_odd_kernel(sigma, min(height, width))] * 2, [sigma] * 2)
    elif corruption == "jpeg":
        out = _jpeg(images, int(c))
    elif corruption == "brightness":
        out = TF.adjust_brightness(images, 1 + c)
    elif corruption == "contrast":
        out = TF.adjust_contrast(images, c)
    elif corruption == "elastic":
        out = _elastic(images, c * scale, ELASTIC_SIGMA * scale, seed)  # one field per call
    else:  # pixelate
        small = [max(1, round(height * c)), max(1, round(width * c))]
        down = TF.resize(images, small, interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
        out = TF.resize(down, [height, width], interpolation=v2.InterpolationMode.NEAREST_EXACT)
    return out.clamp(0, 1).to(images.dtype)


def corruption_accuracy(
    model: nn.Module,
    data: Iterable | tuple[Tensor, Tensor],
    corruptions: Sequence[str] | Mapping[str, object] = tuple(CORRUPTIONS),
    severities: Sequence[int] = SEVERITIES,
    *,
    network: str = "model",
    seed: int = 0,
    normalized: bool = True,
) -> pd.DataFrame:
    """Accuracy of ``model`` on ``data``, clean and under each corruption at each severity.

    ``data`` as in :func:`accuracy_under_attack`. Batch ``b`` is corrupted with seed
    ``seed + b``, so the whole table is reproducible. Returns a tidy frame: network, corruption
    (``"clean"`` for the uncorrupted row, severity 0), severity, accuracy, ci_low, ci_high
    (Wilson, 95 %), n, and ``correct`` (per image, bool array) for paired comparisons.
    """
    device = next(model.parameters()).device
    pixel_model = Normalized(model).to(device)
    cases = [("clean", 0)] + [(c, s) for c in corruptions for s in severities]
    correct: dict[tuple[str, int], list[Tensor]] = {case: [] for case in cases}
    with torch.no_grad(), eval_mode(pixel_model):
        for index, (images, labels) in enumerate(_pixel_batches(data, normalized, device)):
            for corruption, severity in cases:
                corrupted = (
                    images
                    if corruption == "clean"
                    else corrupt(images, corruption, severity, seed + index)
                )
                correct[corruption, severity].append(pixel_model(corrupted).argmax(1) == labels)
    return pd.DataFrame(
        [
            _accuracy_row(correct[case], network=network, corruption=case[0], severity=case[1])
            for case in cases
        ]
    )


def mean_corruption_accuracy(frame: pd.DataFrame) -> pd.DataFrame:
    """Per network: clean accuracy, mean accuracy over every corruption and severity, and the
    relative drop ``(clean - mean) / clean`` (see the module docstring for how it differs from
    ImageNet-C's mCE)."""
    rows = []
    for network, group in frame.groupby("network", sort=False):
        clean = float(group.loc[group.corruption == "clean", "accuracy"].iloc[0])
        mean = float(group.loc[group.corruption != "clean", "accuracy"].mean())
        drop = (clean - mean) / clean if clean > 0 else math.nan
        rows.append(
            {
                "network": network,
                "clean_accuracy": clean,
                "mean_corruption_accuracy": mean,
                "relative_drop": drop,
            }
        )
    return pd.DataFrame(rows)

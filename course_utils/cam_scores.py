"""Scores for heatmaps (CAMs): against pet masks, against each other, and their baselines.

Every function takes ``(N, H, W)`` maps (any non-negative scale; :mod:`course_utils.cam` gives
[0, 1]) and returns one score per image as a numpy array, so that
:func:`course_utils.evaluate.bootstrap_ci` gives an interval for its mean and
:func:`course_utils.evaluate.paired_difference` compares two networks on the same images.

- Localisation against a 0/1 pet mask ``M``: the energy-based pointing game
  ``sum(L * M) / sum(L)`` (Wang et al. 2020, Score-CAM, https://arxiv.org/abs/1910.01279) and
  the pointing-game hit (is the maximum of ``L`` on the pet? Zhang et al. 2016,
  https://arxiv.org/abs/1608.00507, here without a tolerance margin). Both are undefined on an
  image without pet pixels: select images with :func:`has_pet` first. :func:`pointing_hit_on_grid`
  plays the game on the feature map's own cells (an upsampled 2 x 2 map always peaks in a
  corner block), and :func:`energy_above_chance` subtracts the pet's share of the image, which a
  map that knows nothing scores. :data:`CAM_SCORES` names the three for tables
  (:class:`CamScore`: which need the stage's cells, which sit at 0 for chance).
- Faithfulness (does the network need the highlighted pixels?): grad-cam's
  ``CamMultImageConfidenceChange``, see :func:`confidence_change`.
- Baselines that know nothing about the image: :func:`random_cams` and :func:`centre_cams`.
- Agreement of two maps of the same image: :func:`top_k_iou` and :func:`rank_correlation`;
  :func:`top_k_mask` keeps the same area of every map.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from course_utils.cam import normalize_cams, to_input_size
from course_utils.evaluate import bootstrap_ci, format_interval, paired_difference
from course_utils.models import ARCHITECTURES, eval_mode


def _check(cams: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    cams, masks = torch.as_tensor(cams).float(), torch.as_tensor(masks).float()
    if cams.ndim != 3 or cams.shape != masks.shape:
        raise ValueError(
            f"cams {tuple(cams.shape)} and masks {tuple(masks.shape)}: need (N, H, W)."
        )
    return cams, masks


def has_pet(masks: Tensor) -> np.ndarray:
    """``(N,)`` bool: does mask ``i`` contain at least one pet pixel?"""
    return (torch.as_tensor(masks).flatten(1) > 0).any(dim=1).numpy()


def energy_pointing_game(cams: Tensor, masks: Tensor) -> np.ndarray:
    """Share of each map's mass on the pet: ``sum(L * M) / sum(L)``, in [0, 1].

    A map with no mass (all zeros) counts as uniform, so it scores the pet's share of the image.
    """
    cams, masks = _check(cams, masks)
    total = cams.sum(dim=(1, 2))
    inside = (cams * masks).sum(dim=(1, 2))
    uniform = masks.mean(dim=(1, 2))
    return torch.where(total > 0, inside / total.clamp_min(1e-12), uniform).numpy()


def pointing_hit(cams: Tensor, masks: Tensor) -> np.ndarray:
    """1.0 when a map's maximum lies on the pet, else 0.0.

    When several pixels share the maximum (e.g. a constant map), the score is the share of them
    on the pet: the chance of a hit when the tie is broken at random.
    """
    cams, masks = _check(cams, masks)
    peaks = (cams == cams.amax(dim=(1, 2), keepdim=True)).float()
    return ((peaks * masks).sum(dim=(1, 2)) / peaks.sum(dim=(1, 2))).numpy()


MIN_POINTING_GRID = 4  # below 4 x 4 cells a peak says little more than "which quadrant"


def pointing_hit_on_grid(cams: Tensor, masks: Tensor, grid: int | tuple[int, int]) -> np.ndarray:
    """The pointing game on a ``grid`` of cells (a stage's feature map, e.g. ``size // 32``).

    Maps and masks are averaged onto the cells; a hit is a peak cell at least half covered by the
    pet (ties share, as in :func:`pointing_hit`). Scoring the upsampled map instead would reward
    where bilinear interpolation puts the maximum, not what the network saw. Raises ``ValueError``
    below :data:`MIN_POINTING_GRID` cells a side.
    """
    cams, masks = _check(cams, masks)
    rows, cols = (grid, grid) if isinstance(grid, int) else grid
    if min(rows, cols) < MIN_POINTING_GRID:
        raise ValueError(
            f"a {rows} x {cols} map is too coarse for the pointing game "
            f"(at least {MIN_POINTING_GRID} x {MIN_POINTING_GRID}); use a larger input or an "
            "earlier stage."
        )
    cell_cams = nn.functional.adaptive_avg_pool2d(cams[:, None], (rows, cols))[:, 0]
    on_pet = (nn.functional.adaptive_avg_pool2d(masks[:, None], (rows, cols))[:, 0] >= 0.5).float()
    return pointing_hit(cell_cams, on_pet)


def energy_above_chance(cams: Tensor, masks: Tensor) -> np.ndarray:
    """:func:`energy_pointing_game` minus the pet's share of the image, in [-1, 1].

    0 is what a uniform (or random) map scores on that image, so a large pet no longer lifts the
    score by itself; positive: the map puts more of its mass on the pet than its area does.
    """
    cams, masks = _check(cams, masks)
    return energy_pointing_game(cams, masks) - masks.mean(dim=(1, 2)).numpy()


@dataclass(frozen=True)
class CamScore:
    """A per-image score of maps against pet masks, named for tables, callable on any stage.

    ``on_cells`` scores are played on the stage's own cells (``side // stride`` a side) and only
    where there are at least :data:`MIN_POINTING_GRID` of them (:meth:`playable`);
    ``above_chance`` scores put what a map that knows nothing scores at 0 (else they lie in
    [0, 1]).
    """

    name: str
    function: Callable[..., np.ndarray]
    on_cells: bool = False
    above_chance: bool = False

    def playable(self, side: int, stride: int) -> bool:
        """Whether this score is defined on ``side``-pixel maps of a stage with this ``stride``."""
        return not self.on_cells or side // stride >= MIN_POINTING_GRID

    def __call__(self, cams: Tensor, masks: Tensor, stride: int = 32) -> np.ndarray:
        """The score per image; ``stride``: the target stage's (32 for layer4) for ``on_cells``."""
        if self.on_cells:
            return self.function(cams, masks, cams.shape[-1] // stride)
        return self.function(cams, masks)


ENERGY = CamScore("energy (share on the pet)", energy_pointing_game)
ENERGY_ABOVE_CHANCE = CamScore("energy above chance", energy_above_chance, above_chance=True)
POINTING = CamScore("pointing hit rate", pointing_hit_on_grid, on_cells=True)
CAM_SCORES = (ENERGY, ENERGY_ABOVE_CHANCE, POINTING)  # the localisation scores, in table order


def random_cams(n: int, size: tuple[int, int], grid: int | None = None, seed: int = 0) -> Tensor:
    """``n`` random maps ``(n, H, W)``: uniform noise on a coarse grid, upsampled like a Grad-CAM.

    ``grid`` (default ``H / 32`` rounded, at least 1) matches layer4's feature map, so the random
    map has the blob size of a real layer4 Grad-CAM. Its expected energy score and hit rate equal
    the pet's share of the image.
    """
    height, width = size
    grid = grid or max(1, round(height / 32))
    grid_w = max(1, round(grid * width / height))
    noise = torch.rand(n, grid, grid_w, generator=torch.Generator().manual_seed(seed))
    return to_input_size(noise, size)


def centre_cams(n: int, size: tuple[int, int], sigma: float = 0.25) -> Tensor:
    """``n`` copies of a centred Gaussian ``(n, H, W)``, standard deviation ``sigma`` x the side.

    Photographers centre their subject and the evaluation crop keeps the centre: this map knows
    only that, and is the bar a network's map must clear to show it found the pet itself.
    """
    height, width = size
    ys = (torch.arange(height) + 0.5) / height - 0.5
    xs = (torch.arange(width) + 0.5) / width - 0.5
    gauss = torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma**2))
    return normalize_cams(gauss[None]).expand(n, height, width).clone()


@torch.no_grad()
def confidence_change(
    model: nn.Module,
    images: Tensor,
    cams: Tensor | Mapping[str, Tensor],
    classes: Tensor | Sequence[int],
    batch_size: int = 32,
) -> np.ndarray | dict[str, np.ndarray]:
    """Change of the probability of ``classes`` when each image is multiplied by its map.

    grad-cam's ``CamMultImageConfidenceChange``: ``p_c(x * L) - p_c(x)`` on the normalised image,
    so pixels where the map is 0 become the data set's mean colour. Close to 0: the highlighted
    region alone keeps the network's confidence (a faithful map); strongly negative: the network
    needed pixels that the map left out. ``cams`` is one ``(N, H, W)`` tensor (returns ``(N,)``)
    or a dict of them (returns a dict): the unchanged images' ``p_c(x)`` is computed once for
    all maps, then one forward pass per image and map.
    """
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    metric = CamMultImageConfidenceChange()
    device = next(model.parameters()).device
    maps = dict(cams) if isinstance(cams, Mapping) else {"": cams}
    classes = torch.as_tensor([int(c) for c in classes], dtype=torch.long)
    with eval_mode(model):
        before = torch.cat(
            [
                model(images[i : i + batch_size].to(device)).softmax(dim=1).cpu()
                for i in range(0, len(classes), batch_size)
            ]
        )
        before = before.gather(1, classes[:, None])[:, 0].double().numpy()
        changes = {}
        for name, cam_maps in maps.items():
            cam_maps = torch.as_tensor(cam_maps).float().numpy()
            after = []
            for i in range(0, len(classes), batch_size):
                targets = [
                    ClassifierOutputSoftmaxTarget(int(c)) for c in classes[i : i + batch_size]
                ]
                part = metric(
                    images[i : i + batch_size].to(device),
                    cam_maps[i : i + batch_size],
                    targets,
                    model,
                    return_diff=False,
                )
                after.append(np.asarray(part, dtype=np.float64).reshape(-1))
            changes[name] = np.concatenate(after) - before
    return changes if isinstance(cams, Mapping) else changes[""]


def top_k_mask(cams: Tensor, k: float) -> Tensor:
    """``(N, H, W)`` bool: the ``round(k * H * W)`` highest pixels of each map (ties by position).

    Every map keeps exactly the same area, whatever its values: the way to compare maps of
    different spread (a diffuse random map against a peaked Grad-CAM) on equal terms.
    """
    cams = torch.as_tensor(cams).float()
    flat = cams.flatten(1)
    count = min(flat.shape[1], max(1, round(k * flat.shape[1])))
    region = torch.zeros_like(flat, dtype=torch.bool)
    region.scatter_(1, flat.topk(count, dim=1).indices, True)
    return region.view_as(cams)


def top_k_iou(cams_a: Tensor, cams_b: Tensor, k: float = 0.2) -> np.ndarray:
    """IoU of the ``k`` (default 20 %) highest pixels of two maps of the same image, in [0, 1].

    Exactly ``round(k * H * W)`` pixels per map (:func:`top_k_mask`), so two identical maps
    score 1 and a map against its reverse ``1 - L`` scores 0 (for ``k <= 0.5``).
    """
    cams_a, cams_b = _check(cams_a, cams_b)
    region_a, region_b = top_k_mask(cams_a, k).flatten(1), top_k_mask(cams_b, k).flatten(1)
    both = (region_a & region_b).sum(dim=1).double()
    either = (region_a | region_b).sum(dim=1).double()
    return (both / either).numpy()


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with tied values sharing their average rank (as ``scipy.stats.rankdata``)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2)[inverse]


def rank_correlation(cams_a: Tensor, cams_b: Tensor) -> np.ndarray:
    """Spearman rank correlation of two maps of the same image, pixel by pixel, in [-1, 1].

    1: same ordering of the pixels; -1: reversed; 0: unrelated. A constant map has no ordering:
    its correlation is ``nan``.
    """
    cams_a, cams_b = _check(cams_a, cams_b)
    scores = []
    for a, b in zip(cams_a.flatten(1).numpy(), cams_b.flatten(1).numpy(), strict=True):
        ra, rb = _average_ranks(a) - (a.size + 1) / 2, _average_ranks(b) - (b.size + 1) / 2
        denominator = np.sqrt((ra**2).sum() * (rb**2).sum())
        scores.append((ra * rb).sum() / denominator if denominator > 0 else np.nan)
    return np.asarray(scores, dtype=np.float64)


def format_mean_ci(values: np.ndarray, digits: int = 2, seed: int = 0) -> str:
    """``"0.62 (0.58 to 0.66)"``: the mean of per-image scores with its 95 % bootstrap interval."""
    values = np.asarray(values, dtype=np.float64)
    return format_interval(values.mean(), *bootstrap_ci(values, seed=seed), digits=digits)


def _label(arch: str) -> str:
    """``"ResNet-50"`` for ``"resnet50"``; any other name as it is."""
    return ARCHITECTURES[arch].label if arch in ARCHITECTURES else arch


def compare_row(
    scores: Mapping[str, np.ndarray],
    baselines: Mapping[str, np.ndarray] | None = None,
    digits: int = 2,
) -> dict[str, str]:
    """One table row: each network's mean score (95 % CI), their paired difference, baselines.

    ``scores`` maps two architectures (e.g. ``resnet50``, ``resnet101``) to per-image scores on
    the same images; ``baselines`` maps a baseline's name to its per-image scores there. The
    difference is the *second* network minus the first, in a column named so (e.g.
    ``"ResNet-101 - ResNet-50"``), followed by its verdict: ``"+0.20 (+0.19 to +0.21): ResNet-101
    higher"``, or ``...: no detectable difference`` when the interval contains 0.
    """
    (arch_a, a), (arch_b, b) = scores.items()
    label_a, label_b = _label(arch_a), _label(arch_b)
    row = {label_a: format_mean_ci(a, digits), label_b: format_mean_ci(b, digits)}
    diff = paired_difference(b, a)
    row[f"{label_b} - {label_a}"] = diff.summary(label_b, label_a, digits)
    for name, values in (baselines or {}).items():
        row[name] = format_mean_ci(values, digits)
    row["images"] = str(len(a))
    return row

"""Self-checks for the notebooks' exercises: is the learner's answer right?

One function per checkable answer. Each prints one line and returns ``True`` (right), ``False``
(wrong, with what is wrong) or ``None`` (blank: the answer is still ``None``). None of them
raises on a wrong answer, so a learner's notebook keeps running. They print, unlike the rest of
the package, because the line is the learner's feedback; the reference values are computed here,
from the data or from torchvision, never typed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import numpy as np
import torchvision
from torch import nn

from course_utils import cost, models
from course_utils.data import CLASSES, SPLITS, bundled_records
from course_utils.data.bundled import default_bundled_root, read_index
from course_utils.data.dataset import load_pet_mask

SHARE_TOLERANCE = 0.005  # a pet share given to two decimals is within this of the true value
RATIO_TOLERANCE = 0.01
GMACS_TOLERANCE = 5e-4  # torchvision's "_ops" has three decimals
RESNET152_BLOCKS = (3, 8, 36, 3)
RESNET152_WEIGHTS = torchvision.models.ResNet152_Weights.IMAGENET1K_V2


def _report(
    exercise: int, answer: object, hint: str, problem: str | None, right: str
) -> bool | None:
    """Print the one line of a check; ``problem`` is ``None`` when the answer is right."""
    if answer is None:
        print(f"exercise {exercise}: not answered yet ({hint})")
        return None
    if problem is None:
        print(f"exercise {exercise}: correct, {right}")
        return True
    print(f"exercise {exercise}: not right yet: {problem}")
    return False


def _close(answer: object, expected: float, tolerance: float) -> bool:
    """Whether ``answer`` is a number within ``tolerance`` of ``expected``."""
    try:
        value = float(answer)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return math.isfinite(value) and abs(value - expected) <= tolerance + 1e-12


# ------------------------------------------------------------------ notebook 00: pet masks


@functools.cache
def pet_shares() -> dict[str, dict[str, float]]:
    """Mean pet share of the image over every bundled image (all splits), grouped by species
    (``"cat"``, ``"dog"``) and by ``mask_kind`` (``"polygon"``, ``"trimap"``); computed once."""
    kinds = {
        row["image"].split("/")[-1]: row["mask_kind"] for row in read_index(default_bundled_root())
    }
    groups: dict[str, dict[str, list[float]]] = {"species": {}, "mask_kind": {}}
    for split in SPLITS:
        for record in bundled_records(split):
            share = float(load_pet_mask(record).mean())
            groups["species"].setdefault(CLASSES[record.label], []).append(share)
            groups["mask_kind"].setdefault(kinds[record.image_path.name], []).append(share)
    return {by: {k: float(np.mean(v)) for k, v in sorted(g.items())} for by, g in groups.items()}


def _pet_share(
    answer: Mapping[str, float] | None, by: str, exercise: int, name: str
) -> bool | None:
    problem = None
    if answer is not None:
        expected = pet_shares()[by]
        if set(answer) != set(expected):
            problem = f"expected the keys {sorted(expected)}, got {sorted(answer)}"
        else:
            wrong = [k for k in expected if not _close(answer[k], expected[k], SHARE_TOLERANCE)]
            if wrong:
                problem = (
                    f"the mean pet share of {', '.join(wrong)} is off by more than "
                    f"{SHARE_TOLERANCE} (average the share of every image, all splits)"
                )
    return _report(
        exercise, answer, f"set {name} above to check it", problem, f"{name} matches the masks"
    )


def pet_share_per_species(answer: Mapping[str, float] | None, exercise: int = 2) -> bool | None:
    """Notebook 00: ``{"cat": share, "dog": share}``, the mean pet share of the image."""
    return _pet_share(answer, "species", exercise, "share_per_species")


def pet_share_per_mask_kind(answer: Mapping[str, float] | None, exercise: int = 2) -> bool | None:
    """Notebook 00: ``{"polygon": share, "trimap": share}``, the mean pet share of the image."""
    return _pet_share(answer, "mask_kind", exercise, "share_per_mask_kind")


# ------------------------------------------------------------------ notebooks 02 and 03: ResNet-152


def _geometry(net: nn.Module) -> dict[str, tuple[object, ...]]:
    """Kernel, stride and padding of every convolution and pooling layer, by name."""
    return {
        name: (m.kernel_size, m.stride, m.padding)
        for name, m in net.named_modules()
        if isinstance(m, nn.Conv2d | nn.MaxPool2d)
    }


def _load_problem(network: object, reference: nn.Module) -> str | None:
    """Why ``network``'s state_dict does not load strictly into ``reference``, if it does not."""
    if not isinstance(network, nn.Module):
        return f"expected an nn.Module, got {type(network).__name__}"
    try:
        reference.load_state_dict(network.state_dict(), strict=True)
    except RuntimeError as error:
        return f"its state_dict does not load strictly: {str(error).splitlines()[1].strip()}"
    return None


def _geometry_differences(network: nn.Module, reference: nn.Module) -> list[str]:
    """Names of the conv and pool layers whose kernel, stride or padding differ."""
    ours, theirs = _geometry(network), _geometry(reference)
    return [name for name in theirs if ours.get(name) != theirs[name]]


def _resnet152_problem(network: object) -> str | None:
    reference = torchvision.models.resnet152()
    problem = _load_problem(network, reference)
    if problem:
        return problem
    differing = _geometry_differences(network, reference)  # type: ignore[arg-type]
    if differing:
        return f"kernel, stride or padding differ from torchvision's: {', '.join(differing[:3])}"
    return None


def resnet152_network(network: nn.Module | None, exercise: int = 1) -> bool | None:
    """Notebook 02: the learner's ResNet-152 is torchvision's ``resnet152()`` (its state_dict
    loads strictly, so the parameter counts agree, and every layer has the same geometry)."""
    problem = None if network is None else _resnet152_problem(network)
    right = "it loads strictly into torchvision's resnet152 and has its layer geometry"
    return _report(exercise, network, "set resnet152 above to check it", problem, right)


def _v1_problem(network: object) -> str | None:
    reference = torchvision.models.resnet50()
    problem = _load_problem(network, reference)
    if problem:
        return problem
    moved = {f"layer{i}.0.{conv}" for i in (2, 3, 4) for conv in ("conv1", "conv2")}
    if set(_geometry_differences(network, reference)) - moved:  # type: ignore[arg-type]
        return "layers other than conv1 and conv2 of the downsampling blocks differ"
    strides = {name: geometry[1] for name, geometry in _geometry(network).items()}  # type: ignore[arg-type]
    if any(
        strides[f"layer{i}.0.conv1"] != (2, 2) or strides[f"layer{i}.0.conv2"] != (1, 1)
        for i in (2, 3, 4)
    ):
        return "the first block of layer2-layer4 should stride in conv1 (stride 2), not in conv2"
    return None


def resnet50_v1_network(network: nn.Module | None, exercise: int = 2) -> bool | None:
    """Notebook 02: the learner's v1 ResNet-50 loads strictly into torchvision's ResNet-50 and
    differs from it only in where the downsampling blocks stride (``conv1``, not ``conv2``)."""
    problem = None if network is None else _v1_problem(network)
    right = "same weights as torchvision's ResNet-50, the stride moved to conv1"
    return _report(exercise, network, "set resnet50_v1 above to check it", problem, right)


def resnet152_parameters(answer: int | None, exercise: int = 1) -> bool | None:
    """Notebook 03: ResNet-152's parameter count (torchvision's metadata)."""
    expected = RESNET152_WEIGHTS.meta["num_params"]
    problem = None if answer is None or answer == expected else f"{answer} is not the count"
    right = f"{expected:,} parameters, as torchvision's metadata says"
    return _report(exercise, answer, "set parameters_152 above to check it", problem, right)


def resnet152_gmacs(answer: float | None, exercise: int = 1) -> bool | None:
    """Notebook 03: ResNet-152's multiply-accumulates for one 224 px image, in billions."""
    expected = RESNET152_WEIGHTS.meta["_ops"]
    problem = None
    if answer is not None and not _close(answer, expected, GMACS_TOLERANCE):
        problem = f"{answer} GMACs does not round to torchvision's meta['_ops'] (three decimals)"
    right = "it matches torchvision's meta['_ops'] (MACs, not FLOPs)"
    return _report(exercise, answer, "set gmacs_152 above to check it", problem, right)


def resnet152_receptive_field(answer: int | None, exercise: int = 1) -> bool | None:
    """Notebook 03: ResNet-152's theoretical receptive field after ``layer3``, in pixels."""
    problem, right = None, ""
    if answer is not None:
        network = models.ResNet(models.Bottleneck, RESNET152_BLOCKS)
        expected = cost.receptive_field(network)["layer3"].size
        right = f"{expected} px after layer3"
        if answer != expected:
            problem = f"{answer} px is not it (apply r_out = r_in + (k - 1) j_in layer by layer)"
    return _report(exercise, answer, "set receptive_field_152 above to check it", problem, right)


# ------------------------------------------------------------------ notebook 08: a claim


def weight_memory_ratio(answer: float | None, exercise: int = 1) -> bool | None:
    """Notebook 08: how many times ResNet-50's memory ResNet-101's weights take (same dtype)."""
    problem, right = None, ""
    if answer is not None:
        counts = [models.count_parameters(models.build_model(a)) for a in ("resnet101", "resnet50")]
        expected = counts[0] / counts[1]
        right = f"ResNet-101's weights take {expected:.2f} times ResNet-50's memory"
        if not _close(answer, expected, RATIO_TOLERANCE):
            problem = f"{answer} is off by more than {RATIO_TOLERANCE} (count the parameters)"
    return _report(exercise, answer, "set weight_memory_ratio above to check it", problem, right)

"""What a network costs by construction: parameters, FLOPs and receptive field, per stage.

Stages are :data:`course_utils.models.STAGES`: the stem, layer1..layer4 and the head. Everything
here is counted, deterministic and device-independent; measuring time and memory (noisy, and
specific to the machine) is in :mod:`course_utils.timing`.

- :func:`count_macs` / :func:`count_flops` run the model once on PyTorch's ``meta`` device (shapes
  only, no arithmetic, no memory) under :class:`torch.utils.flop_counter.FlopCounterMode`. Only
  convolutions and matrix products are counted; batch norm, ReLU, pooling and the residual
  additions are not (they are a fraction of a percent of the total and memory-bound anyway).
- Conventions: one multiply-accumulate (MAC) is two floating-point operations (FLOPs):
  ``count_flops == 2 * count_macs``. torchvision's weight metadata (``weights.meta["_ops"]``,
  shown as "GFLOPS" in its documentation: 4.089 for ResNet-50, 7.801 for ResNet-101) counts
  **MACs**: its counter counts "only multiplication" per convolution and matrix product
  (``test/common_extended_utils.py`` in pytorch/vision, added in pytorch/vision#6936), at 224 px.
  ``tests/test_cost.py`` checks that our MACs at 224 px round to exactly those numbers.
- :func:`receptive_field` walks the conv and pool layers of the main path and applies
  ``r_out = r_in + (k - 1) * j_in`` and ``j_out = j_in * s`` (``r``: receptive field in input
  pixels, ``j``: cumulative stride or "jump", ``k``: kernel size, ``s``: stride; a dilated kernel
  counts as ``d * (k - 1) + 1``). See Araujo, Norris & Sim, "Computing Receptive Fields of
  Convolutional Neural Networks", Distill 2019.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from course_utils.models import RESIDUAL_STAGES, STAGES

__all__ = [
    "ReceptiveField",
    "count_flops",
    "count_macs",
    "macs_per_stage",
    "parameters_per_stage",
    "receptive_field",
    "receptive_field_trace",
]


def _hw(input_size: tuple[int, int] | int) -> tuple[int, int]:
    """``224`` or ``(224, 224)`` -> ``(224, 224)``."""
    if isinstance(input_size, int):
        return input_size, input_size
    height, width = input_size
    return int(height), int(width)


def _stage_of(child_name: str, seen_body: bool) -> str:
    """Stage of a top-level child of a ResNet: ``stem`` before layer1, ``head`` after layer4."""
    if child_name in RESIDUAL_STAGES:
        return child_name
    return "head" if seen_body else "stem"


def _stage_map(model: nn.Module) -> dict[str, str]:
    """Top-level child name -> stage, in registration order (the order ResNet runs them)."""
    stages, seen_body = {}, False
    for name, _ in model.named_children():
        stages[name] = _stage_of(name, seen_body)
        seen_body = seen_body or name in RESIDUAL_STAGES
    return stages


# --------------------------------------------------------------------------- parameters, FLOPs


def parameters_per_stage(model: nn.Module) -> dict[str, int]:
    """Parameters in each stage (stem, layer1..layer4, head); they sum to the model's total."""
    counts = dict.fromkeys(STAGES, 0)
    for name, stage in _stage_map(model).items():
        counts[stage] += sum(p.numel() for p in getattr(model, name).parameters())
    return counts


def _flop_counts(
    model: nn.Module, input_size: tuple[int, int] | int, batch_size: int
) -> dict[str, int]:
    """FLOPs per module (``""`` for the whole model, else the module's qualified name)."""
    height, width = _hw(input_size)
    # Shapes only: parameters, buffers and input on the meta device; `model` itself is untouched.
    meta_state = {
        name: torch.empty_like(tensor, device="meta")
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]
    }
    images = torch.empty(batch_size, 3, height, width, device="meta")
    counter = FlopCounterMode(display=False, depth=None)
    with counter, torch.no_grad():
        functional_call(model, meta_state, (images,))
    root = type(model).__name__
    counts = {}
    for key, per_op in counter.get_flop_counts().items():
        if key == "Global":
            counts[""] = sum(per_op.values())
        elif key.startswith(root + "."):
            counts[key[len(root) + 1 :]] = sum(per_op.values())
    counts.setdefault("", 0)
    return counts


def count_flops(model: nn.Module, input_size: tuple[int, int] | int, batch_size: int = 1) -> int:
    """Forward-pass FLOPs (2 per multiply-accumulate) of ``model`` on ``batch_size`` RGB images.

    Counted on the meta device (no arithmetic, no memory, any input size in milliseconds);
    convolutions and matrix products only. Divide by 2 for torchvision's "GFLOPS" (MACs).
    """
    return _flop_counts(model, input_size, batch_size)[""]


def count_macs(model: nn.Module, input_size: tuple[int, int] | int, batch_size: int = 1) -> int:
    """Forward-pass multiply-accumulates: the convention of torchvision's ``meta["_ops"]``."""
    return count_flops(model, input_size, batch_size) // 2


def macs_per_stage(
    model: nn.Module, input_size: tuple[int, int] | int, batch_size: int = 1
) -> dict[str, int]:
    """Multiply-accumulates in each stage (stem ... head); they sum to :func:`count_macs`."""
    counts = _flop_counts(model, input_size, batch_size)
    per_stage = dict.fromkeys(STAGES, 0)
    for name, stage in _stage_map(model).items():
        per_stage[stage] += counts.get(name, 0) // 2
    return per_stage


# --------------------------------------------------------------------------- receptive field


class ReceptiveField(NamedTuple):
    """Theoretical receptive field after one layer (or stage), in input pixels."""

    name: str  # qualified name of the layer, e.g. "layer3.22.conv2"
    stage: str  # one of STAGES
    kernel: int
    stride: int
    size: int  # r: side of the square of input pixels that can influence one output value
    jump: int  # j: cumulative stride, input pixels between neighbouring output values


def _square(value: int | tuple[int, ...], what: str, name: str) -> int:
    """The single side of a square kernel/stride/dilation; refuse non-square ones."""
    values = (value,) if isinstance(value, int) else tuple(value)
    if len(set(values)) != 1:
        raise ValueError(f"{name}: non-square {what} {value} is not supported")
    return int(values[0])


def _main_path_layers(
    module: nn.Module, prefix: str, skip: Sequence[str]
) -> list[tuple[str, nn.Module]]:
    """Conv and (non-adaptive) pool layers in registration order, leaving out ``skip`` branches."""
    if isinstance(module, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
        return [(prefix, module)]
    layers = []
    for name, child in module.named_children():
        if name in skip:
            continue
        layers += _main_path_layers(child, f"{prefix}.{name}" if prefix else name, skip)
    return layers


def receptive_field_trace(
    model: nn.Module, skip: Sequence[str] = ("downsample",)
) -> list[ReceptiveField]:
    """Receptive field after every conv/pool layer on the main path of a ResNet, in order.

    ``r_out = r_in + (k - 1) * j_in``, ``j_out = j_in * s``, starting from ``r = j = 1`` (one
    input pixel). Walks the modules in registration order, which for ResNet is the order
    ``forward`` runs them. The shortcut of a residual block (``downsample``: a 1x1 conv, or the
    identity) never reaches further than the 3x3 main path, so the main path sets the receptive
    field and ``skip`` leaves the shortcut out. Global pooling and the fc layer (every output sees
    the whole image) are not included.
    """
    stages = _stage_map(model)
    size, jump, trace = 1, 1, []
    for name, layer in _main_path_layers(model, "", skip):
        kernel = _square(layer.kernel_size, "kernel", name)
        stride = _square(layer.stride, "stride", name)
        dilation = _square(getattr(layer, "dilation", 1), "dilation", name)
        size += dilation * (kernel - 1) * jump
        jump *= stride
        stage = stages[name.split(".")[0]]
        trace.append(ReceptiveField(name, stage, kernel, stride, size, jump))
    return trace


def receptive_field(
    model: nn.Module, skip: Sequence[str] = ("downsample",)
) -> dict[str, ReceptiveField]:
    """Receptive field and cumulative stride at the end of each stage (stem, layer1..layer4)."""
    at_end = {}
    for step in receptive_field_trace(model, skip):
        at_end[step.stage] = step  # the last layer of each stage wins
    return at_end

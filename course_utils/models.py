"""ResNet from scratch, parameter for parameter the same network as torchvision's.

Blocks follow ResNet v1.5 (torchvision's variant: a bottleneck downsamples with its 3x3 conv).
Every parameter and buffer has torchvision's name, so a torchvision ``state_dict`` loads with
``strict=True`` and the outputs agree (``tests/test_models.py`` checks both).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from course_utils.config import display_path
from course_utils.errors import CourseError

__all__ = [
    "ARCHITECTURES",
    "FEATURE_MAP_MODULES",
    "RESIDUAL_STAGES",
    "STAGES",
    "ArchSpec",
    "BasicBlock",
    "Bottleneck",
    "PretrainedWeightsUnavailable",
    "ResNet",
    "build_model",
    "count_parameters",
    "eval_mode",
    "replace_head",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "unwrap_model",
    "with_v1_strides",
]

# A ResNet in stages, in the order ``forward`` runs them: the stem (conv1, bn1, relu, maxpool),
# four stages of residual blocks (the attributes model.layer1 ... model.layer4), the head
# (avgpool, fc).
STAGES: tuple[str, ...] = ("stem", "layer1", "layer2", "layer3", "layer4", "head")
RESIDUAL_STAGES: tuple[str, ...] = STAGES[1:-1]
# The modules whose outputs are the feature maps that end each stage but the head
# (maxpool ends the stem).
FEATURE_MAP_MODULES: tuple[str, ...] = ("maxpool", *RESIDUAL_STAGES)


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    """Projection shortcut (1x1 conv + BN) where the block changes the shape, else None."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs plus a shortcut (ResNet-18/34): ``relu(F(x) + shortcut(x))``."""

    expansion: int = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _shortcut(in_channels, planes * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        """``relu(F(x) + shortcut(x))``."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride: v1.5), 1x1 expand by 4, plus a shortcut (ResNet-50+)."""

    expansion: int = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        """``relu(F(x) + shortcut(x))``."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """Stem, four stages of residual blocks (``layers`` blocks each), global average pool, fc.

    ``zero_init_residual`` starts each block's last BN at weight 0, so every block begins as the
    identity (Goyal et al. 2017).
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: list[int] | tuple[int, ...],
        num_classes: int = 1000,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"ResNet has 4 stages; got {len(layers)} block counts: {layers}")
        # Stem: 224 -> 112 (7x7 conv, stride 2) -> 56 (3x3 max pool, stride 2).
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        # Stages: each after the first halves the resolution and doubles the width.
        e = block.expansion
        self.layer1 = self._make_stage(block, 64, 64, layers[0], stride=1)
        self.layer2 = self._make_stage(block, 64 * e, 128, layers[1], stride=2)
        self.layer3 = self._make_stage(block, 128 * e, 256, layers[2], stride=2)
        self.layer4 = self._make_stage(block, 256 * e, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * e, num_classes)
        self._init_weights(zero_init_residual)

    @staticmethod
    def _make_stage(
        block: type[BasicBlock | Bottleneck],
        in_channels: int,
        planes: int,
        blocks: int,
        stride: int,
    ) -> nn.Sequential:
        """``blocks`` blocks; only the first one strides and changes the channel count."""
        out_channels = planes * block.expansion
        first = block(in_channels, planes, stride)
        return nn.Sequential(first, *(block(out_channels, planes) for _ in range(blocks - 1)))

    def _init_weights(self, zero_init_residual: bool) -> None:
        """torchvision's init: He (fan_out) for convs, BN weight 1 and bias 0, default fc."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)
                elif isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        """Images ``(N, 3, H, W)`` of any size -> class logits ``(N, num_classes)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # stem: 1/4 of the input size
        x = self.layer1(x)  # 1/4
        x = self.layer2(x)  # 1/8
        x = self.layer3(x)  # 1/16
        x = self.layer4(x)  # 1/32
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


class PretrainedWeightsUnavailable(CourseError):
    """torchvision's ImageNet weights could not be downloaded (offline, blocked, corrupt file)."""


@dataclass(frozen=True)
class ArchSpec:
    """One network of the course: its shape, its ImageNet weights and how figures draw it."""

    name: str  # e.g. "resnet50", as torchvision.models names it
    stage_blocks: tuple[int, int, int, int]  # blocks in layer1..layer4 (He et al. 2015, Table 1)
    block: type[BasicBlock | Bottleneck]
    weights: torchvision.models.WeightsEnum  # what pretrained="imagenet" loads
    label: str  # e.g. "ResNet-50", in tables and legends
    color: str  # the same colour for the same network in every figure


ARCHITECTURES: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        ArchSpec(
            "resnet18",
            (2, 2, 2, 2),
            BasicBlock,
            torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
            "ResNet-18",
            "#7f7f7f",  # grey
        ),
        ArchSpec(
            "resnet34",
            (3, 4, 6, 3),
            BasicBlock,
            torchvision.models.ResNet34_Weights.IMAGENET1K_V1,
            "ResNet-34",
            "#9467bd",  # purple
        ),
        ArchSpec(
            "resnet50",
            (3, 4, 6, 3),
            Bottleneck,
            torchvision.models.ResNet50_Weights.IMAGENET1K_V2,
            "ResNet-50",
            "#1f77b4",  # blue
        ),
        ArchSpec(
            "resnet101",
            (3, 4, 23, 3),
            Bottleneck,
            torchvision.models.ResNet101_Weights.IMAGENET1K_V2,
            "ResNet-101",
            "#d62728",  # red
        ),
    )
}


def imagenet_weights_file(arch: str) -> Path:
    """Where torch.hub keeps ``arch``'s ImageNet weights (``$TORCH_HOME/hub/checkpoints/...``).

    The file exists once they were downloaded, or copied there on an offline machine.
    """
    url = ARCHITECTURES[arch].weights.url
    return Path(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def _imagenet_state_dict(spec: ArchSpec) -> dict[str, Tensor]:
    """torchvision's ImageNet weights for ``spec`` (downloaded once, then cached by torch.hub)."""
    weights = spec.weights
    try:
        return weights.get_state_dict(progress=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:  # URLError: OSError
        cached = imagenet_weights_file(spec.name)
        damaged = (  # a hash mismatch, or a truncated file already in the cache
            "\n(If a copy of that file is already in that folder, it is damaged: delete it.)"
            if not isinstance(error, OSError)
            else ""
        )
        raise PretrainedWeightsUnavailable(
            f"Could not get the ImageNet weights for {spec.name} ({weights}) from {weights.url}: "
            f"{type(error).__name__}: {error}\n"
            "This machine seems to be offline, or the download is blocked.\n"
            "Either train from scratch (pretrained=None), which works offline, or download "
            f"{cached.name} elsewhere and copy it into torch.hub's checkpoint folder:"
            f" {display_path(cached.parent)}"
            f"{damaged}"
        ) from error


def _resnet(
    spec: ArchSpec, *, num_classes: int, zero_init_residual: bool, pretrained: str | None
) -> ResNet:
    """Build ``spec``; with ``pretrained="imagenet"`` load ImageNet weights, then fit the head."""
    if pretrained not in (None, "imagenet"):
        raise ValueError(f"pretrained must be None or 'imagenet', got {pretrained!r}")
    if pretrained is None:
        return ResNet(spec.block, spec.stage_blocks, num_classes, zero_init_residual)
    model = ResNet(spec.block, spec.stage_blocks, 1000, zero_init_residual)
    model.load_state_dict(_imagenet_state_dict(spec), strict=True)
    return model if num_classes == 1000 else replace_head(model, num_classes)


def resnet18(**kwargs: Any) -> ResNet:
    """ResNet-18: basic blocks, 2-2-2-2 (see :func:`build_model` for the keywords)."""
    return build_model("resnet18", **kwargs)


def resnet34(**kwargs: Any) -> ResNet:
    """ResNet-34: basic blocks, 3-4-6-3 (see :func:`build_model` for the keywords)."""
    return build_model("resnet34", **kwargs)


def resnet50(**kwargs: Any) -> ResNet:
    """ResNet-50: bottlenecks, 3-4-6-3 (see :func:`build_model` for the keywords)."""
    return build_model("resnet50", **kwargs)


def resnet101(**kwargs: Any) -> ResNet:
    """ResNet-101: bottlenecks, 3-4-23-3 (see :func:`build_model` for the keywords)."""
    return build_model("resnet101", **kwargs)


def build_model(
    arch: str,
    *,
    num_classes: int = 1000,
    zero_init_residual: bool = False,
    pretrained: str | None = None,
) -> ResNet:
    """Build a network by name, e.g. ``build_model("resnet101", num_classes=2)``.

    ``zero_init_residual`` starts the last BatchNorm of every block at 0 (each block starts as
    the identity); ``pretrained="imagenet"`` loads the table's torchvision weights, then fits a
    ``num_classes`` head.
    """
    try:
        spec = ARCHITECTURES[arch]
    except KeyError:
        valid = ", ".join(ARCHITECTURES)
        raise ValueError(f"Unknown architecture {arch!r}. Valid names: {valid}") from None
    return _resnet(
        spec,
        num_classes=num_classes,
        zero_init_residual=zero_init_residual,
        pretrained=pretrained,
    )


def replace_head(model: ResNet, num_classes: int) -> ResNet:
    """Replace ``model.fc`` (in place) by a new ``num_classes``-way Linear; return the model."""
    old = model.fc
    model.fc = nn.Linear(
        old.in_features, num_classes, device=old.weight.device, dtype=old.weight.dtype
    )
    return model


def with_v1_strides(model: ResNet) -> ResNet:
    """Move, in place, the stride of each stage's first bottleneck from its 3x3 conv (v1.5, as
    torchvision builds it) to its first 1x1 conv (v1, He et al. 2015); return the model.

    The weights keep their shapes, so only the arithmetic and the receptive field change: the
    3x3 then runs on the already-subsampled map (fewer MACs) at a larger jump (wider field).
    """
    for stage in RESIDUAL_STAGES[1:]:
        first = getattr(model, stage)[0]
        if not isinstance(first, Bottleneck):
            raise TypeError(f"{stage}[0] is a {type(first).__name__}; v1 strides need Bottleneck")
        first.conv1.stride, first.conv2.stride = first.conv2.stride, (1, 1)
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters in ``model``; with ``trainable_only``, those with ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain network inside a ``torch.compile`` and/or ``DistributedDataParallel`` wrapper."""
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DistributedDataParallel / DataParallel


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block, then restore the train/eval mode of every module.

    Restores each submodule's own flag, so a model whose BatchNorm layers were frozen in eval
    mode inside a training model comes back exactly as it was.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training

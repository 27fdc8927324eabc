"""What a network costs: parameters, FLOPs, receptive field, latency, memory and train-step time.

Counting (deterministic, device-independent):

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

Measuring (depends on the machine, noisy):

- :func:`measure_latency` (inference), :func:`measure_train_step` (forward, cross-entropy,
  backward, SGD step) and :func:`measure_peak_memory` (CUDA only).
- :func:`compare_side_by_side` interleaves the timed repeats of several networks (a, b, a, b, ...)
  so that drift (clock boost, heat, other processes) affects every network alike; compare medians.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from course_utils.models import RESIDUAL_STAGES

__all__ = [
    "STAGES",
    "ReceptiveField",
    "compare_side_by_side",
    "count_flops",
    "count_macs",
    "inference_step",
    "macs_per_stage",
    "measure_latency",
    "measure_peak_memory",
    "measure_train_step",
    "parameters_per_stage",
    "receptive_field",
    "receptive_field_trace",
    "summarize_times",
    "time_interleaved",
    "train_step",
]

# A ResNet in stages: everything before layer1 is the stem, everything after layer4 the head.
STAGES: tuple[str, ...] = ("stem", *RESIDUAL_STAGES, "head")
_BODY_STAGES = RESIDUAL_STAGES


def _hw(input_size: tuple[int, int] | int) -> tuple[int, int]:
    """``224`` or ``(224, 224)`` -> ``(224, 224)``."""
    if isinstance(input_size, int):
        return input_size, input_size
    height, width = input_size
    return int(height), int(width)


def _stage_of(child_name: str, seen_body: bool) -> str:
    """Stage of a top-level child of a ResNet: ``stem`` before layer1, ``head`` after layer4."""
    if child_name in _BODY_STAGES:
        return child_name
    return "head" if seen_body else "stem"


def _stage_map(model: nn.Module) -> dict[str, str]:
    """Top-level child name -> stage, in registration order (the order ResNet runs them)."""
    stages, seen_body = {}, False
    for name, _ in model.named_children():
        stages[name] = _stage_of(name, seen_body)
        seen_body = seen_body or name in _BODY_STAGES
    return stages


# --------------------------------------------------------------------------- parameters, FLOPs


def parameters_per_stage(model: nn.Module) -> dict[str, int]:
    """Parameters in each stage (:data:`STAGES`); the values sum to the model's total."""
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
    """Multiply-accumulates in each stage (:data:`STAGES`); the values sum to :func:`count_macs`."""
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


# --------------------------------------------------------------------------- timing


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _random_images(
    input_size: tuple[int, int] | int, batch_size: int, device: torch.device
) -> torch.Tensor:
    height, width = _hw(input_size)
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch_size, 3, height, width, generator=generator).to(device)


def inference_step(
    model: nn.Module,
    input_size: tuple[int, int] | int,
    batch_size: int,
    device: torch.device | str,
) -> Callable[[], object]:
    """A zero-argument callable running one inference forward pass on a fixed random batch.

    Moves ``model`` to ``device`` and puts it in eval mode (both in place).
    """
    device = torch.device(device)
    model.to(device).eval()
    images = _random_images(input_size, batch_size, device)

    def step() -> object:
        with torch.inference_mode():
            return model(images)

    return step


def train_step(
    model: nn.Module,
    input_size: tuple[int, int] | int,
    batch_size: int,
    device: torch.device | str,
    *,
    lr: float = 0.01,
) -> Callable[[], object]:
    """A zero-argument callable running one training step on a fixed random batch.

    One step = forward, cross-entropy against random labels, backward, SGD (momentum 0.9) update.
    It trains a **copy** of ``model`` on ``device``, so the model passed in keeps its weights.
    """
    device = torch.device(device)
    model = copy.deepcopy(model).to(device).train()
    images = _random_images(input_size, batch_size, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    labels: torch.Tensor | None = None

    def step() -> object:
        nonlocal labels
        optimizer.zero_grad(set_to_none=True)
        logits = model(images)
        if labels is None:  # as many classes as the model has outputs
            generator = torch.Generator().manual_seed(0)
            labels = torch.randint(logits.shape[1], (batch_size,), generator=generator)
            labels = labels.to(device)
        loss = loss_fn(logits, labels)
        loss.backward()
        optimizer.step()
        return loss

    return step


def time_interleaved(
    steps: Mapping[str, Callable[[], object]],
    device: torch.device | str,
    *,
    warmup: int,
    repeats: int,
) -> dict[str, list[float]]:
    """Seconds per call of each step, interleaved: ``warmup`` untimed rounds, then ``repeats``.

    Each round calls every step once, in turn (a, b, a, b, ...); on CUDA the device is
    synchronised before and after each timed call, so a time covers the work, not its launch.
    """
    device = torch.device(device)
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            _synchronize(device)
            start = time.perf_counter()
            step()
            _synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def summarize_times(seconds: Sequence[float], batch_size: int) -> dict[str, object]:
    """Median, 10th and 90th percentile in ms per batch; images/s at the median; raw times.

    ``times_ms`` keeps every timed call in order, so the ratio of two interleaved networks can be
    taken round by round.
    """
    ms = np.asarray(seconds, dtype=float) * 1e3
    median = float(np.median(ms))
    return {
        "median_ms": median,
        "p10_ms": float(np.percentile(ms, 10)),
        "p90_ms": float(np.percentile(ms, 90)),
        "images_per_s": batch_size / (median / 1e3) if median > 0 else math.inf,
        "repeats": len(ms),
        "batch_size": batch_size,
        "times_ms": tuple(float(t) for t in ms),
    }


def measure_latency(
    model: nn.Module,
    input_size: tuple[int, int] | int,
    batch_size: int,
    device: torch.device | str,
    *,
    warmup: int = 3,
    repeats: int = 10,
) -> dict[str, object]:
    """Inference time per batch (eval mode, ``torch.inference_mode``): :func:`summarize_times`."""
    return compare_side_by_side(
        {"model": model},
        inference_step,
        input_size,
        batch_size,
        device,
        warmup=warmup,
        repeats=repeats,
    )["model"]


def measure_train_step(
    model: nn.Module,
    input_size: tuple[int, int] | int,
    batch_size: int,
    device: torch.device | str,
    *,
    warmup: int = 2,
    repeats: int = 5,
) -> dict[str, object]:
    """Time of one training step (see :func:`train_step`), summarised by :func:`summarize_times`."""
    return compare_side_by_side(
        {"model": model},
        train_step,
        input_size,
        batch_size,
        device,
        warmup=warmup,
        repeats=repeats,
    )["model"]


def compare_side_by_side(
    models: Mapping[str, nn.Module],
    step_factory: Callable[..., Callable[[], object]],
    input_size: tuple[int, int] | int,
    batch_size: int,
    device: torch.device | str,
    *,
    warmup: int,
    repeats: int,
) -> dict[str, dict[str, object]]:
    """Time several networks on the same work, interleaved, and summarise each.

    ``step_factory`` is :func:`inference_step`, :func:`train_step` or another factory with their
    signature. Every network is prepared first, then the timed calls
    alternate between networks (see :func:`time_interleaved`), so a slow spell on the machine
    hits all of them alike. Returns ``{name: summarize_times(...)}``.
    """
    device = torch.device(device)
    steps = {
        name: step_factory(model, input_size, batch_size, device) for name, model in models.items()
    }
    times = time_interleaved(steps, device, warmup=warmup, repeats=repeats)
    return {name: summarize_times(seconds, batch_size) for name, seconds in times.items()}


# --------------------------------------------------------------------------- memory


def measure_peak_memory(
    model: nn.Module,
    input_size: tuple[int, int] | int,
    batch_size: int,
    device: torch.device | str,
    *,
    train: bool = False,
) -> int | None:
    """Peak bytes allocated on a CUDA device during one inference pass (or one train step).

    The peak includes what already sits on the device (the weights; for ``train=True`` also the
    copy that :func:`train_step` trains, its gradients and momentum). Measured with
    ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``: tensors PyTorch
    allocates, not the allocator's cache or the CUDA context.

    On a CPU there is no such counter: the process's resident memory mixes in the C allocator's
    cache and everything else the process holds, so a per-call peak cannot be read reliably and
    this returns ``None``.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    factory = train_step if train else inference_step
    step = factory(model, input_size, batch_size, device)
    step()  # warm-up: cuDNN workspaces, lazily created state
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del step
    torch.cuda.empty_cache()
    return int(peak)

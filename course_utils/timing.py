"""What a network costs on this machine: time per inference pass or train step, peak memory.

Measurements are noisy and machine-dependent; counts that are not (parameters, FLOPs, receptive
field) are in :mod:`course_utils.cost`.

- :func:`inference_step` / :func:`train_step` build a zero-argument callable doing one unit of
  work on a fixed random batch; :func:`time_interleaved` times any such callables, round by
  round (a, b, a, b, ...), so that drift (clock boost, heat, other processes) affects every one
  alike; :func:`summarize_times` turns the seconds into medians and percentiles.
- :func:`compare_side_by_side` does all three for several networks; compare the medians.
- :func:`measure_peak_memory`: peak CUDA memory of one inference pass or train step.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "compare_side_by_side",
    "inference_step",
    "measure_peak_memory",
    "summarize_times",
    "time_interleaved",
    "train_step",
]


def _synchronize(device: torch.device) -> None:
    """Wait for the queued CUDA work (CPU work is done when the call returns)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _random_images(
    input_size: tuple[int, int] | int, batch_size: int, device: torch.device
) -> torch.Tensor:
    """A fixed (seeded) batch of random RGB images of side ``input_size`` on ``device``."""
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
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
    autocast: torch.dtype | None = None,
    channels_last: bool = False,
) -> Callable[[], object]:
    """A zero-argument callable running one training step on a fixed random batch.

    One step = forward, cross-entropy against random labels, backward, SGD (momentum 0.9) update.
    It trains a **copy** of ``model`` on ``device``, so the model passed in keeps its weights.
    ``autocast`` (e.g. ``torch.bfloat16``) runs forward and loss in mixed precision, fp16 with a
    gradient scaler; ``channels_last`` stores the copy and the batch in NHWC.
    """
    device = torch.device(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = copy.deepcopy(model).to(device, memory_format=memory_format).train()
    images = _random_images(input_size, batch_size, device).contiguous(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast == torch.float16)
    precision = (
        torch.autocast(device.type, dtype=autocast) if autocast else contextlib.nullcontext()
    )
    loss_fn = nn.CrossEntropyLoss()
    labels: torch.Tensor | None = None

    def step() -> object:
        nonlocal labels
        optimizer.zero_grad(set_to_none=True)
        with precision:
            logits = model(images)
            if labels is None:  # as many classes as the model has outputs
                generator = torch.Generator().manual_seed(0)
                labels = torch.randint(logits.shape[1], (batch_size,), generator=generator)
                labels = labels.to(device)
            loss = loss_fn(logits, labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
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

    Each round calls every step once; the order alternates from one timed round to the next
    (a, b, then b, a, ...: ABBA), so neither step always runs right after the other (warm
    caches, a clock that ramps up). On CUDA the device is synchronized before and after each
    timed call, so a time covers the work, not its launch.
    """
    device = torch.device(device)
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    forward = list(steps.items())
    for round_index in range(repeats):
        for name, step in forward if round_index % 2 == 0 else forward[::-1]:
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
    """Time several networks on the same work, interleaved, and summarize each.

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

"""How a run executes on this machine: device, mixed-precision dtype, memory layout, peak memory.

None of it is part of the :class:`course_utils.recipe.Recipe`: the same recipe names the same
cached run on a CPU and a GPU, and a run can be resumed with another :class:`Runtime`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch

from course_utils.config import get_device
from course_utils.recipe import Recipe, autocast_dtype

# Training steps in NHWC: faster on CUDA, and for both networks on the CPU in notebook 07's
# side-by-side training table; MPS is left in NCHW (not measured).
CHANNELS_LAST_DEVICES = ("cuda", "cpu")


@dataclass(frozen=True)
class Runtime:
    """How a run executes on this machine; not part of the recipe, so not part of a cache key.

    ``autocast`` is the dtype the recipe's AMP policy resolves to on ``device`` (``None``: fp32);
    ``channels_last`` defaults to on for the :data:`CHANNELS_LAST_DEVICES`, where it speeds up
    the convolutions of a training step.
    """

    device: torch.device
    autocast: torch.dtype | None
    channels_last: bool

    @classmethod
    def resolve(
        cls,
        recipe: Recipe,
        device: torch.device | str | None = None,
        channels_last: bool | None = None,
    ) -> Runtime:
        device = torch.device(device) if device is not None else get_device()
        if channels_last is None:
            channels_last = device.type in CHANNELS_LAST_DEVICES
        return cls(device, autocast_dtype(recipe.amp, device), channels_last)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def describe(self) -> dict[str, Any]:
        """Plain values for the checkpoint: device, autocast dtype, channels-last."""
        autocast = str(self.autocast).removeprefix("torch.") if self.autocast else "off"
        return {
            "device": str(self.device),
            "autocast": autocast,
            "channels_last": self.channels_last,
        }


def peak_memory_measure(device: torch.device) -> str:
    """What ``peak_memory_mb`` in the history measures on ``device``."""
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated during the epoch (tensors only)"
    return "peak resident memory of the whole process since it started (ru_maxrss)"


def peak_memory_mb(device: torch.device) -> float | None:
    """See :func:`peak_memory_measure`; ``None`` where it cannot be read (e.g. Windows CPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes vs kilobytes

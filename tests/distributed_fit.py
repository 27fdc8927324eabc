"""One small training run for ``tests/test_distributed.py``; torchrun launches it as a script.

``torchrun ... tests/distributed_fit.py OUTPUT_DIR`` trains data-parallel; :func:`train`, called
in a single process, is the reference. The network has no BatchNorm and the images no random
augmentation: those are the two things that differ between DDP and a single process by design
(per-process batch statistics and augmentation RNGs), so without them the weights must agree.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from course_utils import distributed
from course_utils.data import make_loader
from course_utils.recipe import Recipe
from course_utils.runtime import Runtime
from course_utils.train import fit

# 26 images in global batches of 8: 3 steps per epoch, 2 images dropped (drop_last).
RECIPE = Recipe(arch="resnet18", image_size=32, batch_size=8, epochs=2)  # arch: a label only
CPU = Runtime(torch.device("cpu"), autocast=None, channels_last=False)


class NoNormNet(nn.Module):
    """Conv, ReLU, pool, ``fc``: a network whose output for an image does not depend on the
    rest of its batch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.conv1(x)), 1).flatten(1))


def images(n: int, seed: int) -> TensorDataset:
    """``n`` fixed random 32 px images; class 1 is less red."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(n, 3, 32, 32, generator=generator)
    labels = torch.arange(n) % 2
    pixels[labels == 1, 0] *= 0.5
    return TensorDataset(pixels, labels)


def train(folder: Path) -> None:
    """Train :class:`NoNormNet` into ``folder`` (data-parallel inside a process group)."""
    torch.manual_seed(0)
    model = NoNormNet()
    train_loader = make_loader(images(26, seed=0), RECIPE.batch_size, train=True, num_workers=0)
    val_loader = make_loader(images(10, seed=1), RECIPE.batch_size, train=False, num_workers=0)
    fit(model, train_loader, val_loader, RECIPE, checkpoint_dir=folder, progress=False, runtime=CPU)


if __name__ == "__main__":
    with distributed.process_group(CPU.device):
        train(Path(sys.argv[1]))

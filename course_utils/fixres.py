"""FixRes's remedy for the train/test resolution gap: re-estimate BatchNorm statistics at the test
resolution (Touvron et al., "Fixing the train-test resolution discrepancy", NeurIPS 2019).

A network trained on ``T``-pixel crops and tested at ``s`` pixels sees objects at another
apparent size, and its activations have other means and variances than the ones its BatchNorm
layers stored during training. :func:`recalibrate_batchnorm` keeps every learned weight and
replaces only the running means and variances, estimated on **training** images prepared the
way test images are (centre crop at ``s``), so nothing about the test split is used. Touvron et
al. also fine-tune the classifier; the statistics alone are the cheap part of their remedy.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from course_utils.data import CachedPetDataset
from course_utils.multiscale import size_transform

__all__ = ["recalibrate_batchnorm"]


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, images: CachedPetDataset, size: int, *, batch_size: int = 32
) -> nn.Module:
    """A copy of ``model`` whose BatchNorm statistics are re-estimated on ``images`` at ``size``.

    ``images`` should be training images (e.g. ``multiscale.decode_once`` of the train split),
    centre-cropped at ``size`` as at test time. Each BatchNorm layer's running mean and variance
    are reset and replaced by their plain average over all the batches (``momentum=None``); the
    weights, biases and the original ``model`` are untouched. The copy is returned in eval mode.
    """
    recalibrated = copy.deepcopy(model)
    norms = [m for m in recalibrated.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError("The model has no BatchNorm layer to recalibrate.")
    saved_momentum = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over every batch seen
    recalibrated.train()  # BatchNorm normalises with, and accumulates, each batch's statistics
    device = next(recalibrated.parameters()).device
    transform = size_transform(size)  # centre crop: every input is size x size
    chunks = max(1, math.ceil(len(images) / batch_size))  # near-equal batches: no lone image
    for indices in torch.arange(len(images)).tensor_split(chunks):
        batch = torch.stack([transform(images[i][0]).as_subclass(torch.Tensor) for i in indices])
        recalibrated(batch.to(device))
    for norm, momentum in zip(norms, saved_momentum, strict=True):
        norm.momentum = momentum
    return recalibrated.eval()

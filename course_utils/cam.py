"""Grad-CAM for the course's ResNets: written by hand, and through the grad-cam package.

Grad-CAM (Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391) explains a class score
``y_c`` with the activations ``A`` (``K`` channels, ``h x w``) of one target layer:

- channel weights ``alpha_k = mean_ij  d y_c / d A_kij`` (how much channel ``k`` matters for ``c``),
- heatmap ``L = ReLU(sum_k alpha_k A_k)``, ``h x w``, rescaled to [0, 1] per image, upsampled
  (bilinear) to the input's ``H x W`` and rescaled again, as the grad-cam package does.

:func:`grad_cams` records the target layers' outputs with :func:`course_utils.hooks.capture_outputs`
and differentiates the class score with respect to them (``torch.autograd.grad``), for several
target layers in one pass. The backward pass stops at the target layers: no weight gradients,
so a Grad-CAM costs about one forward pass.
:func:`package_cam` calls the grad-cam package (``pip install grad-cam``) for GradCAM,
GradCAM++ and the gradient-free EigenCAM, always with explicit target layers and in the
package's context-manager form, so that its hooks are released. Scores live in
:mod:`course_utils.cam_scores`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from course_utils.evaluate import Predictions, split_batch
from course_utils.hooks import capture_outputs
from course_utils.models import RESIDUAL_STAGES, eval_mode

# The stages the course explains with Grad-CAM (1/8, 1/16 and 1/32 of the input); not layer1.
CAM_STAGES: tuple[str, ...] = RESIDUAL_STAGES[1:]
BY_HAND = "Grad-CAM (by hand)"
PACKAGE_METHODS: tuple[str, ...] = ("GradCAM", "GradCAM++", "EigenCAM")


def target_layer(model: nn.Module, stage: str = "layer4") -> nn.Module:
    """The last residual block of ``stage`` (``model.layer4[-1]`` for ``"layer4"``).

    Its output is the stage's final feature map: 1/8 of the input size for ``layer2``, 1/16 for
    ``layer3``, 1/32 for ``layer4``.
    """
    if stage not in RESIDUAL_STAGES:
        raise ValueError(f"Unknown stage {stage!r}; choose one of {', '.join(RESIDUAL_STAGES)}.")
    return getattr(model, stage)[-1]


def normalize_cams(cams: Tensor, eps: float = 1e-7) -> Tensor:
    """Rescale each ``(H, W)`` map of ``(N, H, W)`` to [0, 1]: ``(L - min) / (max - min + eps)``.

    The same rescaling as grad-cam's ``scale_cam_image``; a constant map becomes all zeros.
    """
    low = cams.amin(dim=(-2, -1), keepdim=True)
    high = cams.amax(dim=(-2, -1), keepdim=True)
    return (cams - low) / (high - low + eps)


def upsample_cams(cams: Tensor, size: tuple[int, int]) -> Tensor:
    """``(N, h, w)`` maps to ``(N, H, W)``, bilinear (pixel centres, as ``cv2.resize``)."""
    return F.interpolate(cams[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def to_input_size(cams: Tensor, size: tuple[int, int]) -> Tensor:
    """Layer-sized maps ``(N, h, w)`` as ``(N, H, W)`` maps in [0, 1], grad-cam's way.

    Rescale, upsample, rescale again (upsampling can lower the peak). Rescaling first keeps a
    constant map exactly 0 everywhere: upsampled first, float rounding would leave a speckle of
    tiny differences that the rescaling would blow up.
    """
    return normalize_cams(upsample_cams(normalize_cams(cams), size))


def _as_classes(classes: Tensor | Sequence[int] | None, logits: Tensor) -> Tensor:
    """Target class per image: ``classes``, else the predicted class."""
    if classes is None:
        return logits.argmax(dim=1)
    return torch.as_tensor(classes, dtype=torch.long, device=logits.device).view(-1)


@dataclass(frozen=True)
class GradCamOutput:
    """What one :func:`grad_cams` pass gives: a map per target layer and the logits."""

    cams: list[Tensor]  # one (N, H, W) float32 map in [0, 1] per target layer, on the CPU
    logits: Tensor  # (N, C) on the CPU
    classes: Tensor  # (N,) the class each map explains


def grad_cams(
    model: nn.Module,
    images: Tensor,
    target_layers: Sequence[nn.Module],
    classes: Tensor | Sequence[int] | None = None,
) -> GradCamOutput:
    """Grad-CAM of ``classes`` (default: the predicted class) at every layer of ``target_layers``.

    One forward pass records each target layer's output; one backward pass from the summed
    target scores (images do not interact in eval mode) gives the gradients with respect to those
    outputs only. Hooks are removed before returning, also on errors; the model's train/eval mode
    is restored. ``images`` go to the model's device.
    """
    device = next(model.parameters()).device
    layers = {str(i): layer for i, layer in enumerate(target_layers)}
    with eval_mode(model), capture_outputs(layers, detach=False) as outputs, torch.enable_grad():
        logits = model(images.to(device))
        targets = _as_classes(classes, logits)
        score = logits.gather(1, targets[:, None]).sum()
        activations = [outputs[key] for key in layers]
        gradients = torch.autograd.grad(score, activations)
    cams = []
    for acts, grads in zip(activations, gradients, strict=True):
        acts = acts.detach()
        weights = grads.mean(dim=(2, 3), keepdim=True)  # alpha_k: (N, K, 1, 1)
        heat = F.relu((weights * acts).sum(dim=1))  # (N, h, w)
        cams.append(to_input_size(heat, tuple(images.shape[-2:])).float().cpu())
    return GradCamOutput(cams, logits.detach().float().cpu(), targets.cpu())


def grad_cam(
    model: nn.Module,
    images: Tensor,
    layer: nn.Module,
    classes: Tensor | Sequence[int] | None = None,
) -> Tensor:
    """Grad-CAM ``(N, H, W)`` of ``images`` ``(N, 3, H, W)`` at one target layer."""
    return grad_cams(model, images, [layer], classes).cams[0]


def package_cam(
    method: str,
    model: nn.Module,
    images: Tensor,
    layer: nn.Module,
    classes: Tensor | Sequence[int] | None = None,
) -> tuple[Tensor, Tensor]:
    """``(cams, logits)`` from the grad-cam package's ``method`` (see :data:`PACKAGE_METHODS`).

    ``cams`` is ``(N, H, W)`` in [0, 1] on the CPU; ``classes`` defaults to the predicted class
    (EigenCAM ignores it: it is the first principal component of the activations, whose sign
    is arbitrary). The package runs on the model's device, leaves the model in eval mode and its
    hooks are released when the ``with`` block ends; the weight gradients its full backward pass
    accumulates are cleared here.
    """
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    methods = {"GradCAM": GradCAM, "GradCAM++": GradCAMPlusPlus, "EigenCAM": EigenCAM}
    if method not in methods:
        raise ValueError(f"Unknown method {method!r}; choose one of {', '.join(methods)}.")
    targets = None if classes is None else [ClassifierOutputTarget(int(c)) for c in classes]
    with methods[method](model=model, target_layers=[layer]) as cam:
        maps = cam(input_tensor=images, targets=targets)
        logits = cam.outputs.detach().float().cpu()
    model.zero_grad(set_to_none=True)
    return torch.from_numpy(np.asarray(maps, dtype=np.float32)), logits


@dataclass(frozen=True, kw_only=True)
class CamRun(Predictions):
    """CAMs of one network over a data set with masks, in the data set's order, with its
    predictions (``logits``, ``labels``, ``predicted``, ``confidence``, ``correct``)."""

    cams: dict[str, Tensor]  # stage -> (N, H, W) in [0, 1]
    masks: Tensor  # (N, H, W) uint8, 1 = pet


def cams_for_dataset(
    model: nn.Module,
    dataset: Dataset,
    stages: Sequence[str] = ("layer4",),
    method: str = BY_HAND,
    batch_size: int = 16,
) -> CamRun:
    """Run ``method`` (:data:`BY_HAND` or one of :data:`PACKAGE_METHODS`) over ``dataset``.

    ``dataset`` yields dicts with ``image``, ``label`` and ``mask`` (``PetDataset(...,
    with_mask=True)``). Each map explains the network's predicted class. By hand, all ``stages``
    come from one pass per batch; the package needs one pass per stage.
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    cams: dict[str, list[Tensor]] = {stage: [] for stage in stages}
    logits, labels, masks = [], [], []
    layers = [target_layer(model, stage) for stage in stages]
    for batch in loader:
        images, targets = split_batch(batch)
        if method == BY_HAND:
            out = grad_cams(model, images, layers)
            maps, batch_logits = out.cams, out.logits
        else:
            maps = []
            for layer in layers:
                layer_maps, batch_logits = package_cam(method, model, images, layer)
                maps.append(layer_maps)
        for stage, layer_maps in zip(stages, maps, strict=True):
            cams[stage].append(layer_maps)
        logits.append(batch_logits)
        labels.append(torch.as_tensor(targets).long())
        masks.append(batch["mask"])
    return CamRun(
        logits=torch.cat(logits),
        labels=torch.cat(labels),
        cams={stage: torch.cat(parts) for stage, parts in cams.items()},
        masks=torch.cat(masks),
    )


__all__ = [
    "BY_HAND",
    "CAM_STAGES",
    "PACKAGE_METHODS",
    "CamRun",
    "GradCamOutput",
    "cams_for_dataset",
    "grad_cam",
    "grad_cams",
    "normalize_cams",
    "package_cam",
    "target_layer",
    "to_input_size",
    "upsample_cams",
]

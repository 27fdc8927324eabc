"""The training recipe: every choice that changes what a run learns, and the factories it drives.

A :class:`Recipe` is frozen and JSON-stable: :mod:`course_utils.zoo` hashes it to name a cached
run, and every checkpoint stores it. What only changes *how fast* a run goes on a machine (the
device, the resolved mixed-precision dtype, channels-last memory, loader workers) is not part of
the recipe: :class:`course_utils.runtime.Runtime` resolves it when a run starts, so the same recipe
names the same run on a CPU and a GPU, and a run can be resumed on another device.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from course_utils import models
from course_utils.config import Profile
from course_utils.data.transforms import TRAIN_CROP_SCALE

Regime = Literal["scratch", "imagenet"]
OptimizerName = Literal["adamw", "sgd"]
Schedule = Literal["onecycle", "cosine"]
# The mixed-precision *policy*. "auto": bf16 on a GPU that supports it, else fp16 with a gradient
# scaler; mixed precision is always off on the CPU (see autocast_dtype).
AmpPolicy = Literal["auto", "bf16", "fp16", "off"]

REGIMES: tuple[str, ...] = get_args(Regime)
SCHEDULES: tuple[str, ...] = get_args(Schedule)
AMP_POLICIES: tuple[str, ...] = get_args(AmpPolicy)
# Per optimiser: (max learning rate, weight decay) used when the recipe leaves them as None.
OPTIMIZER_DEFAULTS: dict[str, tuple[float, float]] = {"adamw": (2e-3, 0.05), "sgd": (0.05, 5e-4)}
SGD_MOMENTUM = 0.9
# imagenet regime: the first quarter of the epochs trains the new head only; then every layer
# trains, the pretrained backbone at a tenth of the head's learning rate.
HEAD_ONLY_FRACTION = 0.25
BACKBONE_LR_FACTOR = 0.1
# Fields added after runs were cached: to_dict leaves each out while it has this value, so the
# recipes that do not use it keep their dict, their hash and their cache folder.
LATER_FIELDS: dict[str, Any] = {"breed_balanced": False}


@dataclass(frozen=True)
class Recipe:
    """Every choice that shapes what a training run learns; stored in each checkpoint as a dict.

    ``lr`` is the maximum learning rate of the schedule and, like ``weight_decay``, defaults to
    the optimiser's entry in :data:`OPTIMIZER_DEFAULTS` when left as ``None`` (AdamW: 2e-3 and
    0.05). ``warmup_fraction`` is one-cycle's ``pct_start``, or the linear warm-up share of the
    cosine schedule. ``amp`` is the mixed-precision policy (:data:`AmpPolicy`). Weight decay
    skips BatchNorm weights and every bias (1-D parameters), as is common practice (e.g.
    Goyal et al. 2017, timm), unless ``decay_norm_and_bias``: shrinking a zero-initialised
    BatchNorm gamma towards 0 only fights ``zero_init_residual``. ``breed_balanced`` draws each
    epoch's training images with replacement, each weighted by 1 / its breed's count in the
    train split, so every breed is drawn equally often on average (notebook 04's rare breeds).
    """

    arch: str
    regime: Regime = "scratch"
    image_size: int = 128
    batch_size: int = 32
    epochs: int = 24
    optimizer: OptimizerName = "adamw"
    lr: float | None = None
    weight_decay: float | None = None
    schedule: Schedule = "onecycle"
    warmup_fraction: float = 0.25
    label_smoothing: float = 0.1
    crop_scale: tuple[float, float] = TRAIN_CROP_SCALE  # RandomResizedCrop's share of the area
    amp: AmpPolicy = "auto"
    grad_clip: float | None = None
    seed: int = 0
    num_classes: int = 2
    zero_init_residual: bool = True
    decay_norm_and_bias: bool = False  # weight decay on BatchNorm weights and biases too?
    breed_balanced: bool = False  # sample training images per breed, not per image?

    def __post_init__(self) -> None:
        for name, value, valid in (
            ("regime", self.regime, REGIMES),
            ("optimizer", self.optimizer, tuple(OPTIMIZER_DEFAULTS)),
            ("schedule", self.schedule, SCHEDULES),
            ("amp", self.amp, AMP_POLICIES),
        ):
            if value not in valid:
                raise ValueError(f"{name} must be one of {', '.join(valid)}; got {value!r}.")
        if self.epochs < 1 or self.batch_size < 1 or self.image_size < 1:
            raise ValueError("epochs, batch_size and image_size must be positive.")
        object.__setattr__(self, "crop_scale", tuple(self.crop_scale))  # a list from JSON
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(
                f"crop_scale must be (low, high) with 0 < low <= high <= 1; got {self.crop_scale}."
            )
        if not 0 < self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must lie in (0, 1); got {self.warmup_fraction}.")
        default_lr, default_wd = OPTIMIZER_DEFAULTS[self.optimizer]
        if self.lr is None:
            object.__setattr__(self, "lr", default_lr)
        if self.weight_decay is None:
            object.__setattr__(self, "weight_decay", default_wd)

    @classmethod
    def from_profile(
        cls, profile: Profile, arch: str, regime: Regime = "scratch", **overrides: Any
    ) -> Recipe:
        """The course recipe at ``profile``'s size: image size, batch size and epochs from the
        profile; AdamW + one-cycle (max LR 2e-3), label smoothing 0.1; ``zero_init_residual``
        for scratch training. ``overrides`` win."""
        values: dict[str, Any] = {
            "arch": arch,
            "regime": regime,
            "image_size": profile.image_size,
            "batch_size": profile.batch_size,
            "epochs": profile.epochs,
            "zero_init_residual": regime == "scratch",
        }
        return cls(**{**values, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """The recipe as a plain, JSON-stable dict (what checkpoints store and compare); a
        :data:`LATER_FIELDS` entry at its default is left out."""
        values = {**dataclasses.asdict(self), "crop_scale": list(self.crop_scale)}
        return {k: v for k, v in values.items() if k not in LATER_FIELDS or v != LATER_FIELDS[k]}

    def changes_from(self, stored: dict[str, Any]) -> list[str]:
        """``"field: stored -> self"`` for every field where ``stored`` (a dict) differs."""
        mine, theirs = {**LATER_FIELDS, **self.to_dict()}, {**LATER_FIELDS, **stored}
        return [f"{k}: {theirs.get(k)!r} -> {v!r}" for k, v in mine.items() if theirs.get(k) != v]

    def summary(self) -> str:
        """One line: ``resnet50 scratch, 128 px, 24 epochs, batch 32, adamw lr 0.002 ...``."""
        clip = f", grad clip {self.grad_clip}" if self.grad_clip is not None else ""
        balanced = ", breed-balanced sampling" if self.breed_balanced else ""
        epochs = f"{self.epochs} epoch" + ("" if self.epochs == 1 else "s")
        return (
            f"{self.arch} {self.regime}, {self.image_size} px, {epochs}, "
            f"batch {self.batch_size}, {self.optimizer} lr {self.lr:g} wd {self.weight_decay:g} "
            f"{self.schedule}, label smoothing {self.label_smoothing:g}, "
            f"crop scale {self.crop_scale[0]:g}-{self.crop_scale[1]:g}, amp {self.amp}{clip}"
            f"{balanced}, seed {self.seed}"
        )


def build_model_for(recipe: Recipe) -> nn.Module:
    """The untrained network of ``recipe``: from scratch, or (``imagenet`` regime) torchvision's
    ImageNet weights with a new ``num_classes`` head.

    Offline, the ``imagenet`` regime raises ``models.PretrainedWeightsUnavailable``, whose message
    says why; nothing is substituted silently.
    """
    return models.build_model(
        recipe.arch,
        num_classes=recipe.num_classes,
        zero_init_residual=recipe.zero_init_residual,
        pretrained="imagenet" if recipe.regime == "imagenet" else None,
    )


def head_only_epochs(recipe: Recipe) -> int:
    """Epochs that train only the head: a quarter of them in the ``imagenet`` regime, else 0."""
    return int(recipe.epochs * HEAD_ONLY_FRACTION) if recipe.regime == "imagenet" else 0


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov momentum 0.9); weight decay only on weight matrices and kernels.

    Parameter groups: ``decay`` (conv and linear weights) and ``no_decay`` (BatchNorm weights and
    every bias, at weight decay 0, unless ``recipe.decay_norm_and_bias``); in the ``imagenet``
    regime each exists for the backbone at ``lr * BACKBONE_LR_FACTOR`` and for the head
    (``fc``) at ``lr``. Each group's ``name`` says which it is.
    """
    net = models.unwrap_model(model)
    lr = float(recipe.lr)  # filled in by __post_init__
    groups: dict[str, dict[str, Any]] = {}
    for name, parameter in net.named_parameters():
        in_head = recipe.regime == "imagenet" and name.startswith("fc.")
        part = "head" if in_head else "backbone"
        decays = parameter.ndim > 1 or recipe.decay_norm_and_bias
        key = f"{part} {'decay' if decays else 'no_decay'}"
        group = groups.setdefault(
            key,
            {
                "name": key,
                "params": [],
                "lr": lr * BACKBONE_LR_FACTOR
                if recipe.regime == "imagenet" and not in_head
                else lr,
                "weight_decay": recipe.weight_decay if decays else 0.0,
            },
        )
        group["params"].append(parameter)
    param_groups = list(groups.values())
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(
        param_groups, lr=lr, momentum=SGD_MOMENTUM, nesterov=True, weight_decay=recipe.weight_decay
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int
) -> LRScheduler:
    """A per-batch schedule over the whole run.

    ``onecycle``: ``OneCycleLR`` (cosine rise from max/25 over the first ``warmup_fraction`` of
    the steps to each group's LR, then cosine decay to max/25e4; momentum cycles inversely).
    ``cosine``: linear warm-up over ``warmup_fraction`` of the steps, then
    ``lr * (1 + cos(pi * progress)) / 2``, where ``progress`` goes from 0 to 1.
    """
    total = recipe.epochs * steps_per_epoch
    if recipe.schedule == "onecycle":
        max_lr = [group["lr"] for group in optimizer.param_groups]
        pct_start = _onecycle_pct_start(recipe.warmup_fraction, total)
        return OneCycleLR(optimizer, max_lr=max_lr, total_steps=total, pct_start=pct_start)
    warmup = max(1, round(total * recipe.warmup_fraction))

    def warmup_cosine(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, warmup_cosine)


def _onecycle_pct_start(fraction: float, total: int) -> float:
    """``fraction``, stretched on runs of a handful of steps (smoke tests), where OneCycleLR
    would divide by zero: its warm-up must span more than one step and end before the last."""
    if total < 2:
        return fraction
    return min(max(fraction, 1.5 / total), 1 - 0.5 / total)


def autocast_dtype(amp: AmpPolicy | str, device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype the policy ``amp`` resolves to on ``device``; ``None``: fp32.

    Off on the CPU whatever ``amp`` says. ``"auto"``: bf16 where the GPU has it in hardware (no
    scaler needed), else fp16 (with a gradient scaler).
    """
    if amp == "off" or device.type != "cuda":
        return None
    if amp == "auto":
        return torch.bfloat16 if _native_bf16() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def _native_bf16() -> bool:
    """True on GPUs with bf16 in hardware (Ampere and later); False on e.g. a Colab T4, where
    ``torch.cuda.is_bf16_supported()`` says True by default because bf16 can be emulated (slow)."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.3 has no including_emulation, and counts native support only
        return torch.cuda.is_bf16_supported()

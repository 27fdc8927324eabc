"""The training loop: plain PyTorch, one function per step, no framework behind it.

:func:`fit` trains a model for ``cfg.epochs`` epochs. Every epoch it trains (mixed precision and
channels-last on CUDA when asked, optional gradient clipping, one scheduler step per batch),
evaluates on the validation loader, appends a row to the :class:`History`, and writes into
``checkpoint_dir``:

- ``last.pt``: everything needed to resume (model, optimiser, scheduler, grad scaler, epoch,
  history, RNG states), written atomically every epoch;
- ``best.pt``: the weights of the epoch with the best validation accuracy so far;
- ``history.json`` and ``history.csv``: the per-epoch metrics.

An interrupted run continues with ``fit(..., resume=True)`` and ends with the same weights as an
uninterrupted one (bit for bit on the CPU with ``num_workers=0``; ``tests/test_train.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm

from course_utils import models
from course_utils.checkpoints import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    unwrap_model,
    write_atomic,
)
from course_utils.config import Profile, get_device, seed_everything, under_ci
from course_utils.data.transforms import TRAIN_CROP_SCALE
from course_utils.evaluate import predict, split_batch

REGIMES = ("scratch", "imagenet")
SCHEDULES = ("onecycle", "cosine")
AMP_MODES = ("auto", "bf16", "fp16", "off")
# Per optimiser: (max learning rate, weight decay) used when the config leaves them as None.
OPTIMIZER_DEFAULTS: dict[str, tuple[float, float]] = {"adamw": (2e-3, 0.05), "sgd": (0.05, 5e-4)}
SGD_MOMENTUM = 0.9
# imagenet regime: the first quarter of the epochs trains the new head only; then every layer
# trains, the pretrained backbone at a tenth of the head's learning rate.
HEAD_ONLY_FRACTION = 0.25
BACKBONE_LR_FACTOR = 0.1

LAST, BEST = "last.pt", "best.pt"
HISTORY_JSON, HISTORY_CSV = "history.json", "history.csv"


@dataclass(frozen=True)
class TrainConfig:
    """Every choice that shapes a training run; stored in each checkpoint as a plain dict.

    ``lr`` is the maximum learning rate of the schedule and, like ``weight_decay``, defaults to
    the optimiser's entry in :data:`OPTIMIZER_DEFAULTS` when left as ``None`` (AdamW: 2e-3 and
    0.05). ``warmup_fraction`` is one-cycle's ``pct_start``, or the linear warm-up share of the
    cosine schedule. ``amp="auto"`` means bf16 on CUDA when the GPU supports it, else fp16 with
    a gradient scaler; mixed precision is always off on the CPU.
    """

    arch: str
    regime: str = "scratch"
    image_size: int = 128
    batch_size: int = 32
    epochs: int = 24
    optimizer: str = "adamw"
    lr: float | None = None
    weight_decay: float | None = None
    schedule: str = "onecycle"
    warmup_fraction: float = 0.25
    label_smoothing: float = 0.1
    crop_scale: tuple[float, float] = TRAIN_CROP_SCALE  # RandomResizedCrop's share of the area
    amp: str = "auto"
    channels_last: bool = False
    grad_clip: float | None = None
    seed: int = 0
    num_classes: int = 2
    zero_init_residual: bool = True

    def __post_init__(self) -> None:
        for name, value, valid in (
            ("regime", self.regime, REGIMES),
            ("optimizer", self.optimizer, tuple(OPTIMIZER_DEFAULTS)),
            ("schedule", self.schedule, SCHEDULES),
            ("amp", self.amp, AMP_MODES),
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
        cls, profile: Profile, arch: str, regime: str = "scratch", **overrides: Any
    ) -> TrainConfig:
        """The course recipe at ``profile``'s size: image size, batch size and epochs from the
        profile; AdamW + one-cycle (max LR 2e-3), label smoothing 0.1; ``zero_init_residual``
        for scratch training; channels-last when training on CUDA. ``overrides`` win."""
        values: dict[str, Any] = {
            "arch": arch,
            "regime": regime,
            "image_size": profile.image_size,
            "batch_size": profile.batch_size,
            "epochs": profile.epochs,
            "zero_init_residual": regime == "scratch",
            "channels_last": get_device().type == "cuda",
        }
        return cls(**{**values, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain, JSON-stable dict (what checkpoints store and compare)."""
        return {**dataclasses.asdict(self), "crop_scale": list(self.crop_scale)}

    def summary(self) -> str:
        """One line: ``resnet50 scratch, 128 px, 24 epochs, batch 32, adamw lr 0.002 ...``."""
        clip = f", grad clip {self.grad_clip}" if self.grad_clip is not None else ""
        return (
            f"{self.arch} {self.regime}, {self.image_size} px, {_plural(self.epochs, 'epoch')}, "
            f"batch {self.batch_size}, {self.optimizer} lr {self.lr:g} wd {self.weight_decay:g} "
            f"{self.schedule}, label smoothing {self.label_smoothing:g}, "
            f"crop scale {self.crop_scale[0]:g}-{self.crop_scale[1]:g}, amp {self.amp}, "
            f"channels_last {self.channels_last}{clip}, seed {self.seed}"
        )


def _plural(count: int, noun: str) -> str:
    """``"1 epoch"``, ``"24 epochs"``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


@dataclass
class History:
    """Per-epoch metrics of a run, one dict per epoch (see :func:`fit` for the keys)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    memory_measure: str = ""

    def to_frame(self) -> pd.DataFrame:
        """The records as a DataFrame, one row per epoch."""
        return pd.DataFrame(self.records)

    @property
    def best(self) -> dict[str, Any] | None:
        """The record of the epoch with the highest validation accuracy (the first, on ties)."""
        return max(self.records, key=lambda r: r["val_acc"], default=None)

    def save(self, folder: Path) -> None:
        """Write ``history.json`` (records, config, memory measure) and ``history.csv``."""
        payload = {
            "config": self.config,
            "memory_measure": self.memory_measure,
            "epochs": self.records,
        }
        json_bytes = json.dumps(payload, indent=2).encode()
        csv_bytes = self.to_frame().to_csv(index=False).encode()
        write_atomic(folder / HISTORY_JSON, lambda file: file.write(json_bytes))
        write_atomic(folder / HISTORY_CSV, lambda file: file.write(csv_bytes))

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> History:
        """The history stored in a loaded checkpoint (``load_checkpoint``)."""
        return cls(list(state["history"]), state["config"], state.get("memory_measure", ""))


def build_model_for(cfg: TrainConfig) -> nn.Module:
    """The untrained network of ``cfg``: from scratch, or (``imagenet`` regime) torchvision's
    ImageNet weights with a new ``num_classes`` head.

    Offline, the ``imagenet`` regime raises ``models.PretrainedWeightsUnavailable``, whose message
    says why; nothing is substituted silently.
    """
    return models.build_model(
        cfg.arch,
        num_classes=cfg.num_classes,
        zero_init_residual=cfg.zero_init_residual,
        pretrained="imagenet" if cfg.regime == "imagenet" else None,
    )


def head_only_epochs(cfg: TrainConfig) -> int:
    """Epochs that train only the head: a quarter of them in the ``imagenet`` regime, else 0."""
    return int(cfg.epochs * HEAD_ONLY_FRACTION) if cfg.regime == "imagenet" else 0


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov momentum 0.9) over every parameter.

    In the ``imagenet`` regime there are two parameter groups: the backbone at
    ``lr * BACKBONE_LR_FACTOR`` and the head (``fc``) at ``lr``.
    """
    net = unwrap_model(model)
    if cfg.regime == "imagenet":
        head = list(net.fc.parameters())
        head_ids = {id(p) for p in head}
        backbone = [p for p in net.parameters() if id(p) not in head_ids]
        groups = [
            {"params": backbone, "lr": cfg.lr * BACKBONE_LR_FACTOR},
            {"params": head, "lr": cfg.lr},
        ]
    else:
        groups = [{"params": list(net.parameters()), "lr": cfg.lr}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        groups, lr=cfg.lr, momentum=SGD_MOMENTUM, nesterov=True, weight_decay=cfg.weight_decay
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> LRScheduler:
    """A per-batch schedule over the whole run.

    ``onecycle``: ``OneCycleLR`` (cosine rise from max/25 over the first ``warmup_fraction`` of
    the steps to each group's LR, then cosine decay to max/25e4; momentum cycles inversely).
    ``cosine``: linear warm-up over ``warmup_fraction`` of the steps, then
    ``lr * (1 + cos(pi * progress)) / 2``, where ``progress`` goes from 0 to 1.
    """
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        max_lr = [group["lr"] for group in optimizer.param_groups]
        pct_start = _onecycle_pct_start(cfg.warmup_fraction, total)
        return OneCycleLR(optimizer, max_lr=max_lr, total_steps=total, pct_start=pct_start)
    warmup = max(1, round(total * cfg.warmup_fraction))

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


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype for ``amp`` on ``device``; ``None`` means full precision.

    Off on the CPU whatever ``amp`` says. ``"auto"``: bf16 where the GPU supports it (no scaler
    needed), else fp16 (with a gradient scaler).
    """
    if amp == "off" or device.type != "cuda":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def set_loader_epoch(loader: DataLoader, seed: int, epoch: int) -> None:
    """Make the epoch's shuffle and worker seeds depend on ``(seed, epoch)`` only.

    A shuffling loader's sampler gets a generator seeded for this epoch; the loader's own
    generator (which seeds the workers of each epoch) is re-seeded too, and ``sampler.set_epoch``
    is called where it exists (``DistributedSampler``). Persistent workers keep their RNG across
    epochs, so their random augmentations do not restart exactly after a resume.
    """
    epoch_seed = seed * 10_000 + epoch  # distinct for every (seed, epoch < 10,000)
    if loader.generator is not None:
        loader.generator.manual_seed(epoch_seed)
    if isinstance(loader.sampler, RandomSampler):
        loader.sampler.generator = torch.Generator().manual_seed(epoch_seed)
    set_epoch = getattr(loader.sampler, "set_epoch", None)
    if callable(set_epoch):
        set_epoch(epoch)


def _train_only_head(model: nn.Module, cfg: TrainConfig, epoch: int) -> bool:
    """Freeze (or unfreeze) the backbone for ``epoch``; return True while only the head trains."""
    head_only = epoch < head_only_epochs(cfg)
    for name, parameter in unwrap_model(model).named_parameters():
        parameter.requires_grad_(not head_only or name.startswith("fc."))
    return head_only


def _set_train_mode(model: nn.Module, head_only: bool) -> None:
    """Train mode; with a frozen backbone its BatchNorm statistics stay frozen too (eval)."""
    model.train()
    if head_only:
        net = unwrap_model(model)
        net.eval()
        net.fc.train()


def peak_memory_measure(device: torch.device) -> str:
    """What ``peak_memory_mb`` in the history measures on ``device``."""
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated during the epoch (tensors only)"
    return "peak resident memory of the whole process since it started (ru_maxrss)"


def _peak_memory_mb(device: torch.device) -> float | None:
    """See :func:`peak_memory_measure`; ``None`` where it cannot be read (e.g. Windows CPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes vs kilobytes


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    scaler: torch.amp.GradScaler,
    cfg: TrainConfig,
    device: torch.device,
    *,
    show_progress: bool = False,
    description: str = "train",
) -> dict[str, float]:
    """One pass over ``loader``: forward, loss, backward, (clip), step, schedule per batch.

    Returns ``train_loss`` and ``train_acc`` (averaged over the images seen; the loss includes
    label smoothing), ``images_per_s``, ``train_seconds`` and ``data_wait_s`` (the part of it
    spent waiting for the loader: close to ``train_seconds`` means the data is the bottleneck).
    """
    amp = autocast_dtype(cfg.amp, device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen, data_wait = 0, 0.0
    start = ready = time.perf_counter()
    bar = tqdm(loader, desc=description, leave=False, disable=not show_progress, dynamic_ncols=True)
    for step, batch in enumerate(bar):
        data_wait += time.perf_counter() - ready
        images, labels = split_batch(batch)
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
            logits = model(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        seen += labels.numel()
        loss_sum += loss.detach().float() * labels.numel()
        correct += (logits.argmax(dim=1) == labels).sum()
        if show_progress and step % 10 == 0:  # .item() waits for the GPU: not every batch
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        ready = time.perf_counter()
    if seen == 0:
        raise ValueError("The training loader yielded no batches.")
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # count the queued GPU work in the epoch's time
    seconds = time.perf_counter() - start
    return {
        "train_loss": loss_sum.item() / seen,
        "train_acc": correct.item() / seen,
        "images_per_s": seen / seconds,
        "train_seconds": seconds,
        "data_wait_s": data_wait,
    }


@dataclass
class _Run:
    """The objects one training run carries from epoch to epoch."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    scaler: torch.amp.GradScaler
    cfg: TrainConfig
    device: torch.device
    history: History


def _prepare_run_dir(folder: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to write over a trained run unless asked; ``overwrite`` moves it aside."""
    if resume and overwrite:
        raise ValueError("Choose resume=True (continue the run) or overwrite=True, not both.")
    if (folder / LAST).exists() and not resume:
        if not overwrite:
            raise FileExistsError(
                f"{folder} already holds a training run ({LAST}). Pass resume=True to continue "
                f"it, or overwrite=True to move it aside to {folder.name}.bak-<timestamp> and "
                "start afresh."
            )
        backup = folder.with_name(f"{folder.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
        folder.rename(backup)
        print(f"Moved the previous run to {backup}")
    folder.mkdir(parents=True, exist_ok=True)


def _resume(path: Path, run: _Run) -> int:
    """Load ``last.pt`` into the run (weights, optimiser, ..., history, RNGs); return its epoch."""
    cfg = run.cfg
    state = load_checkpoint(path, expected_arch=cfg.arch, expected_num_classes=cfg.num_classes)
    stored = state.get("config", {})
    if stored != cfg.to_dict():
        changed = sorted(k for k, v in cfg.to_dict().items() if stored.get(k) != v)
        raise ValueError(
            f"Cannot resume {path}: it was trained with a different config "
            f"({', '.join(f'{k}: {stored.get(k)!r} -> {getattr(cfg, k)!r}' for k in changed)})."
            " Use the same config, or overwrite=True to start a new run."
        )
    unwrap_model(run.model).load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if state["scaler"]:  # empty when the run had no fp16 scaler
        run.scaler.load_state_dict(state["scaler"])
    run.history.records = list(state["history"])
    restore_rng_state(state["rng"])
    return state["epoch"]


def _run_epoch(
    run: _Run, train_loader: DataLoader, val_loader: DataLoader, epoch: int, bars: bool
) -> dict[str, Any]:
    """Train one epoch, validate, and return the epoch's history record."""
    cfg, device = run.cfg, run.device
    start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    set_loader_epoch(train_loader, cfg.seed, epoch)
    set_loader_epoch(val_loader, cfg.seed, epoch)
    head_only = _train_only_head(run.model, cfg, epoch)
    _set_train_mode(run.model, head_only)
    train_stats = train_one_epoch(
        run.model,
        train_loader,
        run.optimizer,
        run.scheduler,
        run.scaler,
        cfg,
        device,
        show_progress=bars,
        description=f"epoch {epoch + 1}/{cfg.epochs}" + (" (head only)" if head_only else ""),
    )
    val = predict(
        run.model,
        val_loader,
        device,
        autocast_dtype=autocast_dtype(cfg.amp, device),
        channels_last=cfg.channels_last,
    )
    val_loss = F.cross_entropy(val.logits, val.labels, label_smoothing=cfg.label_smoothing)
    return {
        "epoch": epoch + 1,
        **train_stats,
        "val_loss": val_loss.item(),
        "val_acc": float(val.correct.mean()),
        "lr": max(group["lr"] for group in run.optimizer.param_groups),
        "epoch_seconds": time.perf_counter() - start,
        "peak_memory_mb": _peak_memory_mb(device),
    }


def _checkpoint_state(kind: str, run: _Run, meta: dict[str, Any]) -> dict[str, Any]:
    """The part of a checkpoint shared by ``last.pt`` and ``best.pt``."""
    return {
        "kind": kind,
        "arch": run.cfg.arch,
        "num_classes": run.cfg.num_classes,
        "epoch": len(run.history.records),
        "config": run.cfg.to_dict(),
        "model": unwrap_model(run.model).state_dict(),
        "history": run.history.records,
        "memory_measure": run.history.memory_measure,
        "meta": meta,
        "versions": {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__)},
    }


def _save_epoch(folder: Path, run: _Run, meta: dict[str, Any], improved: bool) -> None:
    """Write ``last.pt`` (resumable), ``best.pt`` when val accuracy improved, and the history."""
    last = _checkpoint_state("last", run, meta)
    last.update(
        optimizer=run.optimizer.state_dict(),
        scheduler=run.scheduler.state_dict(),
        scaler=run.scaler.state_dict(),
        rng=capture_rng_state(),
    )
    save_checkpoint(folder / LAST, last)
    if improved:
        save_checkpoint(folder / BEST, _checkpoint_state("best", run, meta))
    run.history.save(folder)


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    """One log line per epoch."""
    return (
        f"epoch {record['epoch']:>3}/{epochs}  "
        f"train loss {record['train_loss']:.3f} acc {record['train_acc']:.1%} | "
        f"val loss {record['val_loss']:.3f} acc {record['val_acc']:.1%} | "
        f"lr {record['lr']:.2e} | {record['images_per_s']:.0f} img/s | "
        f"{record['epoch_seconds']:.1f} s"
    )


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    cfg: TrainConfig,
    *,
    checkpoint_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    device: torch.device | str | None = None,
    meta: dict[str, Any] | None = None,
) -> History:
    """Train ``model`` as ``cfg`` says, checkpointing into ``checkpoint_dir`` every epoch.

    The history has one record per epoch: ``epoch``, ``train_loss``, ``train_acc``, ``val_loss``,
    ``val_acc`` (losses with label smoothing), ``lr`` (the highest group's, after the epoch's last
    step), ``images_per_s`` and ``train_seconds`` (training pass only), ``data_wait_s`` (of which
    waiting for the loader), ``epoch_seconds`` (training and validation, not checkpoint writing)
    and ``peak_memory_mb`` (see ``history.memory_measure``: CUDA tensors, or process RSS on CPU).

    - ``resume=True`` continues from ``last.pt`` (weights, optimiser, scheduler, scaler, history,
      RNG states; the config must be the same); without ``last.pt`` it starts a new run. A fresh
      run seeds every RNG with ``cfg.seed`` first; the model's initial weights are the caller's.
    - An existing run is never overwritten: without ``resume`` it raises ``FileExistsError``
      unless ``overwrite=True``, which moves the old folder to ``<name>.bak-<timestamp>``.
    - ``imagenet`` regime: the first :func:`head_only_epochs` epochs train only ``fc`` (backbone
      frozen, its BatchNorm statistics too); then all layers, the backbone at a tenth of the LR.
    - ``progress``: tqdm bars (notebook-friendly) and one line per epoch; with ``$CI`` set only
      the lines; ``progress=False`` is silent.
    - ``meta`` (plain values: profile, data source, class names...) is stored in every checkpoint.

    Returns the :class:`History`; the model ends on ``device`` (default: ``config.get_device()``)
    with its final-epoch weights.
    """
    folder = Path(checkpoint_dir)
    device = torch.device(device) if device is not None else get_device()
    _prepare_run_dir(folder, resume, overwrite)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg)
    run = _Run(
        model=model,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, cfg, len(train_loader)),
        scaler=torch.amp.GradScaler(
            device.type, enabled=autocast_dtype(cfg.amp, device) == torch.float16
        ),
        cfg=cfg,
        device=device,
        history=History(config=cfg.to_dict(), memory_measure=peak_memory_measure(device)),
    )
    if resume and (folder / LAST).exists():
        start_epoch = _resume(folder / LAST, run)
    else:
        start_epoch = 0
        seed_everything(cfg.seed)
    bars = progress and not under_ci()
    epoch_bar = tqdm(total=cfg.epochs, initial=start_epoch, desc=cfg.arch, disable=not bars)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            previous_best = run.history.best
            record = _run_epoch(run, train_loader, val_loader, epoch, bars)
            run.history.records.append(record)
            improved = previous_best is None or record["val_acc"] > previous_best["val_acc"]
            _save_epoch(folder, run, meta or {}, improved)
            epoch_bar.update()
            if progress:
                tqdm.write(_epoch_line(record, cfg.epochs))
    except KeyboardInterrupt:
        done = len(run.history.records)
        saved = f"{folder / LAST} holds epoch {done}/{cfg.epochs}" if done else "nothing saved"
        print(f"Interrupted: {saved}. Continue with resume=True.")
        raise
    finally:
        epoch_bar.close()
    return run.history

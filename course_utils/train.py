"""The training loop: plain PyTorch, one function per step, no framework behind it.

:func:`fit` trains a model for ``recipe.epochs`` epochs. Every epoch it trains (mixed precision
and channels-last where the :class:`Runtime` says so, optional gradient clipping, one scheduler
step per batch), evaluates on the validation loader, appends a record to the history and saves
the run folder (:class:`course_utils.runs.RunFolder`: ``last.pt``, ``best.pt``, the history).

An interrupted run continues with ``fit(..., resume=True)`` and ends with the same weights as an
uninterrupted one (bit for bit on the CPU with ``num_workers=0``; ``tests/test_train.py``), also
when it is resumed with other runtime settings (another device, channels-last on or off).

Launched by ``torchrun``, with a process group joined (:func:`course_utils.distributed.
process_group`), the same :func:`fit` trains with ``DistributedDataParallel``: the batch size is
the global batch, rank 0 validates and writes the run folder (see :mod:`course_utils.distributed`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader, RandomSampler, WeightedRandomSampler
from tqdm.auto import tqdm

from course_utils import distributed
from course_utils.checkpoints import capture_rng_state, restore_rng_state
from course_utils.config import display_path, progress_bars_off, seed_everything
from course_utils.evaluate import predict, split_batch
from course_utils.models import unwrap_model
from course_utils.recipe import Recipe, head_only_epochs, make_optimizer, make_scheduler
from course_utils.runs import History, ResumableCheckpoint, RunFolder, describe_versions
from course_utils.runtime import Runtime, peak_memory_mb, peak_memory_measure

log = logging.getLogger(__name__)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s shuffle: distinct for every (seed, epoch < 10,000)."""
    return seed * 10_000 + epoch


def set_loader_epoch(loader: DataLoader, seed: int, epoch: int) -> None:
    """Make the epoch's shuffle and worker seeds depend on ``(seed, epoch)`` only.

    A shuffling (or weighted) loader's sampler gets a generator seeded for this epoch; the
    loader's own generator (which seeds the workers of each epoch) is re-seeded too, and
    ``sampler.set_epoch`` is called where it exists (``DistributedSampler``). Persistent workers
    keep their RNG across epochs, so their random augmentations do not restart exactly after a
    resume.
    """
    if loader.generator is not None:
        loader.generator.manual_seed(epoch_seed(seed, epoch))
    if isinstance(loader.sampler, RandomSampler | WeightedRandomSampler):
        loader.sampler.generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    set_epoch = getattr(loader.sampler, "set_epoch", None)
    if callable(set_epoch):
        set_epoch(epoch)


def _train_only_head(model: nn.Module, recipe: Recipe, epoch: int) -> bool:
    """Freeze (or unfreeze) the backbone for ``epoch``; return True while only the head trains."""
    head_only = epoch < head_only_epochs(recipe)
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


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    scaler: torch.amp.GradScaler,
    recipe: Recipe,
    runtime: Runtime,
    *,
    show_progress: bool = False,
    description: str = "train",
    after_step: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """One pass over ``loader``: forward, loss, backward, (clip), step, schedule per batch.

    ``after_step`` is called after every optimiser step with the run's step count so far (the
    scheduler's; fault injection uses it).

    Returns ``train_loss`` and ``train_acc`` (averaged over the images seen; the loss includes
    label smoothing), ``images_per_s``, ``train_seconds`` and ``data_wait_s`` (the part of it
    spent waiting for the loader: close to ``train_seconds`` means the data is the bottleneck).
    """
    device, amp = runtime.device, runtime.autocast
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen, data_wait = 0, 0.0
    start = ready = time.perf_counter()
    bar = tqdm(loader, desc=description, leave=False, disable=not show_progress, dynamic_ncols=True)
    for step, batch in enumerate(bar):
        data_wait += time.perf_counter() - ready
        images, labels = split_batch(batch)
        images = images.to(device, non_blocking=True, memory_format=runtime.memory_format)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
            logits = model(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=recipe.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if recipe.grad_clip is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
            nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if after_step is not None:
            after_step(scheduler.last_epoch)
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
    recipe: Recipe
    runtime: Runtime
    history: History
    launch: distributed.Launch | None  # None: a single process

    def restore(self, state: ResumableCheckpoint) -> int:
        """Load ``last.pt``'s state (weights, optimiser, ..., history, RNGs); return its epoch."""
        unwrap_model(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"] and self.scaler.is_enabled():  # fp16 scaler state, fp16 again
            self.scaler.load_state_dict(state["scaler"])
        self.history.records = list(state["history"])
        restore_rng_state(state["rng"])
        return state["epoch"]

    def checkpoint(self, meta: dict[str, Any]) -> ResumableCheckpoint:
        """``last.pt``'s contents after the epochs recorded so far."""
        return ResumableCheckpoint(
            kind="last",
            arch=self.recipe.arch,
            num_classes=self.recipe.num_classes,
            epoch=len(self.history.records),
            recipe=self.recipe.to_dict(),
            model=unwrap_model(self.model).state_dict(),
            history=self.history.records,
            memory_measure=self.history.memory_measure,
            runtime=self.runtime.describe(),
            meta=meta,
            versions=describe_versions(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(),
            rng=capture_rng_state(),
        )


def _run_epoch(
    run: _Run, train_loader: DataLoader, val_loader: DataLoader, epoch: int, bars: bool
) -> dict[str, Any]:
    """Train one epoch, validate, and return the epoch's history record.

    With several processes each trains its share, rank 0 alone validates, and every process
    returns rank 0's record.
    """
    recipe, runtime, launch = run.recipe, run.runtime, run.launch
    start = time.perf_counter()
    if runtime.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(runtime.device)
    if launch is None:
        set_loader_epoch(train_loader, recipe.seed, epoch)
    else:
        distributed.seed_epoch(train_loader, recipe.seed, epoch, launch.rank)
    set_loader_epoch(val_loader, recipe.seed, epoch)
    head_only = _train_only_head(run.model, recipe, epoch)
    _set_train_mode(run.model, head_only)
    trained = run.model if launch is None else distributed.wrap(run.model, runtime.device)
    train_stats = train_one_epoch(
        trained,
        train_loader,
        run.optimizer,
        run.scheduler,
        run.scaler,
        recipe,
        runtime,
        show_progress=bars,
        description=f"epoch {epoch + 1}/{recipe.epochs}" + (" (head only)" if head_only else ""),
        after_step=None if launch is None else distributed.fault_injector(launch),
    )
    if launch is not None:
        train_stats = distributed.combine_train_stats(train_stats, runtime.device)
        if not launch.is_main:
            return distributed.from_main({})
    val = predict(
        run.model,
        val_loader,
        runtime.device,
        autocast_dtype=runtime.autocast,
        channels_last=runtime.channels_last,
    )
    val_loss = F.cross_entropy(val.logits, val.labels, label_smoothing=recipe.label_smoothing)
    record = {
        "epoch": epoch + 1,
        **train_stats,
        "val_loss": val_loss.item(),
        "val_acc": float(val.correct.mean()),
        "lr": max(group["lr"] for group in run.optimizer.param_groups),
        "epoch_seconds": time.perf_counter() - start,
        "peak_memory_mb": peak_memory_mb(runtime.device),
    }
    return record if launch is None else distributed.from_main(record)


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
    recipe: Recipe,
    *,
    checkpoint_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    runtime: Runtime | None = None,
    meta: dict[str, Any] | None = None,
    sync_batchnorm: bool = False,
) -> History:
    """Train ``model`` as ``recipe`` says, saving the run folder ``checkpoint_dir`` every epoch.

    The history has one record per epoch: ``epoch``, ``train_loss``, ``train_acc``, ``val_loss``,
    ``val_acc`` (losses with label smoothing), ``lr`` (the highest group's, after the epoch's last
    step), ``images_per_s`` and ``train_seconds`` (training pass only), ``data_wait_s`` (of which
    waiting for the loader), ``epoch_seconds`` (training and validation, not checkpoint writing)
    and ``peak_memory_mb`` (see ``history.memory_measure``: CUDA tensors, or process RSS on CPU).

    - ``runtime``: device, autocast dtype and channels-last (default: :meth:`Runtime.resolve`).
    - ``resume=True`` continues from ``last.pt`` (weights, optimiser, scheduler, scaler, history,
      RNG states; the recipe must be the same, the runtime may differ); without ``last.pt`` it
      starts a new run. A fresh run seeds every RNG with ``recipe.seed`` first; the model's
      initial weights are the caller's.
    - An existing run is never overwritten: without ``resume`` it raises ``RunExistsError``
      unless ``overwrite=True``, which moves the old folder to ``<name>.bak-<timestamp>``.
    - ``imagenet`` regime: the first ``head_only_epochs`` epochs train only ``fc`` (backbone
      frozen, its BatchNorm statistics too); then all layers, the backbone at a tenth of the LR.
    - ``progress``: tqdm bars (quiet with ``$CI`` set) and one log line per epoch (logger
      ``course_utils.train``, INFO); ``progress=False`` shows neither.
    - ``meta`` (plain values: profile, data source, class names...) is stored in every checkpoint.
    - In a process group (``torchrun``; :mod:`course_utils.distributed`): data-parallel training,
      ``train_loader``'s batch size being the global batch; rank 0 validates, logs and writes
      (``meta`` gains the launch under ``"distributed"``); every process returns the history.
      ``sync_batchnorm`` (CUDA only) makes BatchNorm normalise over the global batch.

    Returns the :class:`History`; the model ends on the runtime's device with its final weights.
    """
    folder = RunFolder(Path(checkpoint_dir))
    runtime = runtime or Runtime.resolve(recipe)
    if sync_batchnorm:
        model = distributed.sync_batchnorm(model, runtime.device)
    launch = distributed.current()
    main = launch is None or launch.is_main
    if main:
        folder.prepare(resume=resume, overwrite=overwrite)
    if launch is not None:
        distributed.barrier()  # the folder is ready (an old run moved aside) before anyone reads it
        train_loader = distributed.shard_loader(train_loader, launch, epoch_seed(recipe.seed, 0))
        launch_meta = {**launch.describe(), "sync_batchnorm": sync_batchnorm}
        meta = {**(meta or {}), distributed.META_KEY: launch_meta}
        progress = progress and launch.is_main
    model.to(runtime.device, memory_format=runtime.memory_format)
    optimizer = make_optimizer(model, recipe)
    run = _Run(
        model=model,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, recipe, len(train_loader)),
        scaler=torch.amp.GradScaler(runtime.device.type, enabled=runtime.autocast == torch.float16),
        recipe=recipe,
        runtime=runtime,
        history=History(
            recipe=recipe.to_dict(), memory_measure=peak_memory_measure(runtime.device)
        ),
        launch=launch,
    )
    if resume and folder.holds_run():
        start_epoch = run.restore(folder.load_for_resume(recipe))
    else:
        start_epoch = 0
        seed_everything(recipe.seed)
    if launch is not None:
        distributed.check_same_everywhere(start_epoch, "the epoch to start from")
    bars = progress and not progress_bars_off()
    epoch_bar = tqdm(total=recipe.epochs, initial=start_epoch, desc=recipe.arch, disable=not bars)
    try:
        for epoch in range(start_epoch, recipe.epochs):
            previous_best = run.history.best
            record = _run_epoch(run, train_loader, val_loader, epoch, bars)
            run.history.records.append(record)
            improved = previous_best is None or record["val_acc"] > previous_best["val_acc"]
            if main:
                folder.save_epoch(run.checkpoint(meta or {}), run.history, improved=improved)
            if launch is not None:
                distributed.barrier()  # nobody runs ahead (or fails) while rank 0 writes
            epoch_bar.update()
            if progress:
                log.info(_epoch_line(record, recipe.epochs))
    except KeyboardInterrupt:
        done = len(run.history.records)
        last = display_path(folder.last)
        saved = f"{last} holds epoch {done}/{recipe.epochs}" if done else "nothing saved"
        log.warning("Interrupted: %s. Continue with resume=True.", saved)
        raise
    finally:
        epoch_bar.close()
    return run.history

"""Trained networks on demand: :func:`load_or_train` reuses a cached run or trains one.

Every notebook that needs a trained ResNet calls ``load_or_train("resnet50")``, so a notebook
opened alone (e.g. in a fresh Colab runtime) still works: the first call trains at the active
profile and caches the run; later calls load it in seconds.

The cache lives in ``<artifacts>/checkpoints/<arch>-<regime>-<profile>-<hash8>/`` (git-ignored;
``$COURSE_ARTIFACTS_DIR`` moves it, e.g. to a mounted Google Drive folder). ``hash8`` is the
start of the SHA-256 of :func:`cache_key`: the recipe, the data it trains on, and the checkpoint
format. The runtime (device, resolved AMP dtype, channels-last) is not part of it, so a run
started on a GPU is found, and resumed, on a CPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from course_utils.checkpoints import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint
from course_utils.config import (
    Profile,
    artifacts_dir,
    default_num_workers,
    display_path,
    get_profile,
    profile_as_dict,
    seed_everything,
)
from course_utils.data import (
    CLASSES,
    CachedPetDataset,
    PetRecord,
    breed_balanced_weights,
    cache_side_for,
    capped_cache_side,
    dataset_in_use,
    eval_transform,
    get_records,
    make_loader,
    train_transform,
)
from course_utils.recipe import Recipe, Regime, build_model_for
from course_utils.runs import Checkpoint, History, RunFolder, model_from_state
from course_utils.runtime import Runtime
from course_utils.train import fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingData:
    """The train and val records a run trains on, resolved once per call."""

    dataset: str  # as data.dataset_in_use resolved it: "bundled" when the download failed
    train: list[PetRecord]
    val: list[PetRecord]
    sources: dict[str, str]  # split -> a one-line description
    cache_side: int  # shorter side of the decoded in-memory images


def training_data(recipe: Recipe, profile: Profile, dataset: str | None = None) -> TrainingData:
    """Resolve the data set once (in the gpu profile this may download), read the train and val
    records, and choose the decoded-cache side: every crop's full detail
    (``data.cache_side_for``) unless that would not fit the memory budget (then capped, with a
    warning: ``data.capped_cache_side``)."""
    dataset = dataset or dataset_in_use(profile)
    train, train_source = get_records(profile, "train", dataset=dataset)
    val, val_source = get_records(profile, "val", dataset=dataset)
    wanted = cache_side_for(recipe.image_size, recipe.crop_scale)
    side = capped_cache_side(wanted, len(train) + len(val))
    return TrainingData(dataset, train, val, {"train": train_source, "val": val_source}, side)


def cache_key(recipe: Recipe, profile: Profile, data: TrainingData) -> dict[str, Any]:
    """What a cached run must match: the recipe, the data it was trained on (the resolved data
    set, the split cap, the decoded-cache side) and the checkpoint format."""
    return {
        "format": CHECKPOINT_FORMAT,
        "recipe": recipe.to_dict(),
        "data": {
            "profile": profile.name,
            "dataset": data.dataset,
            "max_images_per_split": profile.max_images_per_split,
            "cache_side": data.cache_side,
        },
    }


def run_dir(key: dict[str, Any]) -> Path:
    """The cache folder of a :func:`cache_key`."""
    recipe, data = key["recipe"], key["data"]
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    name = f"{recipe['arch']}-{recipe['regime']}-{data['profile']}-{digest}"
    return artifacts_dir() / "checkpoints" / name


def load_or_train(
    arch: str,
    regime: Regime = "scratch",
    profile: Profile | str | None = None,
    *,
    seed: int = 0,
    progress: bool = True,
    data: TrainingData | None = None,
    **overrides: Any,
) -> tuple[nn.Module, History]:
    """A trained ``arch`` (on ``config.get_device()``, in eval mode) and its training history.

    The recipe is ``Recipe.from_profile(profile, arch, regime, seed=seed, **overrides)``;
    ``profile`` defaults to the active one. A finished cached run of the same recipe and data
    is loaded; an unfinished one is resumed; otherwise the network is trained on the profile's
    train/val split (``data.get_records``) and cached. One log line says which happened.

    The model returned has the final epoch's weights, not ``best.pt``'s: one-cycle ends at a
    tiny learning rate, so the last epoch is the settled one, and choosing the epoch with the
    best validation accuracy would overfit the small validation split. ``best.pt`` is kept in
    the same folder. The ``imagenet`` regime raises ``PretrainedWeightsUnavailable`` offline.
    ``data``: this recipe's :func:`training_data`, from a caller that resolved it already
    (``workshop.pack``, which needs the cache key too); resolved here by default.
    """
    profile = profile if isinstance(profile, Profile) else get_profile(profile)
    recipe = Recipe.from_profile(profile, arch, regime, seed=seed, **overrides)
    data = data or training_data(recipe, profile)
    key = cache_key(recipe, profile, data)
    folder = RunFolder(run_dir(key))
    runtime = Runtime.resolve(recipe)
    if folder.holds_run():
        state: Checkpoint = load_checkpoint(  # type: ignore[assignment]
            folder.last, expected_arch=arch, expected_num_classes=recipe.num_classes
        )
        if state["meta"].get("cache_key") != key:
            raise CheckpointError(
                f"{display_path(folder.last)} was trained with another recipe or data than its "
                "folder name says; move the folder away (or delete it) to train afresh."
            )
        if state["epoch"] >= recipe.epochs:
            history = History.from_checkpoint(state)
            log.info(
                "load_or_train: loaded %s (epoch %d, final val acc %.1f%%, trained on %s)",
                folder.path.name,
                state["epoch"],
                100 * history.records[-1]["val_acc"],
                state["runtime"]["device"],
            )
            return model_from_state(state).to(runtime.device).eval(), history
        log.info(
            "load_or_train: resuming %s after epoch %d/%d",
            folder.path.name,
            state["epoch"],
            recipe.epochs,
        )
    else:
        log.info(
            "load_or_train: no cached run; training %s -> %s", recipe.summary(), folder.path.name
        )
    return train_run(
        recipe, profile, folder.path, data=data, resume=folder.holds_run(), progress=progress
    )


def train_run(
    recipe: Recipe,
    profile: Profile,
    folder: Path,
    *,
    data: TrainingData | None = None,
    runtime: Runtime | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    sync_batchnorm: bool = False,
) -> tuple[nn.Module, History]:
    """Train ``recipe`` on the profile's data into ``folder``; return the model in eval mode.

    ``data`` defaults to :func:`training_data`; ``runtime`` to :meth:`Runtime.resolve`.
    ``resume`` and ``overwrite`` are :func:`course_utils.train.fit`'s (the command line's
    ``--resume`` / ``--force``), and so is ``sync_batchnorm`` (``--sync-bn``).
    """
    data = data or training_data(recipe, profile)
    runtime = runtime or Runtime.resolve(recipe)
    seed_everything(recipe.seed)
    model = build_model_for(
        recipe
    )  # fails here, before any file is written, if weights are missing
    train_set = CachedPetDataset(
        data.train,
        train_transform(recipe.image_size, recipe.crop_scale),
        cache_side=data.cache_side,
    )
    val_set = CachedPetDataset(
        data.val, eval_transform(recipe.image_size), cache_side=data.cache_side
    )
    # From memory, batches cost well under 1 % of a CPU training step: loader workers would only
    # compete with the model for the cores (benchmarks/bench_data_loader.py). On a GPU they help.
    workers = default_num_workers() if runtime.device.type == "cuda" else 0
    meta = {
        "cache_key": cache_key(recipe, profile, data),
        "profile": profile_as_dict(profile),
        "data": data.sources,
        "classes": list(CLASSES),
    }
    if progress:
        for source in data.sources.values():
            log.info("data: %s", source)
    history = fit(
        model,
        make_loader(
            train_set,
            recipe.batch_size,
            train=True,
            seed=recipe.seed,
            num_workers=workers,
            weights=breed_balanced_weights(data.train) if recipe.breed_balanced else None,
        ),
        make_loader(val_set, recipe.batch_size, train=False, seed=recipe.seed, num_workers=workers),
        recipe,
        checkpoint_dir=folder,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        runtime=runtime,
        meta=meta,
        sync_batchnorm=sync_batchnorm,
    )
    return model.eval(), history

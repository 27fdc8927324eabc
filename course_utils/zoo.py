"""Trained networks on demand: :func:`load_or_train` reuses a cached checkpoint or trains one.

Every notebook that needs a trained ResNet calls ``load_or_train("resnet50")``, so a notebook
opened alone (e.g. in a fresh Colab runtime) still works: the first call trains at the active
profile and caches the run; later calls load it in seconds.

The cache lives in ``<artifacts>/checkpoints/<arch>-<regime>-<profile>-<hash8>/`` (git-ignored;
``$COURSE_ARTIFACTS_DIR`` moves it, e.g. to a mounted Google Drive folder). ``hash8`` is the
start of the SHA-256 of :func:`cache_key`: the training config plus the profile's data fields, so
a different recipe never reuses another recipe's run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from torch import nn

from course_utils.checkpoints import CheckpointError, load_checkpoint, model_from_state
from course_utils.config import (
    Profile,
    artifacts_dir,
    default_num_workers,
    get_device,
    get_profile,
    profile_as_dict,
    seed_everything,
)
from course_utils.data import (
    CLASSES,
    CachedPetDataset,
    cache_side_for,
    dataset_in_use,
    eval_transform,
    get_records,
    make_loader,
    train_transform,
)
from course_utils.train import LAST, History, TrainConfig, build_model_for, fit


def cache_key(cfg: TrainConfig, profile: Profile) -> dict[str, Any]:
    """What a cached run must match: the full config and the profile's data selection."""
    return {
        "config": cfg.to_dict(),
        "profile": {
            "name": profile.name,
            "dataset": dataset_in_use(profile),  # "bundled" when the full set was unavailable
            "max_images_per_split": profile.max_images_per_split,
        },
    }


def run_dir(cfg: TrainConfig, profile: Profile) -> Path:
    """The cache folder of this config at this profile."""
    text = json.dumps(cache_key(cfg, profile), sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return artifacts_dir() / "checkpoints" / f"{cfg.arch}-{cfg.regime}-{profile.name}-{digest}"


def load_or_train(
    arch: str,
    regime: str = "scratch",
    profile: Profile | str | None = None,
    *,
    seed: int = 0,
    progress: bool = True,
    **overrides: Any,
) -> tuple[nn.Module, History]:
    """A trained ``arch`` (on ``config.get_device()``, in eval mode) and its training history.

    The config is ``TrainConfig.from_profile(profile, arch, regime, seed=seed, **overrides)``;
    ``profile`` defaults to the active one. A finished cached run with the same config is
    loaded; an unfinished one is resumed; otherwise the network is trained on the profile's
    train/val split (``data.get_records``) and cached. One line says which happened.

    The model returned has the final epoch's weights, not ``best.pt``'s: one-cycle ends at a
    tiny learning rate, so the last epoch is the settled one, and choosing the epoch with the
    best validation accuracy would overfit the small validation split. ``best.pt`` is kept in
    the same folder. The ``imagenet`` regime raises ``PretrainedWeightsUnavailable`` offline.
    """
    profile = profile if isinstance(profile, Profile) else get_profile(profile)
    cfg = TrainConfig.from_profile(profile, arch, regime, seed=seed, **overrides)
    folder = run_dir(cfg, profile)
    last = folder / LAST
    resume = last.is_file()
    if resume:
        state = load_checkpoint(last, expected_arch=arch, expected_num_classes=cfg.num_classes)
        if state["meta"].get("cache_key") != cache_key(cfg, profile):
            raise CheckpointError(
                f"{last} was trained with another config than its folder name says; move the "
                "folder away (or delete it) to train this config afresh."
            )
        if state["epoch"] >= cfg.epochs:
            history = History.from_checkpoint(state)
            print(
                f"load_or_train: loaded {folder.name} from {last} (epoch {state['epoch']}, "
                f"final val acc {history.records[-1]['val_acc']:.1%}, "
                f"trained on {state['meta'].get('device', '?')})"
            )
            return model_from_state(state).to(get_device()).eval(), history
        print(f"load_or_train: resuming {folder} after epoch {state['epoch']}/{cfg.epochs}")
    else:
        print(f"load_or_train: no cached run; training {cfg.summary()} -> {folder}")
    return train_run(cfg, profile, folder, resume=resume, progress=progress)


def train_run(
    cfg: TrainConfig,
    profile: Profile,
    folder: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[nn.Module, History]:
    """Train ``cfg`` on the profile's data into ``folder``; return the model in eval mode.

    ``resume`` and ``overwrite`` are :func:`fit`'s (the command line's ``--resume``/``--force``).
    """
    seed_everything(cfg.seed)
    model = build_model_for(cfg)  # fails here, before any file is written, if weights are missing
    train_records, source = get_records(profile, "train")
    val_records, val_source = get_records(profile, "val")
    side = cache_side_for(cfg.image_size)  # decoded once, kept in memory at a training size
    train_set = CachedPetDataset(
        train_records, train_transform(cfg.image_size, cfg.crop_scale), cache_side=side
    )
    val_set = CachedPetDataset(val_records, eval_transform(cfg.image_size), cache_side=side)
    device = get_device()
    # From memory, batches cost well under 1 % of a CPU training step: loader workers would only
    # compete with the model for the cores (benchmarks/bench_data_loader.py). On a GPU they help.
    workers = default_num_workers() if device.type == "cuda" else 0
    meta = {
        "cache_key": cache_key(cfg, profile),
        "profile": profile_as_dict(profile),
        "data": {"train": source, "val": val_source},
        "classes": list(CLASSES),
        "device": str(device),
    }
    if progress:
        print(f"data: {source}\ndata: {val_source}")
    history = fit(
        model,
        make_loader(train_set, cfg.batch_size, train=True, seed=cfg.seed, num_workers=workers),
        make_loader(val_set, cfg.batch_size, train=False, seed=cfg.seed, num_workers=workers),
        cfg,
        checkpoint_dir=folder,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        device=device,
        meta=meta,
    )
    return model.eval(), history

"""The training loop, its checkpoints and resume, and load_or_train's cache.

Small on purpose: 32 px images, 16 of them, a few optimiser steps per run.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from course_utils import config, models, train, zoo
from course_utils.checkpoints import load_checkpoint
from course_utils.data import make_loader, train_transform
from course_utils.train import (
    TrainConfig,
    autocast_dtype,
    build_model_for,
    fit,
    make_optimizer,
    make_scheduler,
    set_loader_epoch,
    train_one_epoch,
)

TIMING_KEYS = {"images_per_s", "train_seconds", "data_wait_s", "epoch_seconds", "peak_memory_mb"}


class Pictures(Dataset):
    """``n`` fixed random 40 px images; training draws a random crop, flip and jitter per item."""

    def __init__(self, augment: bool, n: int = 16) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (n, 3, 40, 40), dtype=torch.uint8, generator=generator)
        self.images[n // 2 :, 0] //= 2  # the "dogs" are less red: something to learn
        self.labels = [0] * (n // 2) + [1] * (n - n // 2)
        self.transform = train_transform(32) if augment else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.images[i]
        if self.transform is None:
            return image[:, 4:36, 4:36].float() / 255, self.labels[i]
        return self.transform(image), self.labels[i]


def loaders(n: int = 16, batch_size: int = 8):
    train_set, val_set = Pictures(augment=True, n=n), Pictures(augment=False, n=n)
    train_loader = make_loader(train_set, batch_size, train=True, seed=0, num_workers=0)
    val_loader = make_loader(val_set, batch_size, train=False, num_workers=0)
    return train_loader, val_loader


class TinyNet(nn.Module):
    """A stand-in for a ResNet where the architecture does not matter: conv, BN, pool, ``fc``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def tiny_cfg(**overrides) -> TrainConfig:
    return TrainConfig(
        **{"arch": "resnet18", "image_size": 32, "batch_size": 8, "epochs": 2, **overrides}
    )


def tiny_fit(folder, cfg=None, model=None, **kwargs) -> tuple[nn.Module, train.History]:
    torch.manual_seed(0)
    model = model or TinyNet()
    history = fit(
        model, *loaders(), cfg or tiny_cfg(), checkpoint_dir=folder, device="cpu", **kwargs
    )
    return model, history


@pytest.fixture
def interrupt_after(monkeypatch):
    """``interrupt_after(n)``: the next fit raises KeyboardInterrupt once epoch ``n`` is saved."""

    def arm(epochs: int) -> None:
        save = train._save_epoch

        def save_then_stop(folder, run, meta, improved):
            save(folder, run, meta, improved)
            if len(run.history.records) == epochs:
                monkeypatch.setattr(train, "_save_epoch", save)
                raise KeyboardInterrupt

        monkeypatch.setattr(train, "_save_epoch", save_then_stop)

    return arm


def test_from_profile_is_the_reference_recipe(monkeypatch):
    monkeypatch.setenv(config.DEVICE_ENV, "cpu")
    cfg = TrainConfig.from_profile(config.get_profile("cpu"), "resnet50")
    assert (cfg.image_size, cfg.epochs, cfg.batch_size) == (128, 24, 32)
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.schedule) == (
        "adamw",
        2e-3,
        0.05,
        "onecycle",
    )
    assert cfg.label_smoothing == 0.1 and cfg.zero_init_residual and not cfg.channels_last
    tuned = TrainConfig.from_profile(config.get_profile("cpu"), "resnet50", "imagenet", epochs=3)
    assert tuned.epochs == 3 and not tuned.zero_init_residual
    assert "resnet50 scratch, 128 px, 24 epochs, batch 32, adamw lr 0.002" in cfg.summary()


def test_config_fills_optimizer_defaults_and_rejects_typos():
    sgd = TrainConfig("resnet50", optimizer="sgd")
    assert (sgd.lr, sgd.weight_decay) == train.OPTIMIZER_DEFAULTS["sgd"]
    assert TrainConfig("resnet50", lr=1e-3).lr == 1e-3
    with pytest.raises(ValueError, match="regime must be one of scratch, imagenet"):
        TrainConfig("resnet50", regime="pretrained")
    with pytest.raises(ValueError, match="warmup_fraction"):
        TrainConfig("resnet50", warmup_fraction=1.0)
    with pytest.raises(ValueError, match="crop_scale"):
        TrainConfig("resnet50", crop_scale=(0.5, 0.2))


def test_config_survives_a_json_round_trip():
    cfg = TrainConfig("resnet50", crop_scale=(0.08, 1.0))
    again = TrainConfig(**json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.to_dict() == cfg.to_dict()


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_schedules_warm_up_to_the_max_lr_then_decay(schedule):
    cfg = TrainConfig("resnet18", epochs=4, schedule=schedule, lr=0.01)
    optimizer = make_optimizer(TinyNet(), cfg)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    peak = int(np.argmax(lrs))
    assert lrs[0] < 0.01 / 5 and lrs[-1] < 0.01 / 100
    assert 8 <= peak <= 10 and lrs[peak] == pytest.approx(0.01, rel=0.02)
    assert all(a <= b for a, b in zip(lrs[:peak], lrs[1 : peak + 1], strict=True))
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1 :], strict=False))


def test_mixed_precision_only_on_cuda(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("bf16", cpu) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert autocast_dtype("auto", cuda) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert autocast_dtype("auto", cuda) == torch.bfloat16
    assert autocast_dtype("fp16", cuda) == torch.float16 and autocast_dtype("off", cuda) is None


def test_shuffling_depends_only_on_seed_and_epoch():
    def order(loader, epoch):
        set_loader_epoch(loader, seed=0, epoch=epoch)
        return torch.cat([labels for _, labels in loader]).tolist()

    used, fresh = loaders()[0], loaders()[0]
    first = order(used, 0)
    torch.manual_seed(123)  # neither the global RNG nor the loader's past may matter
    assert order(used, 1) == order(fresh, 1) != first
    assert order(used, 0) == first


def test_the_other_options_train_too(tmp_path):
    """SGD, cosine schedule, channels-last and gradient clipping, in one quick run."""
    cfg = tiny_cfg(optimizer="sgd", schedule="cosine", channels_last=True, grad_clip=1.0)
    _, history = tiny_fit(tmp_path / "run", cfg, progress=False)
    assert all(math.isfinite(r["train_loss"]) for r in history.records)
    assert history.records[-1]["lr"] < cfg.lr / 100


def test_fit_records_history_and_writes_checkpoints(tmp_path, capsys):
    model, history = tiny_fit(tmp_path / "run", progress=True)
    assert [r["epoch"] for r in history.records] == [1, 2]
    record = history.records[-1]
    assert set(record) == {
        "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", *TIMING_KEYS
    }  # fmt: skip
    assert all(math.isfinite(r["train_loss"]) and r["images_per_s"] > 0 for r in history.records)
    assert "ru_maxrss" in history.memory_measure and record["peak_memory_mb"] > 0
    assert "epoch   2/2  train loss" in capsys.readouterr().out
    folder = tmp_path / "run"
    assert {p.name for p in folder.iterdir()} == {
        "last.pt",
        "best.pt",
        "history.json",
        "history.csv",
    }
    saved = json.loads((folder / "history.json").read_text())
    assert saved["epochs"] == history.records and saved["config"] == tiny_cfg().to_dict()
    assert len(pd.read_csv(folder / "history.csv")) == 2
    last = load_checkpoint(folder / "last.pt", expected_arch="resnet18", expected_num_classes=2)
    assert last["epoch"] == 2 and last["history"] == history.records
    assert {"optimizer", "scheduler", "scaler", "rng"} <= set(last)
    for name, tensor in model.state_dict().items():
        assert torch.equal(last["model"][name], tensor)
    best = load_checkpoint(folder / "best.pt")
    assert "optimizer" not in best and best["epoch"] == history.best["epoch"]


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, interrupt_after):
    """ResNet-18, 3 epochs in one go vs 2 epochs, a 'crash', and 1 more epoch after resume.

    4 images in batches of 2 (2 steps per epoch) keep it quick; shuffling, augmentation, BN
    statistics, AdamW moments and the one-cycle position must all carry over exactly.
    """
    cfg = tiny_cfg(epochs=3, batch_size=2)

    def start(folder, resume=False):
        config.seed_everything(cfg.seed)
        model = build_model_for(cfg)
        data = loaders(n=4, batch_size=2)
        history = fit(model, *data, cfg, checkpoint_dir=folder, resume=resume, progress=False)
        return model, history

    straight, straight_history = start(tmp_path / "straight")

    interrupt_after(2)
    with pytest.raises(KeyboardInterrupt):
        start(tmp_path / "resumed")
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["epoch"] == 2
    random.seed(7)  # a new session: other RNG states, other initial weights
    np.random.seed(7)  # noqa: NPY002
    torch.manual_seed(7)
    resumed, resumed_history = start(tmp_path / "resumed", resume=True)

    assert [r["epoch"] for r in resumed_history.records] == [1, 2, 3]
    straight_state, resumed_state = straight.state_dict(), resumed.state_dict()
    assert straight_state.keys() == resumed_state.keys()
    for name, tensor in straight_state.items():
        assert torch.equal(tensor, resumed_state[name]), name
    for a, b in zip(straight_history.records, resumed_history.records, strict=True):
        assert {k: v for k, v in a.items() if k not in TIMING_KEYS} == {
            k: v for k, v in b.items() if k not in TIMING_KEYS
        }


def test_a_finished_run_is_never_overwritten(tmp_path):
    folder = tmp_path / "run"
    tiny_fit(folder, progress=False)
    with pytest.raises(FileExistsError, match="resume=True.*overwrite=True"):
        tiny_fit(folder, progress=False)
    with pytest.raises(ValueError, match="not both"):
        tiny_fit(folder, progress=False, resume=True, overwrite=True)
    before = (folder / "last.pt").read_bytes()
    tiny_fit(folder, progress=False, overwrite=True)
    (backup,) = tmp_path.glob("run.bak-*")
    assert (backup / "last.pt").read_bytes() == before
    assert (folder / "last.pt").is_file()


def test_resume_refuses_a_different_config(tmp_path):
    tiny_fit(tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match=r"different config \(lr: 0.002 -> 0.001\)"):
        tiny_fit(tmp_path / "run", tiny_cfg(lr=1e-3), progress=False, resume=True)


def test_resuming_a_finished_run_only_loads_it(tmp_path):
    model, history = tiny_fit(tmp_path / "run", progress=False)
    again, history_again = tiny_fit(tmp_path / "run", progress=False, resume=True)
    assert history_again.records == history.records
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters(), strict=True)
    )


def test_imagenet_regime_trains_the_head_first_then_everything(tmp_path):
    cfg = tiny_cfg(regime="imagenet", epochs=4, zero_init_residual=False)
    assert train.head_only_epochs(cfg) == 1
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = make_optimizer(model, cfg)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([cfg.lr / 10, cfg.lr])
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch=2)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    train_loader = loaders()[0]

    def epoch(index: int) -> dict[str, torch.Tensor]:
        before = {k: v.clone() for k, v in model.state_dict().items()}
        head_only = train._train_only_head(model, cfg, index)
        train._set_train_mode(model, head_only)
        train_one_epoch(model, train_loader, optimizer, scheduler, scaler, cfg, torch.device("cpu"))
        return {k: not torch.equal(v, before[k]) for k, v in model.state_dict().items()}

    changed = epoch(0)  # head only: backbone weights and BN statistics frozen
    assert changed["fc.weight"] and changed["fc.bias"]
    assert not any(v for k, v in changed.items() if not k.startswith("fc."))
    changed = epoch(1)  # then every layer
    assert changed["conv1.weight"] and changed["bn1.running_mean"] and changed["fc.weight"]


@pytest.fixture
def tiny_profile(tmp_path, monkeypatch) -> config.Profile:
    """A 32 px, 2-epoch profile on 16 bundled images per split; artifacts under ``tmp_path``."""
    monkeypatch.setenv(config.ARTIFACTS_DIR_ENV, str(tmp_path / "artifacts"))
    monkeypatch.setenv(config.DEVICE_ENV, "cpu")
    return config.Profile(
        name="tiny",
        description="tests",
        dataset="bundled",
        image_size=32,
        batch_size=8,
        epochs=2,
        max_images_per_split=16,
        pretrained=False,
        demo_image_size=32,
        demo_depths=(8,),
        demo_steps=1,
    )


def test_load_or_train_trains_resumes_then_loads(
    tiny_profile, tmp_path, capsys, interrupt_after, monkeypatch
):
    """The cache logic on the bundled data; TinyNet stands in for ResNet-18 to keep it quick."""
    monkeypatch.setattr(models, "build_model", lambda arch, **kwargs: TinyNet())
    interrupt_after(1)
    with pytest.raises(KeyboardInterrupt):
        zoo.load_or_train("resnet18", profile=tiny_profile, progress=False)
    assert "no cached run; training resnet18 scratch, 32 px" in capsys.readouterr().out

    trained, history = zoo.load_or_train("resnet18", profile=tiny_profile, progress=False)
    assert "resuming" in capsys.readouterr().out
    assert len(history.records) == 2 and not trained.training

    loaded, loaded_history = zoo.load_or_train("resnet18", profile=tiny_profile, progress=False)
    out = capsys.readouterr().out
    assert (
        out.startswith("load_or_train: loaded resnet18-scratch-tiny-")
        and "(epoch 2, final val acc" in out
    )
    assert loaded_history.records == history.records and not loaded.training
    for name, tensor in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name

    folder = zoo.run_dir(TrainConfig.from_profile(tiny_profile, "resnet18"), tiny_profile)
    assert folder.parent == tmp_path / "artifacts" / "checkpoints"
    meta = load_checkpoint(folder / "best.pt")["meta"]
    assert meta["classes"] == ["cat", "dog"] and "bundled" in meta["data"]["train"]


def test_cache_folder_follows_the_config(tiny_profile):
    cfg = TrainConfig.from_profile(tiny_profile, "resnet50")
    assert zoo.run_dir(cfg, tiny_profile) == zoo.run_dir(cfg, tiny_profile)
    other = TrainConfig.from_profile(tiny_profile, "resnet50", lr=1e-3)
    assert zoo.run_dir(other, tiny_profile) != zoo.run_dir(cfg, tiny_profile)
    wider = TrainConfig.from_profile(tiny_profile, "resnet50", crop_scale=(0.08, 1.0))
    assert zoo.run_dir(wider, tiny_profile) != zoo.run_dir(cfg, tiny_profile)
    assert zoo.run_dir(cfg, tiny_profile).name.startswith("resnet50-scratch-tiny-")


def test_imagenet_regime_offline_says_so_and_writes_nothing(tiny_profile, monkeypatch, tmp_path):
    def offline(arch):
        raise models.PretrainedWeightsUnavailable(f"Could not get the ImageNet weights for {arch}")

    monkeypatch.setattr(models, "_imagenet_state_dict", offline)
    with pytest.raises(models.PretrainedWeightsUnavailable, match="ImageNet weights for resnet50"):
        zoo.load_or_train("resnet50", "imagenet", profile=tiny_profile, progress=False)
    assert not (tmp_path / "artifacts" / "checkpoints").exists()

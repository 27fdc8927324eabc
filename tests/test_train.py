"""The training loop, its run folder and resume (also with other runtime settings).

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
from tiny import TinyNet
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from course_utils import config, data, runs, train
from course_utils.checkpoints import load_checkpoint
from course_utils.data import make_loader, train_transform
from course_utils.recipe import (
    Recipe,
    build_model_for,
    head_only_epochs,
    make_optimizer,
    make_scheduler,
)
from course_utils.runs import RecipeMismatch, RunExistsError
from course_utils.runtime import Runtime
from course_utils.train import fit, set_loader_epoch, train_one_epoch

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


def tiny_cfg(**overrides) -> Recipe:
    return Recipe(
        **{"arch": "resnet18", "image_size": 32, "batch_size": 8, "epochs": 2, **overrides}
    )


CPU = Runtime(torch.device("cpu"), autocast=None, channels_last=False)


def tiny_fit(folder, cfg=None, model=None, **kwargs) -> tuple[nn.Module, runs.History]:
    torch.manual_seed(0)
    model = model or TinyNet()
    kwargs.setdefault("runtime", CPU)
    history = fit(model, *loaders(), cfg or tiny_cfg(), checkpoint_dir=folder, **kwargs)
    return model, history


def test_shuffling_depends_only_on_seed_and_epoch():
    def order(loader, epoch):
        set_loader_epoch(loader, seed=0, epoch=epoch)
        return torch.cat([labels for _, labels in loader]).tolist()

    used, fresh = loaders()[0], loaders()[0]
    first = order(used, 0)
    torch.manual_seed(123)  # neither the global RNG nor the loader's past may matter
    assert order(used, 1) == order(fresh, 1) != first
    assert order(used, 0) == first


def test_breed_balanced_sampling_draws_every_breed_alike_and_follows_seed_and_epoch():
    """On the bundled train split (three breeds hold most images) the weighted loader draws
    each breed about equally often; its draws depend on (seed, epoch) only, like a shuffle."""
    records = data.bundled_records("train")
    breeds = np.array([record.breed for record in records])
    indices = TensorDataset(torch.arange(len(records)))

    def draws(loader, epoch):
        set_loader_epoch(loader, seed=0, epoch=epoch)
        return torch.cat([batch for (batch,) in loader]).numpy()

    weights = data.breed_balanced_weights(records)
    balanced = make_loader(indices, 32, train=True, num_workers=0, weights=weights)
    drawn = np.concatenate([draws(balanced, epoch) for epoch in range(20)])
    shares = pd.Series(breeds[drawn]).value_counts(normalize=True)
    n_breeds = len(set(breeds))
    assert len(shares) == n_breeds and shares.max() < 2 / n_breeds < 3 * shares.min()
    largest = pd.Series(breeds).value_counts(normalize=True).iloc[0]
    assert largest > 5 / n_breeds  # what uniform sampling would draw of the largest breed
    fresh = make_loader(indices, 32, train=True, num_workers=0, weights=weights)
    assert (draws(fresh, 3) == draws(balanced, 3)).all()
    assert not (draws(fresh, 4) == draws(balanced, 3)).all()
    with pytest.raises(ValueError, match="evaluation loader"):
        make_loader(indices, 32, train=False, weights=weights)


def test_the_other_options_take_effect(tmp_path, monkeypatch):
    """SGD, cosine schedule, channels-last and gradient clipping, in one quick run: the clip
    bounds every gradient that reaches the optimiser, and the model sees channels-last input."""
    cfg = tiny_cfg(optimizer="sgd", schedule="cosine", grad_clip=1e-3)
    norms_seen: list[float] = []
    clip = torch.nn.utils.clip_grad_norm_

    def clip_and_record(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        total = clip(parameters, max_norm, *args, **kwargs)
        after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters]))
        norms_seen.append(float(after))
        return total

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_and_record)
    model = TinyNet()
    layouts: list[bool] = []
    model.conv1.register_forward_pre_hook(
        lambda module, args: layouts.append(
            args[0].is_contiguous(memory_format=torch.channels_last)
        )
    )
    runtime = Runtime(torch.device("cpu"), autocast=None, channels_last=True)
    _, history = tiny_fit(tmp_path / "run", cfg, model, runtime=runtime, progress=False)
    assert all(math.isfinite(r["train_loss"]) for r in history.records)
    assert history.records[-1]["lr"] < cfg.lr / 100
    assert len(norms_seen) == 4 and max(norms_seen) <= 1e-3 * 1.01  # 2 epochs x 2 steps
    assert layouts and all(layouts)
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_fit_records_history_and_writes_checkpoints(tmp_path, caplog):
    caplog.set_level("INFO", logger="course_utils")
    model, history = tiny_fit(tmp_path / "run", progress=True)
    assert [r["epoch"] for r in history.records] == [1, 2]
    record = history.records[-1]
    assert set(record) == {
        "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", *TIMING_KEYS
    }  # fmt: skip
    assert all(math.isfinite(r["train_loss"]) and r["images_per_s"] > 0 for r in history.records)
    assert "ru_maxrss" in history.memory_measure and record["peak_memory_mb"] > 0
    assert "epoch   2/2  train loss" in caplog.text
    folder = tmp_path / "run"
    assert {p.name for p in folder.iterdir()} == {
        "last.pt",
        "best.pt",
        "history.json",
        "history.csv",
    }
    saved = json.loads((folder / "history.json").read_text())
    assert saved["epochs"] == history.records and saved["recipe"] == tiny_cfg().to_dict()
    assert len(pd.read_csv(folder / "history.csv")) == 2
    last = load_checkpoint(folder / "last.pt", expected_arch="resnet18", expected_num_classes=2)
    assert last["epoch"] == 2 and last["history"] == history.records
    assert {"optimizer", "scheduler", "scaler", "rng"} <= set(last)
    assert last["runtime"] == {"device": "cpu", "autocast": "off", "channels_last": False}
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
        history = fit(
            model, *data, cfg, checkpoint_dir=folder, resume=resume, progress=False, runtime=CPU
        )
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
    with pytest.raises(RunExistsError, match="resume=True.*overwrite=True"):
        tiny_fit(folder, progress=False)
    with pytest.raises(ValueError, match="not both"):
        tiny_fit(folder, progress=False, resume=True, overwrite=True)
    before = (folder / "last.pt").read_bytes()
    tiny_fit(folder, progress=False, overwrite=True)
    (backup,) = tmp_path.glob("run.bak-*")
    assert (backup / "last.pt").read_bytes() == before
    assert (folder / "last.pt").is_file()


def test_resume_refuses_a_different_recipe(tmp_path):
    tiny_fit(tmp_path / "run", progress=False)
    with pytest.raises(RecipeMismatch, match=r"another recipe \(lr: 0.002 -> 0.001\)"):
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
    assert head_only_epochs(cfg) == 1
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = make_optimizer(model, cfg)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {
        "backbone decay": pytest.approx(cfg.lr / 10),
        "backbone no_decay": pytest.approx(cfg.lr / 10),
        "head decay": cfg.lr,
        "head no_decay": cfg.lr,
    }
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch=2)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    train_loader = loaders()[0]

    def epoch(index: int) -> dict[str, torch.Tensor]:
        before = {k: v.clone() for k, v in model.state_dict().items()}
        head_only = train._train_only_head(model, cfg, index)
        train._set_train_mode(model, head_only)
        train_one_epoch(model, train_loader, optimizer, scheduler, scaler, cfg, CPU)
        return {k: not torch.equal(v, before[k]) for k, v in model.state_dict().items()}

    changed = epoch(0)  # head only: backbone weights and BN statistics frozen
    assert changed["fc.weight"] and changed["fc.bias"]
    assert not any(v for k, v in changed.items() if not k.startswith("fc."))
    changed = epoch(1)  # then every layer
    assert changed["conv1.weight"] and changed["bn1.running_mean"] and changed["fc.weight"]


def test_a_run_resumes_with_other_runtime_settings(tmp_path, interrupt_after):
    """Started without channels-last, resumed with it (as a GPU run resumed on a CPU changes
    device and AMP dtype): the recipe is the same, so resume works and ends at the same weights
    up to float rounding; the checkpoint records the runtime of the epochs written last."""
    cfg = tiny_cfg(epochs=2)
    straight, _ = tiny_fit(tmp_path / "straight", cfg, progress=False)
    interrupt_after(1)
    with pytest.raises(KeyboardInterrupt):
        tiny_fit(tmp_path / "other", cfg, progress=False)
    channels_last = Runtime(torch.device("cpu"), autocast=None, channels_last=True)
    resumed, history = tiny_fit(
        tmp_path / "other", cfg, progress=False, resume=True, runtime=channels_last
    )
    assert [r["epoch"] for r in history.records] == [1, 2]
    for (name, a), b in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5), name
    last = load_checkpoint(tmp_path / "other" / "last.pt")
    assert last["runtime"]["channels_last"] is True


def test_runtime_resolves_device_amp_and_memory_layout(monkeypatch):
    cpu = Runtime.resolve(tiny_cfg(amp="bf16"), "cpu")
    assert (cpu.autocast, cpu.channels_last) == (None, True)  # no mixed precision on the CPU
    assert not Runtime.resolve(tiny_cfg(), "mps").channels_last  # not measured there
    assert not Runtime.resolve(tiny_cfg(), "cpu", channels_last=False).channels_last
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    cuda = Runtime.resolve(tiny_cfg(), "cuda")
    assert (cuda.autocast, cuda.channels_last) == (torch.bfloat16, True)
    assert cuda.describe() == {"device": "cuda", "autocast": "bfloat16", "channels_last": True}
    assert not Runtime.resolve(tiny_cfg(), "cuda", channels_last=False).channels_last

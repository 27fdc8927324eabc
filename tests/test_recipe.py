"""The training recipe: its defaults, validation, JSON form, schedules and AMP policy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from course_utils import config, models
from course_utils.recipe import (
    OPTIMIZER_DEFAULTS,
    Recipe,
    autocast_dtype,
    make_optimizer,
    make_scheduler,
)


def test_from_profile_is_the_reference_recipe():
    cfg = Recipe.from_profile(config.get_profile("cpu"), "resnet50")
    assert (cfg.image_size, cfg.epochs, cfg.batch_size) == (128, 24, 32)
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.schedule) == (
        "adamw",
        2e-3,
        0.05,
        "onecycle",
    )
    assert cfg.label_smoothing == 0.1 and cfg.zero_init_residual
    tuned = Recipe.from_profile(config.get_profile("cpu"), "resnet50", "imagenet", epochs=3)
    assert tuned.epochs == 3 and not tuned.zero_init_residual
    assert "resnet50 scratch, 128 px, 24 epochs, batch 32, adamw lr 0.002" in cfg.summary()


def test_config_fills_optimizer_defaults_and_rejects_typos():
    sgd = Recipe("resnet50", optimizer="sgd")
    assert (sgd.lr, sgd.weight_decay) == OPTIMIZER_DEFAULTS["sgd"]
    assert Recipe("resnet50", lr=1e-3).lr == 1e-3
    with pytest.raises(ValueError, match="regime must be one of scratch, imagenet"):
        Recipe("resnet50", regime="pretrained")
    with pytest.raises(ValueError, match="warmup_fraction"):
        Recipe("resnet50", warmup_fraction=1.0)
    with pytest.raises(ValueError, match="crop_scale"):
        Recipe("resnet50", crop_scale=(0.5, 0.2))


def test_config_survives_a_json_round_trip():
    cfg = Recipe("resnet50", crop_scale=(0.08, 1.0))
    again = Recipe(**json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.to_dict() == cfg.to_dict()


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_schedules_warm_up_to_the_max_lr_then_decay(schedule):
    cfg = Recipe("resnet18", epochs=4, schedule=schedule, lr=0.01)
    optimizer = make_optimizer(nn.Linear(2, 2), cfg)
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


def test_auto_amp_takes_fp16_where_bf16_is_only_emulated(monkeypatch):
    """A Colab T4 (sm_75) emulates bf16: is_bf16_supported() says True by default, but "auto"
    must pick fp16 with a gradient scaler there."""

    def t4(including_emulation: bool = True) -> bool:
        return including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", t4)
    assert autocast_dtype("auto", torch.device("cuda")) == torch.float16
    assert autocast_dtype("bf16", torch.device("cuda")) == torch.bfloat16  # asked for: given


def test_the_recipe_holds_no_runtime_choice():
    """Device, channels-last and the resolved AMP dtype are the runtime's: the same recipe on a
    CPU and a GPU is the same recipe (and so the same cached run)."""
    fields = set(Recipe("resnet50").to_dict())
    assert not fields & {"channels_last", "device", "num_workers"}
    assert Recipe("resnet50").amp == "auto"  # the policy, resolved at run time


def test_changes_from_names_each_changed_field():
    stored = Recipe("resnet50").to_dict()
    assert Recipe("resnet50").changes_from(stored) == []
    assert Recipe("resnet50", lr=1e-3, seed=1).changes_from(stored) == [
        "lr: 0.002 -> 0.001",
        "seed: 0 -> 1",
    ]


def test_a_later_field_at_its_default_leaves_the_recipe_dict_as_it_was():
    """breed_balanced came after runs were cached: off, it is not in the dict (so not in the
    hash); on, it is, and changes_from names it in both directions."""
    plain, balanced = Recipe("resnet50"), Recipe("resnet50", breed_balanced=True)
    assert "breed_balanced" not in plain.to_dict()
    assert balanced.to_dict()["breed_balanced"] is True
    assert balanced.changes_from(plain.to_dict()) == ["breed_balanced: False -> True"]
    assert plain.changes_from(balanced.to_dict()) == ["breed_balanced: True -> False"]
    assert Recipe(**balanced.to_dict()) == balanced
    assert "breed-balanced sampling" in balanced.summary()
    assert "breed-balanced" not in plain.summary()


def test_weight_decay_skips_batchnorm_and_biases():
    """Conv and linear weights decay; BatchNorm weights (incl. the zero-initialised gammas) and
    biases do not, unless the recipe asks for it."""
    model = models.build_model("resnet18", num_classes=2, zero_init_residual=True)
    optimizer = make_optimizer(model, Recipe("resnet18"))
    decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, parameter in model.named_parameters():
        expected = name.endswith("weight") and "bn" not in name and "downsample.1" not in name
        assert (id(parameter) in decay) == expected, name
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    everything = make_optimizer(model, Recipe("resnet18", decay_norm_and_bias=True))
    assert {g["weight_decay"] for g in everything.param_groups} == {0.05}

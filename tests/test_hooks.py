"""course_utils.hooks: captured outputs and their shapes, and no hook left behind, ever."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from course_utils import hooks, models


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return models.resnet18(num_classes=2).eval()


def test_capture_stages_records_each_stages_feature_map(model: nn.Module) -> None:
    images = torch.randn(2, 3, 64, 96)
    with hooks.capture_stages(model) as outputs, torch.no_grad():
        logits = model(images)
    shapes = {name: tuple(out.shape) for name, out in outputs.items()}
    assert shapes == {  # the stem and each later stage halve the resolution
        "maxpool": (2, 64, 16, 24),
        "layer1": (2, 64, 16, 24),
        "layer2": (2, 128, 8, 12),
        "layer3": (2, 256, 4, 6),
        "layer4": (2, 512, 2, 3),
    }
    with torch.no_grad():
        torch.testing.assert_close(model.layer2(outputs["layer1"]), outputs["layer2"])
        torch.testing.assert_close(model.fc(outputs["layer4"].mean(dim=(2, 3))), logits)
    assert hooks.hooks_left(model) == {}


def test_outputs_are_detached_unless_asked_otherwise(model: nn.Module) -> None:
    images = torch.randn(1, 3, 32, 32)
    with hooks.capture_stages(model, ["layer4"]) as outputs:
        model(images)
    assert not outputs["layer4"].requires_grad
    with hooks.capture_stages(model, ["layer3.1", "layer4"], detach=False) as outputs:
        score = model(images)[:, 0].sum()
    (grad,) = torch.autograd.grad(score, [outputs["layer4"]])
    assert grad.shape == outputs["layer4"].shape
    assert set(outputs) == {"layer3.1", "layer4"}


def test_hooks_are_removed_after_an_error_inside_the_block(model: nn.Module) -> None:
    with pytest.raises(RuntimeError), hooks.capture_stages(model):
        assert hooks.hooks_left(model) == dict.fromkeys(models.FEATURE_MAP_MODULES, 1)
        model(torch.randn(1, 4, 32, 32))  # 4 channels: the stem refuses them
    assert hooks.hooks_left(model) == {}


def test_an_unknown_name_sets_no_hook(model: nn.Module) -> None:
    with pytest.raises(AttributeError), hooks.capture_stages(model, ["layer1", "layer5"]):
        pass
    assert hooks.hooks_left(model) == {}


def test_hooks_left_counts_every_kind_of_module_hook() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    handles = [
        net.register_forward_hook(lambda *args: None),
        net[0].register_forward_pre_hook(lambda *args: None),
        net[0].register_full_backward_hook(lambda *args: None),
    ]
    assert hooks.hooks_left(net) == {"(model)": 1, "0": 2}
    for handle in handles:
        handle.remove()
    assert hooks.hooks_left(net) == {}

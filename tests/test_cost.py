"""course_utils.cost: MACs match torchvision's metadata, receptive fields match the formula."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torchvision
from torch import nn

from course_utils import cost, models

TORCHVISION_WEIGHTS = {
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V2,
    "resnet101": torchvision.models.ResNet101_Weights.IMAGENET1K_V2,
}


@functools.cache
def _model(arch: str) -> models.ResNet:
    return models.build_model(arch)


@pytest.mark.parametrize(("arch", "gmacs"), [("resnet50", 4.089), ("resnet101", 7.801)])
def test_macs_at_224_match_torchvision_metadata(arch: str, gmacs: float) -> None:
    macs = cost.count_macs(_model(arch), 224)
    assert round(macs / 1e9, 3) == gmacs == TORCHVISION_WEIGHTS[arch].meta["_ops"]


def test_flops_are_twice_the_macs_and_scale_with_batch_and_pixels() -> None:
    model = _model("resnet50")
    flops = cost.count_flops(model, 224)
    assert flops == 2 * cost.count_macs(model, 224)
    assert cost.count_flops(model, (224, 224), batch_size=3) == 3 * flops
    # Every feature map has 4x the pixels at 448 px; only the fc layer (2048 x 1000) does not grow.
    fc_flops = 2 * 2048 * 1000
    assert cost.count_flops(model, 448) - fc_flops == 4 * (flops - fc_flops)


def test_counting_leaves_the_model_untouched() -> None:
    model = models.build_model("resnet50")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cost.count_flops(model, 64)
    cost.macs_per_stage(model, 64)
    after = model.state_dict()
    assert all(
        after[k].device.type == "cpu" and torch.equal(after[k], v) for k, v in before.items()
    )


@pytest.mark.parametrize("arch", ["resnet50", "resnet101"])
def test_stage_sums_equal_totals(arch: str) -> None:
    model = _model(arch)
    per_stage = cost.macs_per_stage(model, 224)
    assert tuple(per_stage) == cost.STAGES
    assert sum(per_stage.values()) == cost.count_macs(model, 224)
    assert sum(cost.parameters_per_stage(model).values()) == models.count_parameters(model)


def test_resnet101_extra_parameters_and_macs_are_all_in_layer3() -> None:
    params = {arch: cost.parameters_per_stage(_model(arch)) for arch in ("resnet50", "resnet101")}
    macs = {arch: cost.macs_per_stage(_model(arch), 224) for arch in ("resnet50", "resnet101")}
    for stage in cost.STAGES:
        if stage != "layer3":
            assert params["resnet50"][stage] == params["resnet101"][stage]
            assert macs["resnet50"][stage] == macs["resnet101"][stage]
    # 17 extra identity bottlenecks of width 256 -> 1024 at 14 x 14:
    # 1x1 (1024*256) + 3x3 (256*256*9) + 1x1 (256*1024) weights, plus BN (2 * (256+256+1024)).
    block_weights = 1024 * 256 + 256 * 256 * 9 + 256 * 1024
    block_params = block_weights + 2 * (256 + 256 + 1024)
    assert params["resnet101"]["layer3"] - params["resnet50"]["layer3"] == 17 * block_params
    assert macs["resnet101"]["layer3"] - macs["resnet50"]["layer3"] == 17 * block_weights * 14 * 14


def _expected_receptive_fields(layer3_blocks: int) -> dict[str, tuple[int, int]]:
    """By hand from r_out = r_in + (k - 1) * j_in, j_out = j_in * s; one 3x3 per bottleneck."""
    r, j = 1, 1
    r, j = r + (7 - 1) * j, j * 2  # stem conv 7x7 stride 2 -> r 7, j 2
    assert r == 7
    r, j = r + (3 - 1) * j, j * 2  # max pool 3x3 stride 2 -> r 11, j 4
    assert r == 11
    expected = {"stem": (r, j)}
    # 1x1 convs add nothing ((1 - 1) * j = 0); each block's 3x3 adds 2 * j, the first one of
    # layer2..4 with stride 2 (ResNet v1.5), so the jump doubles after it.
    for stage, blocks, stride in [
        ("layer1", 3, 1),
        ("layer2", 4, 2),
        ("layer3", layer3_blocks, 2),
        ("layer4", 3, 2),
    ]:
        for block in range(blocks):
            r += (3 - 1) * j
            j *= stride if block == 0 else 1
        expected[stage] = (r, j)
    return expected


@pytest.mark.parametrize(("arch", "layer3_blocks"), [("resnet50", 6), ("resnet101", 23)])
def test_receptive_fields_match_the_formula(arch: str, layer3_blocks: int) -> None:
    expected = _expected_receptive_fields(layer3_blocks)
    got = cost.receptive_field(_model(arch))
    assert {stage: (rf.size, rf.jump) for stage, rf in got.items()} == expected
    trace = cost.receptive_field_trace(_model(arch))
    assert [(t.name, t.size, t.jump) for t in trace[:2]] == [("conv1", 7, 2), ("maxpool", 11, 4)]
    assert not any("downsample" in t.name for t in trace)


def test_receptive_fields_written_out() -> None:
    """The values of the formula, spelled out (also quoted in notebook 03)."""
    assert _expected_receptive_fields(6) == {
        "stem": (11, 4),
        "layer1": (35, 4),
        "layer2": (91, 8),
        "layer3": (267, 16),
        "layer4": (427, 32),
    }
    assert _expected_receptive_fields(23)["layer3"] == (811, 16)
    assert _expected_receptive_fields(23)["layer4"] == (971, 32)


def test_same_results_for_torchvision_resnet() -> None:
    reference = torchvision.models.resnet50()
    assert cost.count_macs(reference, 224) == cost.count_macs(_model("resnet50"), 224)
    assert cost.receptive_field(reference) == cost.receptive_field(_model("resnet50"))


def _tiny_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )


def test_latency_and_train_step_return_positive_finite_numbers() -> None:
    model = _tiny_model()
    weights = [p.detach().clone() for p in model.parameters()]
    for result in (
        cost.measure_latency(model, 16, 2, "cpu", warmup=1, repeats=3),
        cost.measure_train_step(model, 16, 2, "cpu", warmup=1, repeats=3),
    ):
        assert result["repeats"] == 3
        for key in ("median_ms", "p10_ms", "p90_ms", "images_per_s"):
            assert math.isfinite(result[key]) and result[key] > 0
        assert result["p10_ms"] <= result["median_ms"] <= result["p90_ms"]
    # the train step trains a copy
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights, strict=True))


def test_compare_side_by_side_interleaves_calls() -> None:
    calls = []

    def factory(model, input_size, batch_size, device):
        return lambda: calls.append(model)

    results = cost.compare_side_by_side(
        {"a": "A", "b": "B"}, factory, 8, 1, "cpu", warmup=1, repeats=3
    )
    assert calls == ["A", "B"] * 4
    assert set(results) == {"a", "b"} and results["a"]["repeats"] == 3


def test_peak_memory_is_none_on_cpu() -> None:
    assert cost.measure_peak_memory(_tiny_model(), 16, 2, "cpu") is None

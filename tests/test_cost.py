"""course_utils.cost and .timing: MACs match torchvision, receptive fields match published ones."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torchvision
from torch import nn

from course_utils import cost, models, timing

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
    assert sum(cost.macs_per_stage(model, 224).values()) == cost.count_macs(model, 224)
    assert sum(cost.parameters_per_stage(model).values()) == models.count_parameters(model)


def test_resnet101_extra_parameters_and_macs_are_all_in_layer3() -> None:
    params = {arch: cost.parameters_per_stage(_model(arch)) for arch in ("resnet50", "resnet101")}
    macs = {arch: cost.macs_per_stage(_model(arch), 224) for arch in ("resnet50", "resnet101")}
    for stage in models.STAGES:
        if stage != "layer3":
            assert params["resnet50"][stage] == params["resnet101"][stage]
            assert macs["resnet50"][stage] == macs["resnet101"][stage]
    # 17 extra identity bottlenecks of width 256 -> 1024 at 14 x 14:
    # 1x1 (1024*256) + 3x3 (256*256*9) + 1x1 (256*1024) weights, plus BN (2 * (256+256+1024)).
    block_weights = 1024 * 256 + 256 * 256 * 9 + 256 * 1024
    block_params = block_weights + 2 * (256 + 256 + 1024)
    assert params["resnet101"]["layer3"] - params["resnet50"]["layer3"] == 17 * block_params
    assert macs["resnet101"]["layer3"] - macs["resnet50"]["layer3"] == 17 * block_weights * 14 * 14


# Receptive field (px) and cumulative stride at the end of each stage, by hand with
# r_out = r_in + (k - 1) * j_in and j_out = j_in * s. Stem: conv 7x7/2 gives r 7, j 2; max pool
# 3x3/2 gives r 7 + 2 * 2 = 11, j 4. Each bottleneck adds 2 * j with its 3x3 (1x1 convs add 0);
# in v1.5 the first 3x3 of layer2..4 strides, so it adds 2 * j before the jump doubles.
RESNET50_V15 = {
    "stem": (11, 4),
    "layer1": (11 + 3 * 8, 4),  # 35
    "layer2": (35 + 8 + 3 * 16, 8),  # 91: the strided 3x3 at j 4, three more at j 8
    "layer3": (91 + 16 + 5 * 32, 16),  # 267
    "layer4": (267 + 32 + 2 * 64, 32),  # 427
}
# ResNet v1 strides in the first 1x1 conv instead: every 3x3 of a stage sees the doubled jump.
# Araujo, Norris & Sim (Distill 2019) list 483 px for ResNet-50 v1 and 1027 px for ResNet-101 v1.
PUBLISHED_V1 = {"resnet50": 483, "resnet101": 1027}


def test_receptive_fields_of_resnet50_match_the_hand_derivation() -> None:
    got = cost.receptive_field(_model("resnet50"))
    assert {stage: (rf.size, rf.jump) for stage, rf in got.items()} == RESNET50_V15
    trace = cost.receptive_field_trace(_model("resnet50"))
    assert [(t.name, t.size, t.jump) for t in trace[:2]] == [("conv1", 7, 2), ("maxpool", 11, 4)]
    assert not any("downsample" in t.name for t in trace)


def test_resnet101_adds_17_blocks_of_2_x_16_px_to_layer3() -> None:
    got = cost.receptive_field(_model("resnet101"))
    assert (got["layer3"].size, got["layer3"].jump) == (267 + 17 * 32, 16)  # 811
    assert (got["layer4"].size, got["layer4"].jump) == (427 + 17 * 32, 32)  # 971
    assert got["layer2"] == cost.receptive_field(_model("resnet50"))["layer2"]


def test_v1_strides_give_he_et_al_table_1_multiply_adds() -> None:
    """He et al. 2015, Table 1: 3.8 and 7.6 x 10^9 multiply-adds (the paper's "FLOPs") for v1;
    torchvision's v1.5 networks need more, 4.09 and 7.80 GMACs, for the same weights."""
    for arch, paper in (("resnet50", 3.8e9), ("resnet101", 7.6e9)):
        v1 = cost.count_macs(models.with_v1_strides(models.build_model(arch)), 224)
        assert abs(v1 - paper) / paper < 0.02
        assert v1 < cost.count_macs(models.build_model(arch), 224)


@pytest.mark.parametrize("arch", ["resnet50", "resnet101"])
def test_v1_receptive_field_matches_the_published_value(arch: str) -> None:
    v1 = cost.receptive_field(models.with_v1_strides(models.build_model(arch)))
    v15 = cost.receptive_field(_model(arch))
    assert v1["layer4"].size == PUBLISHED_V1[arch]
    # v1.5 moves each of the three strides one 3x3 earlier: 2 * (4 + 8 + 16) = 56 px less.
    assert v1["layer4"].size - v15["layer4"].size == 56
    assert v1["layer4"].jump == v15["layer4"].jump == 32


def test_dilation_widens_the_kernel_and_non_square_kernels_are_refused() -> None:
    dilated = nn.Sequential(nn.Conv2d(3, 4, 3, dilation=2), nn.Conv2d(4, 4, 3, stride=2))
    assert [(t.size, t.jump) for t in cost.receptive_field_trace(dilated)] == [(5, 1), (7, 2)]
    with pytest.raises(ValueError, match="non-square kernel"):
        cost.receptive_field_trace(nn.Sequential(nn.Conv2d(3, 4, (3, 1))))


def test_same_results_for_torchvision_resnet() -> None:
    reference = torchvision.models.resnet50()
    assert cost.count_macs(reference, 224) == cost.count_macs(_model("resnet50"), 224)
    assert cost.receptive_field(reference) == cost.receptive_field(_model("resnet50"))


def _tiny_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )


def test_inference_step_runs_the_model_in_eval_mode() -> None:
    model = _tiny_model().train()
    step = timing.inference_step(model, 16, 2, "cpu")
    assert not model.training
    logits = step()
    assert logits.shape == (2, 3)
    torch.testing.assert_close(logits, step())  # the same fixed batch every call


def test_train_step_trains_a_copy() -> None:
    model = _tiny_model()
    weights = [p.detach().clone() for p in model.parameters()]
    step = timing.train_step(model, 16, 2, "cpu", lr=0.1)
    first, second = step().item(), step().item()
    assert math.isfinite(first) and second != first  # the copy's weights moved
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights, strict=True))


def test_summarize_times_in_milliseconds_and_images_per_second() -> None:
    summary = timing.summarize_times([0.004, 0.001, 0.002, 0.003, 0.100], batch_size=8)
    assert summary["median_ms"] == pytest.approx(3.0)
    assert summary["images_per_s"] == pytest.approx(8 / 0.003)
    assert summary["p10_ms"] == pytest.approx(1.4)  # numpy's linear interpolation
    assert summary["times_ms"] == pytest.approx((4.0, 1.0, 2.0, 3.0, 100.0))  # in call order
    assert summary["repeats"] == 5


def test_time_interleaved_needs_a_timed_round() -> None:
    with pytest.raises(ValueError, match="repeats"):
        timing.time_interleaved({"a": lambda: None}, "cpu", warmup=0, repeats=0)


def test_compare_side_by_side_interleaves_calls() -> None:
    calls = []

    def factory(model, input_size, batch_size, device):
        return lambda: calls.append(model)

    results = timing.compare_side_by_side(
        {"a": "A", "b": "B"}, factory, 8, 1, "cpu", warmup=1, repeats=3
    )
    assert calls == ["A", "B"] + ["A", "B", "B", "A", "A", "B"]  # warm-up, then ABBA rounds
    assert set(results) == {"a", "b"} and results["a"]["repeats"] == 3


def test_peak_memory_is_none_on_cpu() -> None:
    assert timing.measure_peak_memory(_tiny_model(), 16, 2, "cpu") is None

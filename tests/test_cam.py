"""Grad-CAM by hand vs the grad-cam package, hook hygiene, CAM shapes, and the CAM scores."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch import nn

from course_utils import cam, cam_scores, evaluate, hooks, models

pytest.importorskip("pytorch_grad_cam")

# The hand-written Grad-CAM and grad-cam's GradCAM compute the same float32 maps; they differ
# only in float rounding (torch vs numpy sums, torch vs OpenCV bilinear resize). Measured max
# abs difference on maps in [0, 1]: about 1e-6 (ResNet-50, layers 2-4, 64 x 96 inputs).
MAX_ABS_DIFFERENCE = 1e-5


@functools.cache
def _network(arch: str = "resnet50") -> nn.Module:
    """A seeded random network with real BN statistics, so that its maps are not degenerate."""
    torch.manual_seed(0)
    model = models.build_model(arch, num_classes=2)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # running stats = plain average over the batches seen
    with torch.no_grad():
        model.train()(torch.randn(8, 3, 64, 64))
    return model.eval()


def _images(height: int = 64, width: int = 64, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, height, width, generator=torch.Generator().manual_seed(1))


def _assert_no_hooks(model: nn.Module) -> None:
    for name, module in model.named_modules():
        assert not module._forward_hooks, name
        assert not module._forward_pre_hooks, name
        assert not module._backward_hooks, name
    assert hooks.hooks_left(model) == {}


def test_target_layer_is_the_last_block_of_the_stage():
    model = _network()
    assert cam.target_layer(model) is model.layer4[-1]
    assert cam.target_layer(model, "layer2") is model.layer2[-1]
    with pytest.raises(ValueError, match="Unknown stage"):
        cam.target_layer(model, "layer5")


@pytest.mark.parametrize("stage", cam.CAM_STAGES)
def test_hand_written_grad_cam_matches_the_package(stage):
    model, images = _network(), _images(64, 96)
    layer = cam.target_layer(model, stage)
    by_hand = cam.grad_cam(model, images, layer)
    package, logits = cam.package_cam("GradCAM", model, images, layer)
    assert by_hand.std() > 0.05  # a real heatmap, not a constant one
    assert (by_hand - package).abs().max().item() < MAX_ABS_DIFFERENCE
    torch.testing.assert_close(logits, model(images).detach())


def test_explicit_classes_change_the_map_and_match_the_package():
    model, images = _network(), _images()
    layer = cam.target_layer(model)
    for classes in ([0, 0], [1, 1]):
        by_hand = cam.grad_cam(model, images, layer, classes=classes)
        package, _ = cam.package_cam("GradCAM", model, images, layer, classes=classes)
        assert (by_hand - package).abs().max().item() < MAX_ABS_DIFFERENCE
    assert not torch.allclose(
        cam.grad_cam(model, images, layer, [0, 0]), cam.grad_cam(model, images, layer, [1, 1])
    )


def test_several_stages_in_one_pass_equal_one_stage_at_a_time():
    model, images = _network(), _images()
    layers = [cam.target_layer(model, stage) for stage in cam.CAM_STAGES]
    out = cam.grad_cams(model, images, layers)
    for layer, maps in zip(layers, out.cams, strict=True):
        torch.testing.assert_close(maps, cam.grad_cam(model, images, layer))
    torch.testing.assert_close(out.classes, out.logits.argmax(dim=1))


@pytest.mark.parametrize("size", [(64, 64), (64, 96), (80, 48)])
@pytest.mark.parametrize("method", [cam.BY_HAND, *cam.PACKAGE_METHODS])
def test_cam_has_the_input_size_and_lies_in_0_1(method, size):
    model, images = _network(), _images(*size)
    layer = cam.target_layer(model)
    if method == cam.BY_HAND:
        maps = cam.grad_cam(model, images, layer)
    else:
        maps, _ = cam.package_cam(method, model, images, layer)
    assert maps.shape == (2, *size)
    assert maps.dtype == torch.float32
    assert maps.min() >= 0 and maps.max() <= 1


def test_a_constant_map_stays_exactly_zero_after_upsampling():
    assert torch.equal(
        cam.to_input_size(torch.full((2, 1, 1), 3.0), (37, 53)), torch.zeros(2, 37, 53)
    )
    assert torch.equal(cam_scores.random_cams(2, (32, 32)), torch.zeros(2, 32, 32))  # 1 x 1 grid
    model, images = _network(), _images(32, 32)  # layer4 is 1 x 1: no spatial information
    by_hand = cam.grad_cam(model, images, model.layer4[-1])
    package, _ = cam.package_cam("GradCAM", model, images, model.layer4[-1])
    assert torch.equal(by_hand, torch.zeros(2, 32, 32)) and torch.equal(package, by_hand)


@pytest.mark.parametrize("method", [cam.BY_HAND, *cam.PACKAGE_METHODS])
def test_no_hooks_are_left_registered(method):
    model, images = _network(), _images()
    layers = [cam.target_layer(model, stage) for stage in cam.CAM_STAGES]
    _assert_no_hooks(model)
    if method == cam.BY_HAND:
        cam.grad_cams(model, images, layers)
    else:
        for layer in layers:
            cam.package_cam(method, model, images, layer)
    _assert_no_hooks(model)
    assert all(p.grad is None for p in model.parameters())  # no weight gradients left over


def test_hooks_are_removed_when_the_forward_pass_fails():
    model = _network()
    with pytest.raises(RuntimeError):
        cam.grad_cam(model, torch.randn(1, 4, 64, 64), cam.target_layer(model))  # 4 channels
    _assert_no_hooks(model)


def test_train_mode_is_restored_and_no_weight_gradients_are_computed():
    model = _network()
    model.train()
    try:
        cam.grad_cam(model, _images(), cam.target_layer(model))
        assert model.training
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.eval()


def test_cams_for_dataset_keeps_order_labels_and_masks():
    model, images = _network(), _images(64, 64, n=5)
    masks = (torch.rand(5, 64, 64, generator=torch.Generator().manual_seed(2)) > 0.5).to(
        torch.uint8
    )
    dataset = [{"image": images[i], "label": i % 2, "mask": masks[i]} for i in range(5)]
    run = cam.cams_for_dataset(model, dataset, stages=("layer3", "layer4"), batch_size=2)
    assert set(run.cams) == {"layer3", "layer4"}
    assert run.cams["layer4"].shape == (5, 64, 64)
    one_batch = cam.grad_cam(model, images, model.layer4[-1])
    assert (run.cams["layer4"] - one_batch).abs().max() < 1e-4  # batch size changes conv rounding
    assert run.labels.tolist() == [0, 1, 0, 1, 0]
    assert torch.equal(run.masks, masks)
    assert run.correct.shape == (5,)
    package = cam.cams_for_dataset(model, dataset, method="EigenCAM", batch_size=2)
    torch.testing.assert_close(package.logits, run.logits, atol=1e-4, rtol=1e-4)


# Scores ----------------------------------------------------------------------------------------


def _mask_and_maps():
    """A pet in the left half; a map equal to the mask (perfect) and its reverse (anti)."""
    mask = torch.zeros(1, 32, 48, dtype=torch.uint8)
    mask[:, 4:28, 2:20] = 1
    perfect = mask.float()
    return mask, perfect, 1 - perfect


def test_localisation_scores_are_1_on_a_perfect_map_and_0_on_an_anti_correlated_one():
    mask, perfect, anti = _mask_and_maps()
    assert cam_scores.energy_pointing_game(perfect, mask).tolist() == [1.0]
    assert cam_scores.energy_pointing_game(anti, mask).tolist() == [0.0]
    assert cam_scores.pointing_hit(perfect, mask).tolist() == [1.0]
    assert cam_scores.pointing_hit(anti, mask).tolist() == [0.0]
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(48.0), indexing="ij")
    peak_on_pet = torch.exp(-((ys - 16) ** 2 + (xs - 10) ** 2) / 50)[None]
    assert cam_scores.pointing_hit(peak_on_pet, mask).tolist() == [1.0]
    assert cam_scores.pointing_hit(peak_on_pet.flip(-1), mask).tolist() == [0.0]


def test_agreement_scores_are_1_on_identical_maps_and_0_or_minus_1_on_reversed_ones():
    cams = torch.rand(3, 32, 48, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(cam_scores.top_k_iou(cams, cams), 1.0)
    np.testing.assert_allclose(cam_scores.top_k_iou(cams, 1 - cams), 0.0)
    np.testing.assert_allclose(cam_scores.rank_correlation(cams, cams), 1.0)
    np.testing.assert_allclose(cam_scores.rank_correlation(cams, 1 - cams), -1.0)
    np.testing.assert_allclose(cam_scores.rank_correlation(cams, 3 * cams**2), 1.0)  # monotone


def test_top_k_mask_keeps_exactly_k_of_the_pixels_and_the_highest_ones():
    cams = torch.rand(3, 20, 30, generator=torch.Generator().manual_seed(4))
    region = cam_scores.top_k_mask(cams, 0.25)
    assert region.shape == cams.shape and region.dtype == torch.bool
    assert region.flatten(1).sum(dim=1).tolist() == [150, 150, 150]
    for i in range(3):  # every kept pixel is at least as high as every dropped one
        assert cams[i][region[i]].min() >= cams[i][~region[i]].max()
    assert cam_scores.top_k_mask(torch.zeros(1, 4, 4), 0.5).sum() == 8  # ties: still exactly k


def test_rank_correlation_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    gen = torch.Generator().manual_seed(3)
    a = torch.randint(0, 5, (2, 8, 8), generator=gen).float()  # many ties, like ReLU zeros
    b = torch.randint(0, 5, (2, 8, 8), generator=gen).float()
    expected = [stats.spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(cam_scores.rank_correlation(a, b), expected, rtol=1e-10)


def test_uniform_and_constant_maps_score_the_pet_share():
    mask, _, _ = _mask_and_maps()
    share = mask.float().mean().item()
    for flat in (torch.zeros(1, 32, 48), torch.ones(1, 32, 48)):
        assert cam_scores.energy_pointing_game(flat, mask)[0] == pytest.approx(share)
        assert cam_scores.pointing_hit(flat, mask)[0] == pytest.approx(share)


def test_grid_pointing_scores_the_feature_cell_not_the_upsampled_peak():
    # A 4 x 4 feature map whose hottest cell (row 0, col 3) is on the pet, upsampled to 64 px.
    cells = torch.zeros(1, 4, 4)
    cells[0, 0, 3] = 1.0
    cells[0, 3, 0] = 0.9
    cams = cam.to_input_size(cells, (64, 64))
    mask = torch.zeros(1, 64, 64)
    mask[0, :16, 48:] = 1  # exactly the top-right cell
    assert cam_scores.pointing_hit_on_grid(cams, mask, 4).tolist() == [1.0]
    assert cam_scores.pointing_hit_on_grid(cams.flip(-1), mask, 4).tolist() == [0.0]
    mask_quarter = torch.zeros(1, 64, 64)
    mask_quarter[0, :4, 48:] = 1  # a quarter of the peak cell: not "on the pet"
    assert cam_scores.pointing_hit_on_grid(cams, mask_quarter, 4).tolist() == [0.0]
    tie = torch.ones(1, 64, 64)  # all 16 cells tie; one of them is on the pet
    assert cam_scores.pointing_hit_on_grid(tie, mask, (4, 4))[0] == pytest.approx(1 / 16)


def test_grid_pointing_refuses_maps_below_4_by_4():
    cams, masks = torch.rand(2, 64, 64), torch.ones(2, 64, 64)
    with pytest.raises(ValueError, match="too coarse"):
        cam_scores.pointing_hit_on_grid(cams, masks, 2)
    with pytest.raises(ValueError, match="too coarse"):
        cam_scores.pointing_hit_on_grid(cams, masks, (8, 3))


def test_energy_above_chance_is_zero_for_a_uniform_map_and_positive_on_the_pet():
    mask = torch.zeros(2, 32, 32)
    mask[:, :8] = 1  # the pet is a quarter of the image
    uniform, on_pet = torch.ones(1, 32, 32), mask[:1].clone()
    cams = torch.cat([uniform, on_pet])
    np.testing.assert_allclose(cam_scores.energy_above_chance(cams, mask), [0.0, 0.75])
    np.testing.assert_allclose(cam_scores.energy_above_chance(1 - on_pet, mask[:1]), [-0.25])


def test_has_pet_finds_empty_masks():
    masks = torch.zeros(3, 8, 8, dtype=torch.uint8)
    masks[0, 2, 2] = 1
    masks[2] = 1
    assert cam_scores.has_pet(masks).tolist() == [True, False, True]


def test_score_shapes_are_checked():
    with pytest.raises(ValueError, match="need"):
        cam_scores.energy_pointing_game(torch.rand(2, 8, 8), torch.ones(2, 8, 9))


def test_baselines_have_the_right_shape_range_and_centre():
    random = cam_scores.random_cams(4, (64, 96), seed=5)
    assert random.shape == (4, 64, 96)
    assert random.min() >= 0 and random.max() <= 1
    torch.testing.assert_close(random, cam_scores.random_cams(4, (64, 96), seed=5))
    assert not torch.equal(random[0], random[1])
    centre = cam_scores.centre_cams(2, (64, 96))
    assert centre.shape == (2, 64, 96)
    peak = divmod(int(centre[0].argmax()), 96)
    assert peak in {(31, 47), (31, 48), (32, 47), (32, 48)}
    assert centre[0, 0, 0] < 0.05


def test_random_maps_score_the_pet_share_on_average():
    mask = torch.zeros(1, 64, 64, dtype=torch.uint8)
    mask[:, :, :32] = 1  # half of the image is pet
    random = cam_scores.random_cams(400, (64, 64), seed=0)
    energy = cam_scores.energy_pointing_game(random, mask.expand(400, 64, 64))
    assert energy.mean() == pytest.approx(0.5, abs=0.03)


def test_confidence_change_is_zero_for_an_all_ones_map():
    model, images = _network(), _images()
    change = cam_scores.confidence_change(model, images, torch.ones(2, 64, 64), [0, 1])
    np.testing.assert_allclose(change, 0.0, atol=1e-6)
    drop = cam_scores.confidence_change(model, images, torch.zeros(2, 64, 64), [0, 1])
    assert drop.shape == (2,) and np.all(np.abs(drop) > 0)
    several = cam_scores.confidence_change(
        model, images, {"ones": torch.ones(2, 64, 64), "zeros": torch.zeros(2, 64, 64)}, [0, 1]
    )
    np.testing.assert_allclose(several["ones"], 0.0, atol=1e-6)
    np.testing.assert_allclose(several["zeros"], drop, atol=1e-6)


def test_confidence_change_matches_the_package_metric():
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model, images = _network(), _images()
    maps = cam.grad_cam(model, images, model.layer4[-1])
    targets = [ClassifierOutputSoftmaxTarget(c) for c in (0, 1)]
    expected = CamMultImageConfidenceChange()(images, maps.numpy(), targets, model)
    ours = cam_scores.confidence_change(model, images, maps, [0, 1])
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_cam_scores_registry_plays_each_score_where_it_is_defined():
    masks = torch.zeros(2, 128, 128)
    masks[:, :64, :64] = 1  # the pet fills the top-left quarter
    cams = torch.zeros(2, 128, 128)
    cams[:, :32, :32] = 1  # all the mass on the pet
    assert [s.name for s in cam_scores.CAM_SCORES] == [
        "energy (share on the pet)",
        "energy above chance",
        "pointing hit rate",
    ]
    np.testing.assert_allclose(cam_scores.ENERGY(cams, masks), [1.0, 1.0])
    np.testing.assert_allclose(cam_scores.ENERGY_ABOVE_CHANCE(cams, masks), [0.75, 0.75])
    np.testing.assert_allclose(cam_scores.POINTING(cams, masks, stride=32), [1.0, 1.0])
    assert cam_scores.POINTING.playable(128, 32) and not cam_scores.POINTING.playable(64, 32)
    assert cam_scores.ENERGY.playable(64, 32)  # energy needs no cells
    assert cam_scores.ENERGY_ABOVE_CHANCE.above_chance and not cam_scores.ENERGY.above_chance
    with pytest.raises(ValueError, match="too coarse"):
        cam_scores.POINTING(cams[:, :64, :64], masks[:, :64, :64], stride=32)


def test_compare_row_reports_the_second_network_minus_the_first():
    rng = np.random.default_rng(0)
    a = rng.random(100)
    row = cam_scores.compare_row(
        {"resnet50": a, "resnet101": a + 0.2}, {"centre CAM": np.full(100, 0.7)}
    )
    assert list(row) == [
        "ResNet-50",
        "ResNet-101",
        "ResNet-101 - ResNet-50",
        "centre CAM",
        "images",
    ]
    assert row["ResNet-101 - ResNet-50"] == "+0.20 (+0.20 to +0.20): ResNet-101 higher"
    assert row["centre CAM"] == "0.70 (0.70 to 0.70)" and row["images"] == "100"
    low, high = evaluate.bootstrap_ci(a)
    assert row["ResNet-50"] == evaluate.format_interval(a.mean(), low, high)
    lower = cam_scores.compare_row({"resnet50": a, "resnet101": a - 0.2})
    assert lower["ResNet-101 - ResNet-50"] == "-0.20 (-0.20 to -0.20): ResNet-50 higher"


def test_compare_row_finds_no_detectable_difference_inside_the_noise():
    rng = np.random.default_rng(0)
    a = rng.random(100)
    row = cam_scores.compare_row({"resnet50": a, "resnet101": a + 0.001 * rng.standard_normal(100)})
    assert row["ResNet-101 - ResNet-50"].endswith("): no detectable difference")


def test_confidence_change_restores_every_module_mode():
    model, images = _network(), _images()
    model.train()
    model.bn1.eval()
    try:
        cam_scores.confidence_change(model, images, torch.ones(2, 64, 64), [0, 1])
        assert model.training and model.layer1.training and not model.bn1.training
    finally:
        model.eval()

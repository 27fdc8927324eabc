"""course_utils.multiscale(_tta): any input size, non-square photos, batching, TTA, low res."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from course_utils import models, multiscale
from course_utils.data import IMAGENET_MEAN, IMAGENET_STD, PetDataset, PetRecord, eval_transform
from course_utils.data import memory as data_memory
from course_utils.multiscale import (
    capture_stages,
    compare_frames,
    decode_once,
    evaluate_at_scales,
    paired_difference,
    size_transform,
)
from course_utils.multiscale_tta import (
    combine_views,
    compare_tta,
    evaluate_low_resolution,
    lowres_transform,
    tta_predict,
)

# (height, width): landscape, portrait, square, and a shape that comes back after another one,
# so that batching by shape has to put results back in the original order.
SHAPES = [(40, 60), (60, 40), (50, 50), (40, 60), (45, 70), (60, 40)]


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[PetRecord]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    out = []
    for i, (height, width) in enumerate(SHAPES):
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        path = folder / f"image_{i}.png"
        Image.fromarray(pixels).save(path)
        out.append(PetRecord(path, i % 2, "test breed", None))
    return out


@pytest.fixture(scope="module")
def images(records: list[PetRecord]):
    return decode_once(records)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build_model("resnet18", num_classes=2).eval()


def _normalise(image: torch.Tensor) -> torch.Tensor:
    return v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)(v2.ToDtype(torch.float32, scale=True)(image))


def test_sizes_that_are_not_multiples_of_32(model, images) -> None:
    sizes = [37, 50, 97]
    frame = evaluate_at_scales(model, images, sizes, progress=False)
    assert frame["size"].tolist() == sizes
    assert frame["pixels"].tolist() == [s * s for s in sizes]
    for row in frame.itertuples():
        assert row.logits.shape == (len(SHAPES), 2) and torch.isfinite(row.logits).all()
        assert row.correct.shape == (len(SHAPES),) and row.correct.dtype == bool
        assert row.ci_low <= row.accuracy <= row.ci_high
        assert 0.5 <= row.mean_confidence <= 1 and row.ms_per_image > 0
    # The last feature map is ceil(s / 32) cells wide: 2 at 37 and 50 px, 4 at 97 px.
    for size, cells in ((37, 2), (50, 2), (97, 4)):
        with capture_stages(model) as stages:
            model(torch.zeros(1, 3, size, size))
        assert stages["layer4"].shape[-2:] == (cells, cells)


def test_non_square_shorter_side_keeps_aspect_and_order(model, images, records) -> None:
    size = 37
    frame = evaluate_at_scales(model, images, [size], mode="shorter_side", batch_size=4)
    by_hand = []
    for record in records:  # one image at a time, resized by hand
        image = v2.functional.to_image(Image.open(record.image_path).convert("RGB"))
        resized = v2.Resize(size, antialias=True)(image)
        height, width = resized.shape[-2:]
        assert min(height, width) == size
        assert max(height, width) == int(size * max(image.shape[-2:]) / min(image.shape[-2:]))
        with torch.no_grad():
            by_hand.append(model(_normalise(resized)[None].as_subclass(torch.Tensor))[0])
    torch.testing.assert_close(frame.loc[0, "logits"], torch.stack(by_hand), rtol=1e-4, atol=1e-5)
    expected_pixels = np.mean([size * int(size * max(s) / min(s)) for s in SHAPES])
    assert frame.loc[0, "pixels"] == pytest.approx(expected_pixels)


@pytest.mark.parametrize("mode", ["crop", "shorter_side"])
def test_batched_and_per_image_results_are_identical(model, images, mode, monkeypatch) -> None:
    monkeypatch.setattr(multiscale, "CHUNK_IMAGES", 4)  # 6 images: a chunk boundary inside
    batched = evaluate_at_scales(model, images, [45, 64], mode=mode, batch_size=3, progress=False)
    single = evaluate_at_scales(model, images, [45, 64], mode=mode, batch_size=1, progress=False)
    for a, b in zip(batched.logits, single.logits, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_sizes_below_the_total_stride_work_through_adaptive_pooling(model, images) -> None:
    frame = evaluate_at_scales(model, images, [8, 16, 31], progress=False)
    assert all(torch.isfinite(logits).all() for logits in frame.logits)
    with capture_stages(model) as stages:
        model(torch.zeros(1, 3, 16, 16))
    assert stages["layer4"].shape[-2:] == (1, 1)  # one cell, averaged by the adaptive pool
    with pytest.raises(ValueError, match="positive"):
        evaluate_at_scales(model, images, [0], progress=False)


def test_crop_mode_is_the_standard_evaluation_transform(model, images, records) -> None:
    frame = evaluate_at_scales(model, images, [48], progress=False)
    inputs = torch.stack(
        [PetDataset(records, eval_transform(48))[i][0] for i in range(len(records))]
    )
    with torch.no_grad():
        expected = model(inputs)
    torch.testing.assert_close(frame.loc[0, "logits"], expected, rtol=1e-4, atol=1e-5)


def test_images_are_decoded_once(model, records, monkeypatch) -> None:
    calls = []
    original = data_memory.load_record
    monkeypatch.setattr(
        data_memory, "load_record", lambda *args: calls.append(1) or original(*args)
    )
    cached = decode_once(records)
    evaluate_at_scales(model, cached, [32, 40, 48], progress=False)
    compare_tta(model, cached, 32, [32, 40])
    assert len(calls) == len(records)
    assert decode_once(cached) is cached
    evaluate_at_scales(model, records, [32, 40], progress=False)  # records: one decode per image
    assert len(calls) == 2 * len(records)


def test_tta_with_one_scale_and_no_flip_is_plain_evaluation(model, images) -> None:
    plain = evaluate_at_scales(model, images, [40], progress=False).loc[0, "logits"]
    torch.testing.assert_close(tta_predict(model, images, [40], flip=False).logits, plain)
    as_probabilities = tta_predict(model, images, [40], flip=False, combine="probabilities")
    torch.testing.assert_close(as_probabilities.logits.exp(), plain.softmax(1))


def test_flip_tta_averages_the_image_and_its_mirror(model, images) -> None:
    plain = tta_predict(model, images, [40], flip=False)
    inputs = torch.stack([size_transform(40)(images[i][0]) for i in range(len(images))])
    with torch.no_grad():  # the network's input is mirrored (after the crop, as in training)
        mirror_logits = model(inputs.flip(-1).as_subclass(torch.Tensor))
    both = tta_predict(model, images, [40], flip=True)
    torch.testing.assert_close(
        both.logits, (plain.logits + mirror_logits) / 2, rtol=1e-4, atol=1e-5
    )
    assert both.pixels == 2 * 40 * 40


def test_combine_views() -> None:
    a, b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 4.0]])
    torch.testing.assert_close(combine_views([a, b]), torch.tensor([[1.0, 2.0]]))
    probabilities = combine_views([a, b], "probabilities").exp()
    torch.testing.assert_close(probabilities, (a.softmax(1) + b.softmax(1)) / 2)
    with pytest.raises(ValueError):
        combine_views([a], "votes")


def test_compare_tta_reports_gain_and_cost(model, images) -> None:
    table = compare_tta(model, images, 40, [32, 40, 48])
    assert table["views"].tolist() == [1, 2, 3, 6]
    assert table.loc[0, "gain"] == 0 and table.loc[0, "cost"] == 1
    assert table.loc[0, "verdict"] == "tie"
    assert table.loc[3, "gmacs_per_image"] > table.loc[2, "gmacs_per_image"] > 0


def test_low_resolution_at_the_eval_size_is_native(model, images) -> None:
    frame = evaluate_low_resolution(model, images, [24, 40], eval_size=40)
    at_40 = frame[frame["size"] == 40].set_index("condition")
    assert torch.equal(at_40.loc["native", "logits"], at_40.loc["down-up", "logits"])
    at_24 = frame[frame["size"] == 24].set_index("condition")
    assert at_24.loc["down-up", "logits"].shape == at_24.loc["native", "logits"].shape
    # ... and the row is not a shortcut: the down-up input at the eval size *is* the native one.
    inputs = [lowres_transform(40, 40)(images[i][0]) for i in range(len(images))]
    with torch.no_grad():
        direct = model(torch.stack(inputs).as_subclass(torch.Tensor))
    torch.testing.assert_close(at_40.loc["down-up", "logits"], direct, rtol=1e-4, atol=1e-5)
    image = images[0][0]
    assert torch.equal(lowres_transform(40, 40)(image), eval_transform(40)(image))
    assert lowres_transform(24, 40)(image).shape == (3, 40, 40)
    with pytest.raises(ValueError):
        lowres_transform(48, 40)


def test_paired_difference_and_compare_frames(model, images) -> None:
    same = paired_difference(np.ones(50, bool), np.ones(50, bool))
    assert same["difference"] == 0 and same["verdict"] == "tie"
    better = paired_difference(np.ones(50, bool), np.zeros(50, bool))
    assert better["verdict"] == "A better" and better["ci_low"] == 1
    frame = evaluate_at_scales(model, images, [32, 40], progress=False)
    table = compare_frames(frame, frame)
    assert table["size"].tolist() == [32, 40] and (table["verdict"] == "tie").all()


def test_model_mode_is_restored(model, images) -> None:
    model.train()
    try:
        evaluate_at_scales(model, images, [32], progress=False)
        assert model.training
    finally:
        model.eval()

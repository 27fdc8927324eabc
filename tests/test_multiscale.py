"""course_utils.multiscale(_tta): any input size, non-square photos, batching, TTA, low res."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from course_utils import models, multiscale, multiscale_tta
from course_utils.cost import count_macs
from course_utils.data import IMAGENET_MEAN, IMAGENET_STD, PetDataset, PetRecord, eval_transform
from course_utils.data import memory as data_memory
from course_utils.evaluate import paired_difference
from course_utils.hooks import capture_stages
from course_utils.multiscale import (
    compare_frames,
    decode_once,
    evaluate_at_scales,
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


def test_sizes_that_are_not_multiples_of_32(model, images, records) -> None:
    sizes = [37, 50, 97]
    frame = evaluate_at_scales(model, images, sizes, progress=False)
    assert frame["size"].tolist() == sizes
    assert frame["pixels"].tolist() == [s * s for s in sizes]
    for row in frame.itertuples():
        assert row.logits.shape == (len(SHAPES), 2) and torch.isfinite(row.logits).all()
        assert row.correct.shape == (len(SHAPES),) and row.correct.dtype == bool
        labels = torch.tensor([record.label for record in records])
        np.testing.assert_array_equal(row.correct, (row.logits.argmax(1) == labels).numpy())
        assert row.accuracy == row.correct.mean() and row.ci_low <= row.accuracy <= row.ci_high
        top = row.logits.softmax(1).max(1).values.mean().item()
        assert row.mean_confidence == pytest.approx(top) and row.ms_per_image > 0
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


def test_compare_tta_rows_are_tta_predict_with_each_view_run_once(
    model, images, monkeypatch
) -> None:
    calls = []
    original = multiscale_tta.run_transformed
    monkeypatch.setattr(
        multiscale_tta,
        "run_transformed",
        lambda *args, **kwargs: calls.append(kwargs["flip"]) or original(*args, **kwargs),
    )
    sizes = [32, 40, 48]
    table = compare_tta(model, images, 40, sizes)
    assert len(calls) == 2 * len(sizes)  # each (size, mirrored) view once, shared by the rows
    monkeypatch.setattr(multiscale_tta, "run_transformed", original)
    settings = [([40], False), ([40], True), (sizes, False), (sizes, True)]
    assert table["views"].tolist() == [1, 2, 3, 6]
    for row, (row_sizes, flip) in zip(table.itertuples(), settings, strict=True):
        expected = tta_predict(model, images, row_sizes, flip=flip).logits
        torch.testing.assert_close(row.logits, expected)
        assert row.gain == pytest.approx(row.accuracy - table.loc[0, "accuracy"])  # row - single
        gain = paired_difference(row.correct, table.loc[0, "correct"])
        assert (row.gain_low, row.gain_high) == (gain.ci_low, gain.ci_high)
        assert row.verdict == gain.describe("TTA", "single scale")
        macs = (1 + flip) * sum(count_macs(model, s) for s in row_sizes)
        assert row.gmacs_per_image == pytest.approx(macs / 1e9)
        assert row.cost == pytest.approx(row.ms_per_image / table.loc[0, "ms_per_image"])


def test_a_shared_view_cache_runs_each_view_once(model, images, monkeypatch) -> None:
    calls = []
    original = multiscale_tta.run_transformed
    monkeypatch.setattr(
        multiscale_tta,
        "run_transformed",
        lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs),
    )
    views: dict = {}
    both = tta_predict(model, images, [32, 40], views=views)
    assert len(calls) == 4 and len(views) == 4
    again = tta_predict(model, images, [40], flip=False, views=views)
    assert len(calls) == 4  # a view already in the cache is not run again
    torch.testing.assert_close(again.logits, views[(40, False, "crop", 32)].logits)
    assert both.seconds == sum(view.seconds for view in views.values())


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


def _frame(correct_by_size: dict[int, np.ndarray]) -> pd.DataFrame:
    return pd.DataFrame({"size": list(correct_by_size), "correct": list(correct_by_size.values())})


def test_compare_frames_is_first_minus_second_per_common_size() -> None:
    good, bad = np.ones(50, bool), np.zeros(50, bool)
    mixed = np.r_[np.ones(25, bool), np.zeros(25, bool)]
    deep = _frame({32: good, 40: mixed, 48: good})
    shallow = _frame({24: good, 32: bad, 40: mixed[::-1], 48: bad})
    table = compare_frames(deep, shallow, labels=("ResNet-101", "ResNet-50"))
    assert list(table.columns) == [
        *("size", "n", "difference", "ci_low", "ci_high", "verdict"),
        *("p_value", "p_holm", "holm_verdict"),
    ]
    assert table["size"].tolist() == [32, 40, 48] and table["n"].tolist() == [50, 50, 50]
    assert table["difference"].tolist() == [1.0, 0.0, 1.0]
    assert table["verdict"].tolist() == [
        "ResNet-101 higher",
        "no detectable difference",
        "ResNet-101 higher",
    ]
    swapped = compare_frames(shallow, deep)
    assert swapped["size"].tolist() == [32, 40, 48]
    assert swapped["difference"].tolist() == [-1.0, 0.0, -1.0]
    assert swapped["verdict"].tolist()[0] == "second higher"
    expected = paired_difference(mixed, mixed[::-1])
    assert (table.loc[1, "ci_low"], table.loc[1, "ci_high"]) == (expected.ci_low, expected.ci_high)


def test_model_mode_is_restored(model, images) -> None:
    model.train()
    model.bn1.eval()  # a frozen BatchNorm inside a training model keeps its own mode
    try:
        evaluate_at_scales(model, images, [32], progress=False)
        assert model.training and model.layer1.training and not model.bn1.training
    finally:
        model.eval()


def test_compare_frames_holm_verdict_needs_the_corrected_p_value() -> None:
    # 8 discordant images, all won by the first: exact McNemar p = 2 / 2**8 = 0.0078 alone,
    # significant at 0.05; two such sizes plus eight tied ones: Holm multiplies it by 10 -> 0.078
    rng = np.random.default_rng(0)
    base = rng.random(100) < 0.7
    won = base.copy()
    won[np.flatnonzero(~base)[:8]] = True
    sizes = list(range(8, 88, 8))
    first = _frame({s: (won if s in (8, 16) else base) for s in sizes})
    second = _frame({s: base for s in sizes})
    table = compare_frames(first, second, labels=("A", "B"))
    assert table.p_value.iloc[0] == pytest.approx(2 / 2**8)
    assert table.p_holm.iloc[0] == pytest.approx(min(1.0, 10 * 2 / 2**8))
    assert table.verdict.iloc[0] == "A higher"  # one size on its own
    assert set(table.holm_verdict) == {"no detectable difference"}  # not after the correction
    alone = compare_frames(first.iloc[:1], second.iloc[:1], labels=("A", "B"))
    assert alone.holm_verdict.tolist() == ["A higher"]

"""BatchNorm recalibration at the test resolution (course_utils.fixres)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import TinyNet

from course_utils.data import PetRecord
from course_utils.fixres import recalibrate_batchnorm
from course_utils.multiscale import decode_once, size_transform


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    records = []
    for i in range(7):  # 7 images in batches of 3: near-equal batches, none of one image
        pixels = rng.integers(0, 256, size=(40 + 4 * i, 50, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        records.append(PetRecord(folder / f"{i}.png", i % 2, "breed", None))
    return decode_once(records)


def test_statistics_are_the_average_over_the_images_at_that_size(images) -> None:
    torch.manual_seed(0)
    model = TinyNet().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recalibrated = recalibrate_batchnorm(model, images, 24, batch_size=3)

    assert not recalibrated.training and recalibrated is not model
    for key, value in model.state_dict().items():  # the original is untouched
        assert torch.equal(value, before[key]), key
    for key in ("conv1.weight", "bn1.weight", "bn1.bias", "fc.weight"):  # weights are kept
        assert torch.equal(recalibrated.state_dict()[key], before[key]), key
    assert recalibrated.bn1.momentum == model.bn1.momentum

    inputs = torch.stack([size_transform(24)(images[i][0]) for i in range(len(images))])
    with torch.no_grad():
        features = model.conv1(inputs)  # what bn1 normalises
    batch_means = [part.mean(dim=(0, 2, 3)) for part in features.tensor_split(3)]
    expected = torch.stack(batch_means).mean(0)  # momentum=None: plain average of batches
    assert torch.allclose(recalibrated.bn1.running_mean, expected, atol=1e-5)
    assert not torch.allclose(recalibrated.bn1.running_mean, before["bn1.running_mean"])
    at_other_size = recalibrate_batchnorm(model, images, 40, batch_size=3)
    assert not torch.allclose(at_other_size.bn1.running_var, recalibrated.bn1.running_var)


def test_a_model_without_batchnorm_is_an_error(images) -> None:
    with pytest.raises(ValueError, match="no BatchNorm"):
        recalibrate_batchnorm(torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1)), images, 24)

"""Pet share of training crops (course_utils.crop_statistics), on masks whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from course_utils.crop_statistics import pet_share_of_crops
from course_utils.data import PetRecord


def _record(folder, name: str, trimap: np.ndarray) -> PetRecord:
    Image.fromarray(trimap).save(folder / f"{name}.png")
    return PetRecord(folder / f"{name}.png", 0, "breed", folder / f"{name}.png")


def test_shares_match_masks_whose_answer_is_known(tmp_path) -> None:
    all_pet = _record(tmp_path, "pet", np.full((60, 80), 1, np.uint8))
    no_pet = _record(tmp_path, "background", np.full((60, 80), 2, np.uint8))
    left_half = np.full((60, 80), 2, np.uint8)
    left_half[:, :40] = 3  # the border class counts as pet
    half = _record(tmp_path, "half", left_half)

    shares = pet_share_of_crops([all_pet, no_pet, half], (0.08, 1.0), crops_per_image=50)
    assert shares.shape == (3, 50)
    assert (shares[0] == 1).all() and (shares[1] == 0).all()
    assert 0 < shares[2].mean() < 1 and ((shares[2] == 0) | (shares[2] == 1)).any()
    # whole-image crops of the half mask are about half pet
    wide = pet_share_of_crops([half], (0.99, 1.0), crops_per_image=10)
    assert wide == pytest.approx(np.full((1, 10), 0.5), abs=0.05)


def test_the_same_seed_draws_the_same_crops(tmp_path) -> None:
    trimap = np.random.default_rng(0).choice([1, 2], size=(50, 70)).astype(np.uint8)
    record = _record(tmp_path, "noise", trimap)
    first = pet_share_of_crops([record], (0.08, 1.0), crops_per_image=8, seed=3)
    assert np.array_equal(
        first, pet_share_of_crops([record], (0.08, 1.0), crops_per_image=8, seed=3)
    )
    assert not np.array_equal(
        first, pet_share_of_crops([record], (0.08, 1.0), crops_per_image=8, seed=4)
    )

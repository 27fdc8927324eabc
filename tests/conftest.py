"""Fixtures shared by the training and cache tests."""

from __future__ import annotations

import pytest

from course_utils import config, runs


@pytest.fixture
def interrupt_after(monkeypatch):
    """``interrupt_after(n)``: the next fit raises KeyboardInterrupt once epoch ``n`` is saved."""

    def arm(epochs: int) -> None:
        save = runs.RunFolder.save_epoch

        def save_then_stop(folder, last, history, *, improved):
            save(folder, last, history, improved=improved)
            if len(history.records) == epochs:
                monkeypatch.setattr(runs.RunFolder, "save_epoch", save)
                raise KeyboardInterrupt

        monkeypatch.setattr(runs.RunFolder, "save_epoch", save_then_stop)

    return arm


@pytest.fixture
def tiny_profile(tmp_path, monkeypatch) -> config.Profile:
    """A 32 px, 2-epoch profile on 16 bundled images per split; artifacts under ``tmp_path``."""
    monkeypatch.setenv(config.ARTIFACTS_DIR_ENV, str(tmp_path / "artifacts"))
    monkeypatch.setenv(config.DEVICE_ENV, "cpu")
    return config.Profile(
        name="tiny",
        description="tests",
        dataset="bundled",
        image_size=32,
        batch_size=8,
        epochs=2,
        max_images_per_split=16,
        pretrained=False,
        demo_image_size=32,
        demo_depths=(8,),
        demo_steps=1,
    )

"""Checkpoint files: atomic saving, safe loading with clear errors, format versions, RNG state;
and rebuilding a model from one (``runs.model_from_checkpoint``)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from course_utils import checkpoints
from course_utils.checkpoints import (
    CheckpointError,
    CheckpointNotFound,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from course_utils.errors import CourseError
from course_utils.models import build_model
from course_utils.runs import model_from_checkpoint


def _state(arch: str = "resnet18", num_classes: int = 2) -> dict:
    return {"arch": arch, "num_classes": num_classes, "model": {}, "epoch": 3}


def test_save_then_load_round_trips_plain_values(tmp_path):
    state = {**_state(), "history": [{"epoch": 1, "val_acc": 0.5}], "x": torch.arange(3)}
    path = save_checkpoint(tmp_path / "run" / "last.pt", state)
    loaded = load_checkpoint(path)
    assert loaded["format"] == checkpoints.CHECKPOINT_FORMAT
    assert loaded["history"] == state["history"] and torch.equal(loaded["x"], state["x"])
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", _state())

    def crash(obj, file):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _state(num_classes=5))
    assert load_checkpoint(path)["num_classes"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_missing_file_names_the_path_and_nearby_checkpoints(tmp_path):
    save_checkpoint(tmp_path / "best.pt", _state())
    with pytest.raises(CheckpointNotFound, match=r"No checkpoint at .*last\.pt.*best\.pt") as info:
        load_checkpoint(tmp_path / "last.pt")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, CourseError)


def test_another_format_version_is_refused_before_anything_is_read(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({**_state(), "format": "course_utils.checkpoint/1", "config": {}}, path)
    with pytest.raises(CheckpointError, match=r"format 'course_utils.checkpoint/1'.*Retrain it"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b""])
def test_corrupt_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable PyTorch"):
        load_checkpoint(path)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", {**_state(), "w": torch.zeros(1000)})
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


@dataclass
class _Payload:
    value: int


def test_pickled_python_objects_are_refused(tmp_path):
    path = tmp_path / "unsafe.pt"
    torch.save({"format": checkpoints.CHECKPOINT_FORMAT, "payload": _Payload(1)}, path)
    with pytest.raises(
        CheckpointError, match=r"holds code objects \(.*_Payload\).*may be malicious"
    ):
        load_checkpoint(path)


def test_a_bare_state_dict_gets_a_hint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(CheckpointError, match="bare state_dict"):
        load_checkpoint(path)


def test_architecture_and_class_count_mismatches_are_explained(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", _state("resnet101", 2))
    with pytest.raises(
        CheckpointError, match="is resnet101 with 2 classes; you asked for resnet50"
    ):
        load_checkpoint(path, expected_arch="resnet50")
    with pytest.raises(CheckpointError, match="you asked for resnet101 with 37 classes"):
        load_checkpoint(path, expected_num_classes=37)
    assert load_checkpoint(path, expected_arch="resnet101", expected_num_classes=2)


def test_model_from_checkpoint_rebuilds_the_stored_network(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=3).eval()
    path = save_checkpoint(
        tmp_path / "best.pt",
        {"arch": "resnet18", "num_classes": 3, "model": model.state_dict(), "epoch": 1},
    )
    rebuilt, meta = model_from_checkpoint(path)
    assert not rebuilt.training and meta["epoch"] == 1 and "model" not in meta
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_rng_state_survives_a_safe_save_and_load(tmp_path):
    random.seed(1)
    np.random.seed(1)  # noqa: NPY002 - the global RNG is what training code draws from
    torch.manual_seed(1)
    path = save_checkpoint(tmp_path / "rng.pt", {**_state(), "rng": capture_rng_state()})

    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()  # noqa: NPY002

    first = draw()
    restore_rng_state(load_checkpoint(path)["rng"])
    assert draw() == first

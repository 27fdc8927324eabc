"""Profiles, seeding, device and paths."""

import dataclasses
import logging
from pathlib import Path

import pytest
import torch

from course_utils import config
from course_utils.errors import CourseError


def test_every_profile_is_reachable_by_name():
    for name, profile in config.PROFILES.items():
        assert config.get_profile(name) is profile
        assert profile.name == name


def test_profile_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(config.PROFILE_ENV, "smoke")
    assert config.get_profile().name == "smoke"


def test_default_profile_follows_the_hardware(monkeypatch):
    monkeypatch.delenv(config.PROFILE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert config.get_profile().name == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert config.get_profile().name == "gpu"


def test_unknown_profile_lists_the_valid_ones(monkeypatch):
    monkeypatch.setenv(config.PROFILE_ENV, "laptop")
    with pytest.raises(ValueError, match="'laptop'.*smoke, cpu, gpu"):
        config.get_profile()


def test_profiles_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.get_profile("cpu").epochs = 1


def test_profiles_grow_from_smoke_to_gpu():
    smoke, cpu, gpu = (config.get_profile(n) for n in ("smoke", "cpu", "gpu"))
    assert smoke.image_size < cpu.image_size < gpu.image_size
    assert smoke.epochs < cpu.epochs and smoke.demo_steps < cpu.demo_steps
    assert smoke.max_images_per_split is not None and cpu.max_images_per_split is None


def test_seed_everything_makes_torch_reproducible():
    config.seed_everything(123)
    first = torch.randn(4)
    generator = config.seed_everything(123)
    assert torch.equal(first, torch.randn(4))
    assert generator.initial_seed() == 123


def test_device_override(monkeypatch):
    monkeypatch.setenv(config.DEVICE_ENV, "cpu")
    assert config.get_device() == torch.device("cpu")


@pytest.mark.parametrize(
    ("requested", "says"), [("gpu0", "is not a device"), ("mps", "has no mps device")]
)
def test_an_unusable_device_override_says_what_to_set(monkeypatch, requested, says):
    if requested == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has an MPS device")
    monkeypatch.setenv(config.DEVICE_ENV, requested)
    with pytest.raises(CourseError, match=says):
        config.get_device()


def test_paths_are_overridable(monkeypatch, tmp_path):
    monkeypatch.setenv(config.DATA_DIR_ENV, str(tmp_path / "d"))
    monkeypatch.setenv(config.ARTIFACTS_DIR_ENV, str(tmp_path / "a"))
    assert config.data_dir() == tmp_path / "d"
    assert config.artifacts_dir() == tmp_path / "a"


def test_default_paths_live_in_the_repository(monkeypatch):
    monkeypatch.delenv(config.DATA_DIR_ENV, raising=False)
    monkeypatch.delenv(config.ARTIFACTS_DIR_ENV, raising=False)
    root = config.repo_root()
    assert (root / "course_utils" / "config.py").is_file()
    assert config.data_dir() == root / "data"
    assert config.artifacts_dir() == root / "artifacts"


def test_environment_report_names_profile_device_and_versions():
    report = config.environment_report(config.get_profile("smoke"))
    assert report["profile"].startswith("smoke")
    assert report["torch"] == torch.__version__
    assert {"device", "torchvision", "python", "numpy"} <= set(report)


@pytest.mark.parametrize(("cores", "workers"), [(1, 0), (2, 1), (4, 3), (64, 8)])
def test_loader_workers_leave_one_core_for_the_model(monkeypatch, cores, workers):
    monkeypatch.setattr(
        config.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False
    )
    assert config.default_num_workers() == workers


def test_paths_are_shown_relative_to_the_artifacts_or_the_repository(monkeypatch, tmp_path):
    monkeypatch.setenv(config.ARTIFACTS_DIR_ENV, str(tmp_path / "art"))
    moved = config.display_path(tmp_path / "art" / "checkpoints" / "x")
    assert moved == "$COURSE_ARTIFACTS_DIR/checkpoints/x"
    monkeypatch.delenv(config.ARTIFACTS_DIR_ENV)
    default = config.repo_root() / "artifacts" / "checkpoints" / "x"
    assert config.display_path(default) == "artifacts/checkpoints/x"
    assert config.display_path(config.repo_root() / "data" / "pets") == "data/pets"
    assert config.display_path(Path("/somewhere/else")) == "/somewhere/else"
    assert config.display_path(Path.home() / ".cache" / "torch") == "~/.cache/torch"


def test_setup_logging_shows_the_package_lines_once(capsys):
    logger = logging.getLogger("course_utils.zoo")
    config.setup_logging()
    config.setup_logging()  # twice: still one handler
    logger.info("load_or_train: loaded x")
    assert capsys.readouterr().out == "load_or_train: loaded x\n"
    config.setup_logging(logging.WARNING)
    logger.info("hidden")
    assert capsys.readouterr().out == ""
    config.setup_logging()

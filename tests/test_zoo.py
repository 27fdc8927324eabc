"""load_or_train's cache: its key, its folder, and train / resume / load with a real ResNet."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

from course_utils import config, models, zoo
from course_utils.checkpoints import CheckpointError, load_checkpoint
from course_utils.data import memory, sources
from course_utils.recipe import Recipe


def key(recipe: Recipe, profile: config.Profile) -> dict:
    return zoo.cache_key(recipe, profile, zoo.training_data(recipe, profile))


def test_load_or_train_trains_resumes_then_loads(tiny_profile, tmp_path, caplog, interrupt_after):
    """The cache path end to end with a real ResNet-18 on the bundled data (32 px, 16 images)."""
    caplog.set_level("INFO", logger="course_utils")
    interrupt_after(1)
    with pytest.raises(KeyboardInterrupt):
        zoo.load_or_train("resnet18", profile=tiny_profile, progress=False)
    assert "no cached run; training resnet18 scratch, 32 px" in caplog.text
    caplog.clear()

    trained, history = zoo.load_or_train("resnet18", profile=tiny_profile, progress=False)
    assert "resuming resnet18-scratch-tiny-" in caplog.text and "after epoch 1/2" in caplog.text
    assert len(history.records) == 2 and not trained.training
    assert isinstance(trained, models.ResNet) and trained.fc.out_features == 2
    caplog.clear()

    loaded, loaded_history = zoo.load_or_train("resnet18", profile=tiny_profile, progress=False)
    assert caplog.messages[-1].startswith("load_or_train: loaded resnet18-scratch-tiny-")
    assert "(epoch 2, final val acc" in caplog.messages[-1] and "trained on cpu" in caplog.text
    assert str(tmp_path) not in caplog.text  # no absolute paths in what a notebook shows
    assert loaded_history.records == history.records and not loaded.training
    for name, tensor in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name

    folder = zoo.run_dir(key(Recipe.from_profile(tiny_profile, "resnet18"), tiny_profile))
    assert folder.parent == tmp_path / "artifacts" / "checkpoints"
    meta = load_checkpoint(folder / "best.pt")["meta"]
    assert meta["classes"] == ["cat", "dog"] and "bundled" in meta["data"]["train"]


def test_cache_folder_follows_the_recipe_and_the_data(tiny_profile):
    cfg = Recipe.from_profile(tiny_profile, "resnet50")
    folder = zoo.run_dir(key(cfg, tiny_profile))
    assert folder == zoo.run_dir(key(cfg, tiny_profile))
    assert folder.name.startswith("resnet50-scratch-tiny-")
    other = Recipe.from_profile(tiny_profile, "resnet50", lr=1e-3)
    assert zoo.run_dir(key(other, tiny_profile)) != folder
    full = dataclasses.replace(zoo.training_data(cfg, tiny_profile), dataset="oxford-iiit-pet")
    assert zoo.run_dir(zoo.cache_key(cfg, tiny_profile, full)) != folder


def test_the_committed_notebooks_cache_folders_keep_their_names():
    """The cpu runs notebooks 04-07 load: a new recipe field must not rename (and so retrain)
    them."""
    cpu = config.get_profile("cpu")
    expected = {
        "resnet50": "resnet50-scratch-cpu-e10b7126",
        "resnet101": "resnet101-scratch-cpu-81a9d030",
    }
    for arch, name in expected.items():
        assert zoo.run_dir(key(Recipe.from_profile(cpu, arch), cpu)).name == name
    balanced = Recipe.from_profile(cpu, "resnet50", breed_balanced=True)
    assert zoo.run_dir(key(balanced, cpu)).name != expected["resnet50"]


def test_a_scale_augmented_run_caches_its_crops_from_the_files(tiny_profile):
    """With crop_scale (0.08, 1) the smallest 32 px crop needs a 131 px shorter side, not the
    default recipe's 63 px: the key records it, so runs cached at the old side are not reused."""
    standard = key(Recipe.from_profile(tiny_profile, "resnet50"), tiny_profile)
    wider = key(Recipe.from_profile(tiny_profile, "resnet50", crop_scale=(0.08, 1.0)), tiny_profile)
    assert (standard["data"]["cache_side"], wider["data"]["cache_side"]) == (63, 131)
    assert zoo.run_dir(wider) != zoo.run_dir(standard)


def test_a_cache_side_capped_by_the_memory_budget_is_in_the_key(tiny_profile, monkeypatch, caplog):
    cfg = Recipe.from_profile(tiny_profile, "resnet50", crop_scale=(0.08, 1.0))
    uncapped = key(cfg, tiny_profile)
    small_budget = functools.partial(memory.capped_cache_side, budget_bytes=32 * 100 * 100 * 3)
    monkeypatch.setattr(zoo, "capped_cache_side", small_budget)
    capped = key(cfg, tiny_profile)
    assert capped["data"]["cache_side"] < uncapped["data"]["cache_side"]
    assert zoo.run_dir(capped) != zoo.run_dir(uncapped)
    assert "memory" in caplog.text.lower()  # announced


def test_the_data_source_is_resolved_once_per_call(tiny_profile, monkeypatch):
    calls = []
    resolve = zoo.dataset_in_use

    def counted(profile):
        calls.append(profile.name)
        return resolve(profile)

    monkeypatch.setattr(zoo, "dataset_in_use", counted)
    monkeypatch.setattr(sources, "dataset_in_use", counted)
    zoo.load_or_train("resnet18", profile=tiny_profile, progress=False)  # trains
    assert calls == ["tiny"]
    zoo.load_or_train("resnet18", profile=tiny_profile, progress=False)  # loads
    assert calls == ["tiny", "tiny"]


def test_an_old_format_run_is_refused_with_a_clear_message(tiny_profile):
    cfg = Recipe.from_profile(tiny_profile, "resnet18")
    folder = zoo.run_dir(key(cfg, tiny_profile))
    folder.mkdir(parents=True)
    state = {
        "format": "course_utils.checkpoint/1",
        "arch": "resnet18",
        "num_classes": 2,
        "model": {},
    }
    torch.save(state, folder / "last.pt")
    with pytest.raises(CheckpointError, match="another version of course_utils.*Retrain it"):
        zoo.load_or_train("resnet18", profile=tiny_profile, progress=False)


def test_imagenet_regime_offline_says_so_and_writes_nothing(tiny_profile, monkeypatch, tmp_path):
    def offline(spec):
        raise models.PretrainedWeightsUnavailable(
            f"Could not get the ImageNet weights for {spec.name}"
        )

    monkeypatch.setattr(models, "_imagenet_state_dict", offline)
    with pytest.raises(models.PretrainedWeightsUnavailable, match="ImageNet weights for resnet50"):
        zoo.load_or_train("resnet50", "imagenet", profile=tiny_profile, progress=False)
    assert not (tmp_path / "artifacts" / "checkpoints").exists()

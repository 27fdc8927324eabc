"""ImageNet weights through torchvision's own loading code, without the internet.

A state dict of the right shapes (torchvision's random init, perturbed) is written under the
official file name into a temporary torch.hub cache (``$TORCH_HOME/hub/checkpoints/``), which is
exactly where a download would leave it. ``build_model(..., pretrained="imagenet")`` then runs
torchvision's real path: ``WeightsEnum.get_state_dict`` -> ``torch.hub.load_state_dict_from_url``
-> finds the cached file -> ``torch.load``.

What this does NOT prove, honestly: that the real ImageNet file is intact. torchvision checks a
file's SHA-256 prefix (the ``-11ad3fa6`` in ``resnet50-11ad3fa6.pth``) only while *downloading*
and only with ``check_hash=True``; ``get_state_dict`` passes neither, and a file already in the
cache is loaded as it is, never hashed (``test_a_cached_file_is_loaded_without_a_hash_check``
pins that down). So the learner's copied file is trusted, and these tests can stand in for it.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from course_utils import models, runs, train, zoo
from course_utils.recipe import Recipe


def hub_checkpoints() -> Path:
    """torch.hub's checkpoint folder, as torchvision will look for it (honours $TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def official_file(arch: str) -> Path:
    """Where a download of ``arch``'s course weights would be cached, under the official name."""
    return hub_checkpoints() / os.path.basename(models.ARCHITECTURES[arch].weights.url)


def fake_imagenet_state(arch: str) -> dict[str, torch.Tensor]:
    """A 1000-class state dict of ``arch``'s shapes, unlike any fresh init (so loading shows)."""
    generator = torch.Generator().manual_seed(1234)
    state = getattr(torchvision.models, arch)().state_dict()
    for name, tensor in state.items():
        if name.endswith("running_var"):
            tensor.uniform_(0.5, 1.5, generator=generator)
        elif tensor.is_floating_point():
            tensor.add_(0.01 * torch.randn(tensor.shape, generator=generator))
    return state


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty torch.hub cache; downloads fail as they do offline (and never reach a network)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(torch.hub, "urlopen", offline)  # what download_url_to_file calls
    assert not hub_checkpoints().exists()
    return tmp_path / "torch"


def cache_weights(arch: str) -> dict[str, torch.Tensor]:
    """Put fake ImageNet weights for ``arch`` in the hub cache; return them."""
    state = fake_imagenet_state(arch)
    path = official_file(arch)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_imagenet_weights_file_is_where_a_download_lands(torch_home) -> None:
    """Notebook 04 decides "fine-tune from the cache" or "from scratch" by this file."""
    assert not models.imagenet_weights_file("resnet50").exists()
    cache_weights("resnet50")
    assert models.imagenet_weights_file("resnet50") == official_file("resnet50")
    assert models.imagenet_weights_file("resnet50").is_relative_to(torch_home)
    assert models.imagenet_weights_file("resnet50").exists()


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_imagenet_weights_load_through_torchvision_from_the_hub_cache(
    arch, torch_home, monkeypatch
):
    state = cache_weights(arch)
    loaded_paths: list[str] = []
    load = torch.load

    def spy_load(path, *args, **kwargs):
        loaded_paths.append(os.fspath(path))
        return load(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy_load)

    model = models.build_model(arch, num_classes=2, pretrained="imagenet")

    assert loaded_paths == [str(official_file(arch))]  # torchvision read the cached file itself
    ours = model.state_dict()
    backbone = [name for name in state if not name.startswith("fc.")]
    for name in backbone:
        assert torch.equal(ours[name], state[name]), name
    assert model.fc.out_features == 2 and model.fc.weight.shape[1] == state["fc.weight"].shape[1]
    full = models.build_model(arch, pretrained="imagenet")  # 1000 classes: the file's own head
    assert all(torch.equal(full.state_dict()[name], state[name]) for name in state)


def test_a_cached_file_is_loaded_without_a_hash_check(torch_home):
    """The name's hash prefix does not match our file, and torchvision loads it anyway."""
    cache_weights("resnet18")
    path = official_file("resnet18")
    name_prefix = path.stem.rsplit("-", 1)[1]  # resnet18-f37072fd -> f37072fd
    assert not hashlib.sha256(path.read_bytes()).hexdigest().startswith(name_prefix)
    models.build_model("resnet18", pretrained="imagenet")  # no error: the cache is trusted


def test_fine_tuning_from_imagenet_trains_the_head_first_then_everything(
    torch_home, tiny_profile, monkeypatch, caplog
):
    """load_or_train("resnet18", "imagenet") at 32 px, 4 epochs: epoch 1 trains only ``fc`` (the
    backbone, BN statistics included, stays exactly the file's), epochs 2-4 train every layer;
    the run is cached and its checkpoint rebuilds the same network, offline, without the file."""
    caplog.set_level("INFO", logger="course_utils")
    state = cache_weights("resnet18")
    backbone = {name: tensor for name, tensor in state.items() if not name.startswith("fc.")}
    epochs_seen: list[dict[str, object]] = []
    train_one_epoch = train.train_one_epoch

    def spy(model, *args, description="train", **kwargs):
        net = models.unwrap_model(model)
        now = net.state_dict()
        epochs_seen.append(
            {
                "description": description,
                "trainable": {n for n, p in net.named_parameters() if p.requires_grad},
                "backbone_bn_training": net.bn1.training,
                "backbone_is_the_file": all(torch.equal(now[n], t) for n, t in backbone.items()),
            }
        )
        return train_one_epoch(model, *args, description=description, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", spy)

    model, history = zoo.load_or_train("resnet18", "imagenet", profile=tiny_profile, epochs=4)

    recipe = Recipe.from_profile(tiny_profile, "resnet18", "imagenet", epochs=4)
    assert recipe.summary() in caplog.text  # the recipe line
    assert [r["epoch"] for r in history.records] == [1, 2, 3, 4]
    every = {name for name, _ in model.named_parameters()}
    head_only, *full = epochs_seen
    assert head_only["trainable"] == {"fc.weight", "fc.bias"}
    assert head_only["backbone_bn_training"] is False and "(head only)" in head_only["description"]
    assert head_only["backbone_is_the_file"]  # the pretrained start, not a fresh init
    assert len(full) == 3 and all(e["trainable"] == every for e in full)
    assert full[0]["backbone_is_the_file"]  # the head-only epoch left the backbone untouched
    assert all(e["backbone_bn_training"] for e in full) and not full[-1]["backbone_is_the_file"]

    (folder,) = (Path(os.environ["COURSE_ARTIFACTS_DIR"]) / "checkpoints").iterdir()
    assert folder.name.startswith("resnet18-imagenet-tiny-")
    reloaded, info = runs.model_from_checkpoint(
        folder / runs.LAST, expected_arch="resnet18", expected_num_classes=2
    )
    assert info["recipe"] == recipe.to_dict() and info["epoch"] == 4
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for name, tensor in model.state_dict().items():  # the same weights, bit for bit
        assert torch.equal(reloaded.state_dict()[name], tensor)
    with torch.no_grad():  # the trained copy keeps its channels-last weights: other kernels
        torch.testing.assert_close(reloaded(images), model.eval()(images))

    official_file("resnet18").unlink()  # a cached run needs no weights file and no internet
    again, history_again = zoo.load_or_train("resnet18", "imagenet", profile=tiny_profile, epochs=4)
    assert history_again.records == history.records
    with torch.no_grad():
        assert torch.equal(again(images), reloaded(images))


def test_offline_without_the_file_says_where_to_copy_it(torch_home, tiny_profile):
    with pytest.raises(models.PretrainedWeightsUnavailable) as raised:
        zoo.load_or_train("resnet50", "imagenet", profile=tiny_profile)
    message = str(raised.value)
    assert str(hub_checkpoints()) in message  # the folder to copy the file into
    assert official_file("resnet50").name in message  # resnet50-11ad3fa6.pth
    assert "pretrained=None" in message  # and the offline alternative
    assert isinstance(raised.value.__cause__, urllib.error.URLError)
    checkpoints = Path(os.environ["COURSE_ARTIFACTS_DIR"]) / "checkpoints"
    assert not checkpoints.exists() or not any(checkpoints.iterdir())  # no run folder left
    assert list(hub_checkpoints().iterdir()) == []  # and no partial download

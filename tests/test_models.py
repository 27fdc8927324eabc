"""course_utils.models builds the same networks as torchvision: names, shapes, init, outputs."""

from __future__ import annotations

import functools
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision
from torch import nn

from course_utils import config, models
from course_utils.errors import CourseError

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")
IMAGENET_WEIGHTS = {
    "resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": torchvision.models.ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V2,
    "resnet101": torchvision.models.ResNet101_Weights.IMAGENET1K_V2,
}


def _randomize_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Random BN affine parameters and real running statistics (one train-mode batch).

    A fresh network's BN layers have running mean 0 and variance 1, so in eval mode a deep one
    produces huge outputs (and unit BN weights would hide a swapped weight/bias). After this,
    every tensor of the state_dict matters and the eval-mode logits are of order 1.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.1, generator=generator)
                module.reset_running_stats()
                module.momentum = None  # cumulative average: one batch sets the statistics
        model.train()
        model(torch.randn(2, 3, 64, 64, generator=generator))
    model.eval()


@functools.cache
def _ours_and_torchvision(arch: str) -> tuple[models.ResNet, nn.Module]:
    """Our network holding a copy of a torchvision network's (randomised) weights; both in eval."""
    reference = getattr(torchvision.models, arch)()
    _randomize_batchnorm(reference)
    ours = models.build_model(arch)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return ours.eval(), reference


@pytest.mark.parametrize(
    ("arch", "expected"), [("resnet50", 25_557_032), ("resnet101", 44_549_160)]
)
def test_parameter_counts_resnet50_and_resnet101(arch: str, expected: int) -> None:
    assert models.count_parameters(models.build_model(arch)) == expected


@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_count_matches_torchvision(arch: str) -> None:
    ours, reference = _ours_and_torchvision(arch)
    expected = sum(p.numel() for p in reference.parameters())
    assert models.count_parameters(ours) == expected == IMAGENET_WEIGHTS[arch].meta["num_params"]


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_names_and_shapes_match_torchvision(arch: str) -> None:
    ours, reference = _ours_and_torchvision(arch)
    assert [(k, v.shape, v.dtype) for k, v in ours.state_dict().items()] == [
        (k, v.shape, v.dtype) for k, v in reference.state_dict().items()
    ]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("zero_init_residual", [False, True])
def test_initialisation_matches_torchvision_under_the_same_seed(
    arch: str, zero_init_residual: bool
) -> None:
    torch.manual_seed(123)
    ours = models.build_model(arch, zero_init_residual=zero_init_residual).state_dict()
    torch.manual_seed(123)
    reference = getattr(torchvision.models, arch)(zero_init_residual=zero_init_residual)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(ours[name], tensor), name


@pytest.mark.parametrize("arch", ["resnet50", "resnet101"])
@pytest.mark.parametrize("size", [(224, 224), (160, 256)], ids=["224x224", "160x256"])
def test_eval_outputs_match_torchvision(arch: str, size: tuple[int, int]) -> None:
    ours, reference = _ours_and_torchvision(arch)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(x)
        actual = ours(x)
    assert actual.shape == (2, 1000)
    assert 1e-2 < expected.std().item() < 1e2  # logits of order 1: the comparison is meaningful
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=1e-5)


@pytest.mark.parametrize(
    ("arch", "last_bn", "n_blocks"), [("resnet18", "bn2", 8), ("resnet50", "bn3", 16)]
)
def test_zero_init_residual_zeroes_the_last_bn_weight_of_every_block(
    arch: str, last_bn: str, n_blocks: int
) -> None:
    model = models.build_model(arch, zero_init_residual=True)
    blocks = [m for m in model.modules() if isinstance(m, models.BasicBlock | models.Bottleneck)]
    assert len(blocks) == n_blocks
    for block in blocks:
        assert torch.count_nonzero(getattr(block, last_bn).weight) == 0
        assert torch.all(block.bn1.weight == 1)
    default = models.build_model(arch)
    for block in default.modules():
        if isinstance(block, models.BasicBlock | models.Bottleneck):
            assert torch.all(getattr(block, last_bn).weight == 1)


def test_replace_head() -> None:
    model = models.resnet50()
    body = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    assert models.replace_head(model, 2) is model
    assert (model.fc.in_features, model.fc.out_features) == (2048, 2)
    assert models.count_parameters(model) == 25_557_032 - 2049 * 1000 + 2049 * 2
    assert all(torch.equal(model.state_dict()[k], v) for k, v in body.items())
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 2)
    assert models.resnet101(num_classes=37).fc.out_features == 37


def test_count_parameters_trainable_only() -> None:
    model = models.resnet18(num_classes=2)
    model.requires_grad_(False)
    model.fc.requires_grad_(True)
    assert models.count_parameters(model, trainable_only=True) == 512 * 2 + 2
    assert models.count_parameters(model) == 11_689_512 - 513 * 1000 + 513 * 2


@pytest.mark.parametrize("arch", ARCHS)
def test_architecture_table_matches_torchvision_and_the_label(arch: str) -> None:
    spec = models.ARCHITECTURES[arch]
    reference = getattr(torchvision.models, arch)()
    stages = [getattr(reference, stage) for stage in models.RESIDUAL_STAGES]
    assert spec.stage_blocks == tuple(len(stage) for stage in stages)
    assert spec.block.__name__ == type(stages[0][0]).__name__
    # The depth in the label counts weighted layers: convs on the main path plus the fc layer.
    model = models.build_model(arch, num_classes=3)
    weighted = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear) and "downsample" not in name
    ]
    assert spec.label == f"ResNet-{len(weighted)}"
    assert model.fc.out_features == 3


def test_stage_names_are_the_networks_children_in_order() -> None:
    model = models.resnet18()
    children = [name for name, _ in model.named_children()]
    stages = tuple(name for name in children if name.startswith("layer"))
    assert stages == models.RESIDUAL_STAGES
    # The feature maps: the last module of the stem, then every residual stage.
    assert (children[children.index("layer1") - 1], *stages) == models.FEATURE_MAP_MODULES


def test_build_model_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="resnet152") as excinfo:
        models.build_model("resnet152")
    for arch in ARCHS:
        assert arch in str(excinfo.value)


@pytest.mark.parametrize("pretrained", ["imagenet1k", "IMAGENET", True, ""])
def test_bad_pretrained_value_raises_value_error(pretrained: object) -> None:
    with pytest.raises(ValueError, match="pretrained"):
        models.resnet18(pretrained=pretrained)  # type: ignore[arg-type]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    "error",
    [
        URLError("[Errno -2] Name or service not known"),
        ConnectionResetError("connection reset by peer"),
        RuntimeError("invalid hash value"),
    ],
    ids=["URLError", "OSError", "RuntimeError"],
)
def test_pretrained_offline_raises_a_helpful_error(
    monkeypatch: pytest.MonkeyPatch, arch: str, error: Exception
) -> None:
    requested = []

    def offline_download(weights: torchvision.models.WeightsEnum, **kwargs: object) -> None:
        requested.append(weights)
        raise error

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline_download)
    with pytest.raises(models.PretrainedWeightsUnavailable) as excinfo:
        models.build_model(arch, num_classes=2, pretrained="imagenet")
    weights = IMAGENET_WEIGHTS[arch]
    assert requested == [weights]
    message = str(excinfo.value)
    assert weights.url in message
    assert "offline" in message
    assert "pretrained=None" in message
    assert config.display_path(Path(torch.hub.get_dir(), "checkpoints")) in message
    assert ("damaged" in message) == isinstance(error, RuntimeError)  # hash mismatch: delete it
    assert excinfo.value.__cause__ is error
    assert isinstance(excinfo.value, CourseError)  # the command line prints it as a user error


def test_pretrained_loads_the_weights_then_replaces_the_head(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(0)
    imagenet = torchvision.models.resnet18().state_dict()
    monkeypatch.setattr(
        torchvision.models.WeightsEnum, "get_state_dict", lambda weights, **kwargs: imagenet
    )
    full = models.resnet18(pretrained="imagenet")
    for name, tensor in full.state_dict().items():
        assert torch.equal(tensor, imagenet[name]), name
    fitted = models.resnet18(pretrained="imagenet", num_classes=2)
    assert fitted.fc.out_features == 2
    assert torch.equal(fitted.conv1.weight, imagenet["conv1.weight"])
    assert torch.equal(fitted.layer4[1].bn2.running_var, imagenet["layer4.1.bn2.running_var"])


def _training_model_with_frozen_batchnorm() -> nn.Module:
    model = models.resnet18(num_classes=2).train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()  # frozen statistics inside a training model, as in fine-tuning
    return model


def test_eval_mode_restores_each_modules_own_flag() -> None:
    model = _training_model_with_frozen_batchnorm()
    before = {name: m.training for name, m in model.named_modules()}
    assert any(before.values()) and not all(before.values())
    with models.eval_mode(model) as inside:
        assert inside is model
        assert not any(m.training for m in model.modules())
    assert {name: m.training for name, m in model.named_modules()} == before


def test_eval_mode_restores_the_flags_after_an_error() -> None:
    model = _training_model_with_frozen_batchnorm()
    before = {name: m.training for name, m in model.named_modules()}
    with pytest.raises(RuntimeError), models.eval_mode(model):
        model(torch.randn(1, 4, 32, 32))  # 4 channels: the stem refuses them
    assert {name: m.training for name, m in model.named_modules()} == before

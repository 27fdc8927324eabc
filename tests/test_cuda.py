"""What only a CUDA GPU reaches: fp16 + GradScaler, bf16, channels-last, peak memory, pinned copies,
and resuming a run across devices. Skipped without CUDA (``scripts/gpu_check.sh`` runs them).

A tiny network on 16 random 32 px images: each test takes a second or two on any GPU.
"""

from __future__ import annotations

import math

import pytest
import torch
from tiny import TinyNet
from torch.utils.data import Dataset

from course_utils import config
from course_utils.checkpoints import load_checkpoint
from course_utils.data import make_loader
from course_utils.recipe import Recipe, make_optimizer, make_scheduler
from course_utils.runtime import Runtime
from course_utils.train import fit, train_one_epoch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
needs_bf16 = pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
    reason="needs a CUDA GPU with bf16 support",
)

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


class Pictures(Dataset):
    """16 fixed random 32 px images; the "dogs" are less red, so there is something to learn."""

    def __init__(self, n: int = 16) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 3, 32, 32, generator=generator)
        self.images[n // 2 :, 0] /= 2
        self.labels = [0] * (n // 2) + [1] * (n - n // 2)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], self.labels[i]


def loaders(batch_size: int = 8):
    train_loader = make_loader(Pictures(), batch_size, train=True, seed=0, num_workers=0)
    return train_loader, make_loader(Pictures(), batch_size, train=False, num_workers=0)


def tiny_recipe(**overrides) -> Recipe:
    return Recipe(
        **{"arch": "resnet18", "image_size": 32, "batch_size": 8, "epochs": 2, **overrides}
    )


def tiny_fit(folder, recipe, runtime, model=None, **kwargs):
    torch.manual_seed(0)
    model = model or TinyNet()
    history = fit(
        model, *loaders(), recipe, checkpoint_dir=folder, runtime=runtime, progress=False, **kwargs
    )
    return model, history


def output_dtypes(model: TinyNet) -> list[torch.dtype]:
    """The dtypes of ``fc``'s outputs, one per forward pass from now on."""
    dtypes: list[torch.dtype] = []
    model.fc.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    return dtypes


def test_fp16_with_grad_scaler_clips_the_true_gradients():
    """Unscale before clip: after the last step the gradients left are ~``clip`` in true units.

    Without ``scaler.unscale_`` before clipping, the clip would bound the *scaled* gradients and
    the step's own unscaling would leave ``clip / scale`` (here 1/4096 of it).
    """
    clip = 1e-3  # far below this network's true gradient norm, so the clip always acts
    recipe = tiny_recipe(amp="fp16", grad_clip=clip)
    runtime = Runtime(CUDA, torch.float16, channels_last=False)
    train_loader, _ = loaders()
    torch.manual_seed(0)
    model = TinyNet().to(CUDA).train()
    dtypes = output_dtypes(model)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = make_optimizer(model, recipe)
    scheduler = make_scheduler(optimizer, recipe, len(train_loader))
    # A real scale (>> 1) that this tiny network cannot overflow, so no step is skipped.
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**12)

    stats = train_one_epoch(model, train_loader, optimizer, scheduler, scaler, recipe, runtime)

    assert set(dtypes) == {torch.float16} and math.isfinite(stats["train_loss"])
    assert scaler.get_scale() == 2.0**12  # no overflow: every step was taken with that scale
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert clip * 0.99 <= float(norm) <= clip * 1.01
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_fit_in_fp16_keeps_the_scaler_state(tmp_path):
    recipe = tiny_recipe(amp="fp16")
    runtime = Runtime.resolve(recipe, CUDA)
    assert runtime.autocast == torch.float16
    _, history = tiny_fit(tmp_path / "run", recipe, runtime)
    assert all(math.isfinite(r["train_loss"]) for r in history.records)
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["scaler"]["scale"] > 1  # saved, so a resumed fp16 run keeps its scale
    assert last["runtime"] == {"device": "cuda", "autocast": "float16", "channels_last": True}


@needs_bf16
def test_bf16_autocast_needs_no_scaler(tmp_path):
    recipe = tiny_recipe(amp="bf16")
    runtime = Runtime.resolve(recipe, CUDA)
    assert runtime.autocast == torch.bfloat16
    assert Runtime.resolve(tiny_recipe(amp="auto"), CUDA).autocast == torch.bfloat16
    model = TinyNet()
    dtypes = output_dtypes(model)
    _, history = tiny_fit(tmp_path / "run", recipe, runtime, model=model)
    assert dtypes and set(dtypes) == {torch.bfloat16}  # training and validation passes
    assert all(math.isfinite(r["train_loss"]) for r in history.records)
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["scaler"] == {} and last["runtime"]["autocast"] == "bfloat16"


def test_channels_last_on_cuda_weights_and_input(tmp_path):
    recipe = tiny_recipe()
    runtime = Runtime.resolve(recipe, CUDA)
    assert runtime.channels_last  # the default on CUDA
    model = TinyNet()
    inputs: list[tuple[bool, bool]] = []
    model.conv1.register_forward_pre_hook(
        lambda module, args: inputs.append(
            (args[0].is_cuda, args[0].is_contiguous(memory_format=torch.channels_last))
        )
    )
    tiny_fit(tmp_path / "run", recipe, runtime, model=model)
    assert inputs and all(on_gpu and nhwc for on_gpu, nhwc in inputs)
    assert model.conv1.weight.is_cuda
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_peak_gpu_memory_is_recorded_per_epoch(tmp_path):
    big = torch.empty(2**26, device=CUDA)  # 256 MiB before the run: must not count in its peaks
    del big
    model, history = tiny_fit(tmp_path / "run", tiny_recipe(), Runtime.resolve(tiny_recipe(), CUDA))
    assert "max_memory_allocated" in history.memory_measure
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    peaks = [r["peak_memory_mb"] for r in history.records]
    assert len(peaks) == 2 and all(weights_mb <= peak < 256 for peak in peaks)


def test_non_blocking_copies_from_pinned_memory_give_the_same_tensors(monkeypatch):
    monkeypatch.setenv(config.DEVICE_ENV, "cuda")  # make_loader pins memory for CUDA
    train_loader, _ = loaders()
    for images, labels in train_loader:
        assert images.is_pinned() and labels.is_pinned()
        gpu_images = images.to(CUDA, non_blocking=True, memory_format=torch.channels_last)
        gpu_labels = labels.to(CUDA, non_blocking=True)
        torch.cuda.synchronize()
        assert torch.equal(gpu_images.cpu(), images) and torch.equal(gpu_labels.cpu(), labels)
    large = torch.randn(2**24, generator=torch.Generator().manual_seed(0)).pin_memory()
    copy = large.to(CUDA, non_blocking=True)  # 64 MiB: really asynchronous
    torch.cuda.synchronize()
    assert torch.equal(copy.cpu(), large)


@pytest.mark.parametrize(("first", "then"), [("cuda", "cpu"), ("cpu", "cuda")])
def test_a_run_resumes_on_the_other_device(tmp_path, interrupt_after, first, then):
    """1 epoch on ``first``, interrupted, then resumed to the end on ``then``. The AMP policy is
    in the recipe (the same on both); only the runtime differs: fp16 + channels-last on CUDA."""
    recipe = tiny_recipe(amp="fp16")
    runtimes = {"cuda": Runtime(CUDA, torch.float16, True), "cpu": Runtime(CPU, None, False)}
    folder = tmp_path / "run"
    interrupt_after(1)
    with pytest.raises(KeyboardInterrupt):
        tiny_fit(folder, recipe, runtimes[first])
    stopped = load_checkpoint(folder / "last.pt")
    assert stopped["epoch"] == 1 and stopped["runtime"]["device"] == first
    assert bool(stopped["scaler"]) == (first == "cuda")

    model, history = tiny_fit(folder, recipe, runtimes[then], resume=True)

    assert [r["epoch"] for r in history.records] == [1, 2]
    assert history.records[0] == stopped["history"][0]  # epoch 1 is the first device's
    last = load_checkpoint(folder / "last.pt")
    assert last["epoch"] == 2 and last["runtime"]["device"] == then
    assert all(p.device.type == then and torch.isfinite(p).all() for p in model.parameters())
    assert math.isfinite(history.records[1]["train_loss"])

"""Train-step time of course_utils' ResNets vs torchvision's, measured side by side.

One train step = forward + cross-entropy + backward + SGD step. Both networks hold the same
weights and see the same batch; after warm-up the steps are interleaved (ours, torchvision, ours,
...) so that drift (thermal, other processes) hits both alike, and the medians are compared.

    python benchmarks/bench_train_step.py  # resnet50 and resnet101, batch 16 at 128 px
    python benchmarks/bench_train_step.py --batch-size 64 --image-size 224 --amp --channels-last
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from collections.abc import Callable

import torch
import torchvision
from torch import nn

from course_utils import config, models, timing


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--arch", nargs="+", default=["resnet50", "resnet101"], choices=list(models.ARCHITECTURES)
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per network")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per network")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    parser.add_argument("--amp", action="store_true", help="autocast: fp16 on CUDA, bf16 on CPU")
    return parser.parse_args()


def make_train_step(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, amp: bool
) -> Callable[[], None]:
    """A closure running one SGD train step of ``model`` on the fixed batch."""
    device = images.device
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=amp and amp_dtype == torch.float16)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        autocast = torch.autocast(device.type, dtype=amp_dtype) if amp else contextlib.nullcontext()
        with autocast:
            loss = loss_fn(model(images), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def bench(arch: str, args: argparse.Namespace, device: torch.device) -> None:
    """Print the side-by-side table for one architecture."""
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    ours = models.build_model(arch)
    reference = getattr(torchvision.models, arch)()
    reference.load_state_dict(ours.state_dict(), strict=True)  # same starting weights
    networks = {"ours": ours, "torchvision": reference}
    generator = torch.Generator().manual_seed(0)
    size = (args.batch_size, 3, args.image_size, args.image_size)
    images = torch.randn(size, generator=generator).to(device, memory_format=memory_format)
    labels = torch.randint(0, 1000, (args.batch_size,), generator=generator).to(device)
    steps = {}
    for name, model in networks.items():
        model.to(device, memory_format=memory_format).train()
        steps[name] = make_train_step(model, images, labels, args.amp)
    times = timing.time_interleaved(steps, device, warmup=args.warmup, repeats=args.repeats)

    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"\n{arch}: batch {args.batch_size} x {args.image_size} px, median of {args.repeats}")
    print(f"{'':<12} {'ms/step':>9} {'img/s':>8} {'min ms':>8} {'max ms':>8}")
    for name, t in times.items():
        img_s = args.batch_size / median[name]
        print(
            f"{name:<12} {1e3 * median[name]:>9.1f} {img_s:>8.1f} "
            f"{1e3 * min(t):>8.1f} {1e3 * max(t):>8.1f}"
        )
    print(f"ratio ours/torchvision (time per step): {median['ours'] / median['torchvision']:.3f}")


def main() -> None:
    args = parse_args()
    device = config.get_device()
    torch.backends.cudnn.benchmark = True
    print(
        f"device {device}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"{torch.get_num_threads()} CPU threads, amp={args.amp}, channels_last={args.channels_last}"
    )
    print(f"warm-up {args.warmup} steps each, then {args.repeats} interleaved timed steps each")
    for arch in args.arch:
        bench(arch, args, device)


if __name__ == "__main__":
    main()

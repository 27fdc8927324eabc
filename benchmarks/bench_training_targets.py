"""The training targets of the course, measured and printed side by side.

For each network at a profile: wall time of its training run (from the run's history; the run is
taken from ``load_or_train``'s cache, or trained now) and test accuracy with its 95% bootstrap
interval, next to the targets (cpu profile, 2 cores: ResNet-50 in <= 15 minutes and >= 78%).
On CUDA it also times the course's training loop against a bare torchvision loop with mixed
precision and channels-last, interleaved in one run (target: within 10%).

    python benchmarks/bench_training_targets.py --profile cpu
    python benchmarks/bench_training_targets.py --loops-only --amp fp16  # CUDA loops only, T4-style
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
import torchvision

from course_utils import config, data, evaluate, models, recipe, timing, train, zoo
from course_utils.runtime import Runtime

TARGETS = {"cpu": {"resnet50": (15.0, 0.78)}}  # profile -> arch -> (max minutes, min accuracy)


def test_split_accuracy(model: torch.nn.Module, profile: config.Profile) -> str:
    """Accuracy on the profile's test split, with its 95% bootstrap interval."""
    records, _ = data.get_records(profile, "test")
    dataset = data.PetDataset(records, data.eval_transform(profile.image_size))
    loader = data.make_loader(dataset, profile.batch_size, train=False, num_workers=0)
    return evaluate.format_accuracy(evaluate.predict(model, loader).correct)


def report_runs(profile: config.Profile, archs: list[str]) -> None:
    """Training time and test accuracy of each network, next to the profile's targets."""
    for arch in archs:
        model, history = zoo.load_or_train(arch, profile=profile, progress=False)
        minutes = sum(r["epoch_seconds"] for r in history.records) / 60
        images_per_s = statistics.median(r["images_per_s"] for r in history.records)
        accuracy = test_split_accuracy(model, profile)
        line = (
            f"{arch:>10}: trained {len(history.records)} epochs in {minutes:.1f} min "
            f"({images_per_s:.1f} img/s median), test accuracy {accuracy}"
        )
        target = TARGETS.get(profile.name, {}).get(arch)
        if target:
            line += f"; target <= {target[0]:g} min and >= {target[1]:.0%}"
        print(line)


def bare_step(model, optimizer, scaler, images, labels, label_smoothing: float, dtype) -> None:
    """The reference: a plain mixed-precision, channels-last torchvision training step (with a
    gradient scaler in fp16; a disabled scaler is a no-op in bf16)."""
    with torch.autocast("cuda", dtype=dtype):
        loss = F.cross_entropy(model(images), labels, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def compare_loops_on_cuda(
    arch: str, size: int, batch: int, steps: int, rounds: int, amp: str = "bf16"
) -> None:
    """Images/s of ``train.train_one_epoch`` vs :func:`bare_step`, interleaved round by round,
    both in ``amp`` ("bf16", or "fp16" with a GradScaler as on a T4) and channels-last."""
    device = torch.device("cuda")
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 2, (batch,), device=device)
    cfg = recipe.Recipe(arch, image_size=size, batch_size=batch, epochs=1, amp=amp)
    dtype = recipe.autocast_dtype(amp, device)
    runtime = Runtime(device, dtype, channels_last=True)
    loader = [(images, labels)] * steps
    ours = recipe.build_model_for(cfg).to(device, memory_format=torch.channels_last).train()
    ours_opt = recipe.make_optimizer(ours, cfg)
    scheduler = recipe.make_scheduler(ours_opt, cfg, steps * (rounds + 1))
    ours_scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    bare = getattr(torchvision.models, arch)(num_classes=2).to(
        device, memory_format=torch.channels_last
    )
    bare_opt = torch.optim.AdamW(bare.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    bare_scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

    def ours_epoch() -> None:
        train.train_one_epoch(ours, loader, ours_opt, scheduler, ours_scaler, cfg, runtime)

    def bare_epoch() -> None:
        for x, y in loader:
            x = x.contiguous(memory_format=torch.channels_last)
            bare_step(bare, bare_opt, bare_scaler, x, y, cfg.label_smoothing, dtype)

    # round 1 warms up both; then the rounds alternate ours, bare, ours, ...
    epochs = {"ours": ours_epoch, "bare": bare_epoch}
    times = timing.time_interleaved(epochs, device, warmup=1, repeats=rounds)
    ours_rate, bare_rate = (steps * batch / statistics.median(times[n]) for n in ("ours", "bare"))
    print(
        f"{arch:>10} on {torch.cuda.get_device_name(device)}, {size} px, batch {batch}, {amp}: "
        f"course loop {ours_rate:.0f} img/s, bare torchvision+AMP+channels-last "
        f"{bare_rate:.0f} img/s, ratio {ours_rate / bare_rate:.3f} (target >= 0.90)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=list(config.PROFILES), default=None)
    parser.add_argument(
        "--archs", nargs="+", default=["resnet50", "resnet101"], choices=list(models.ARCHITECTURES)
    )
    parser.add_argument("--gpu-steps", type=int, default=30)
    parser.add_argument("--gpu-rounds", type=int, default=5)
    parser.add_argument(
        "--amp",
        choices=["bf16", "fp16"],
        default="bf16",
        help="GPU loops: autocast dtype "
        "(fp16 adds a GradScaler to both loops, as on a T4; default: bf16)",
    )
    parser.add_argument(
        "--loops-only", action="store_true", help="skip the training runs: only the GPU loops"
    )
    args = parser.parse_args()
    profile = config.get_profile(args.profile)
    config.print_environment(profile)
    if not args.loops_only:
        report_runs(profile, args.archs)
    if not torch.cuda.is_available():
        print("GPU loop target: not measured (no CUDA device on this machine).")
        return
    for arch in args.archs:
        compare_loops_on_cuda(arch, 224, 64, args.gpu_steps, args.gpu_rounds, args.amp)


if __name__ == "__main__":
    main()

"""Loader images/s (from the files vs from memory, 0 and N workers) against model images/s.

The cpu profile's training set-up: the bundled train split, ``train_transform(128)``, batch 32.
Each loader runs one warm-up batch (which also starts its workers) and hands out the batches its
workers prefetched meanwhile, then ``--batches`` timed batches (across epochs if needed). Each
model runs one warm-up train step (forward, cross-entropy, backward, AdamW) on a random batch of
the same shape, then ``--steps`` timed steps. A ratio loader ÷ model of at least 1 means the
loader keeps up. On a CPU the loader and the model share the cores, so the loader's milliseconds
per image with 0 workers (all of its work, in the main process) are also milliseconds the model
does not get.

    python benchmarks/bench_data_loader.py
    python benchmarks/bench_data_loader.py --image-size 224 --batch-size 64 --steps 5
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

import torch
import torchvision
from torch import nn
from torch.utils.data import Dataset

from course_utils import config
from course_utils.data import (
    CachedPetDataset,
    PetDataset,
    bundled_records,
    cache_side_for,
    make_loader,
    train_transform,
)
from course_utils.models import build_model

ARCHS: tuple[str, ...] = ("resnet50", "resnet101")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=10, help="timed batches per loader")
    parser.add_argument("--steps", type=int, default=3, help="timed train steps per model")
    return parser.parse_args()


def loader_images_per_s(dataset: Dataset, batch_size: int, workers: int, batches: int) -> float:
    """Images/s of the course's training loader over ``dataset``, after the warm-up."""
    loader = make_loader(dataset, batch_size, train=True, num_workers=workers)
    stream = itertools.chain.from_iterable(itertools.repeat(loader))  # epoch after epoch
    for _ in range(1 + workers * (loader.prefetch_factor or 0)):  # warm-up, drain the prefetch
        next(stream)
    start = time.perf_counter()
    images = sum(len(labels) for _, labels in itertools.islice(stream, batches))
    return images / (time.perf_counter() - start)


def model_images_per_s(arch: str, image_size: int, batch_size: int, steps: int) -> float:
    """Training images/s of ``arch`` (2 classes, AdamW) on a random batch, after one warm-up."""
    torch.manual_seed(0)
    model = build_model(arch, num_classes=2).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    images = torch.randn(batch_size, 3, image_size, image_size)
    labels = torch.randint(0, 2, (batch_size,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(images), labels).backward()
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    args = parse_args()
    records = bundled_records("train")
    transform = train_transform(args.image_size)
    side = cache_side_for(args.image_size)
    start = time.perf_counter()
    cached = CachedPetDataset(records, transform, cache_side=side)
    build_s = time.perf_counter() - start
    worker_counts = sorted({0, config.default_num_workers()})
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, "
        f"default_num_workers() = {config.default_num_workers()}"
    )
    print(
        f"bundled train split: {len(records)} images; train_transform({args.image_size}), "
        f"batch {args.batch_size}; {args.batches} timed batches / {args.steps} timed steps"
    )
    print(
        f"cache: shorter side {side} px, {cached.nbytes / 2**20:.0f} MiB, built in {build_s:.1f} s"
    )
    print()

    loaders = []
    for name, dataset in (
        ("files (PetDataset)", PetDataset(records, transform)),
        ("memory (CachedPetDataset)", cached),
    ):
        for workers in worker_counts:
            rate = loader_images_per_s(dataset, args.batch_size, workers, args.batches)
            loaders.append((name, workers, rate))
    models = {a: model_images_per_s(a, args.image_size, args.batch_size, args.steps) for a in ARCHS}

    ratio_heads = "".join(f"{'÷ ' + a:>13}" for a in ARCHS)
    print(f"{'loader':<27}{'workers':>8}{'img/s':>9}{'ms/img':>9}{ratio_heads}")
    for name, workers, rate in loaders:
        ratios = "".join(f"{rate / models[a]:>13.1f}" for a in ARCHS)
        print(f"{name:<27}{workers:>8}{rate:>9.0f}{1000 / rate:>9.2f}{ratios}")
    print()
    print(f"{'model train step (AdamW)':<35}{'img/s':>9}{'ms/img':>9}")
    for arch, rate in models.items():
        print(f"{arch:<35}{rate:>9.1f}{1000 / rate:>9.1f}")
    print()
    for name, workers, rate in loaders:
        if workers == 0:
            shares = ", ".join(
                f"{models[a] / rate:.1%} of {a}'s {1000 / models[a]:.1f} ms" for a in ARCHS
            )
            print(f"{name}, 0 workers: {1000 / rate:.2f} ms per image = {shares}")


if __name__ == "__main__":
    main()

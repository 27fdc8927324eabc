"""``python -m course_utils bench``: inference (and training) speed per setting, on this machine."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from course_utils import speed
from course_utils.cli.common import PROG, add_command, load_model, positive_int
from course_utils.config import display_path, get_device, get_profile
from course_utils.data import CLASSES, PetDataset, bundled_records, eval_transform
from course_utils.models import ARCHITECTURES, RESIDUAL_STAGES, build_model

CALIBRATION_IMAGES = 32  # bundled validation images that calibrate int8
TOLERANCE = speed.AGREEMENT_TOLERANCE

EPILOG = f"""\
Settings: fp32 (eager, NCHW, no_grad: the baseline), inference_mode, channels_last, bf16 and
fp16 (autocast; fp16 on CUDA only), compile (torch.compile; needs a C++ compiler), int8 (static
quantization, CPU only). One that cannot run here is listed as "skipped: <reason>".

How it measures (like timm's benchmark): each setting is prepared once, then --warmup untimed
rounds and --repeats timed rounds, every setting once per round, interleaved, the device
synchronised around each call. "speed-up" is the median of the per-round ratios fp32 time /
setting time, with its 10th-90th percentiles. The timed batch is bundled test images (cycled to
the batch size); each setting's softmax is compared with fp32's on them, and "agrees" means no
probability moved by more than {TOLERANCE}. int8 is calibrated on {CALIBRATION_IMAGES} bundled
validation images. Without --checkpoint the networks have random weights (2 classes): the
speed is the same, the agreement is checked on near-tie logits.
The recommendation is the fastest agreeing setting whose p10 speed-up is above 1.

Close other programs first; on a laptop, plug it in. CPU runs use torch's default thread count
(set OMP_NUM_THREADS to change it).

examples:
  {PROG} bench                  # resnet50 and resnet101, every setting
  {PROG} bench --arch resnet50 --settings fp32 bf16 int8 --repeats 20
  {PROG} bench --batch-sizes 1 8 32 64 --train --memory --csv b.csv --markdown b.md
  {PROG} bench --checkpoint RUN50/best.pt RUN101/best.pt --image-size 224"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``bench`` command: its options, help and epilog."""
    profile = get_profile()
    parser = add_command(
        subparsers,
        "bench",
        "measure inference speed per setting (fp32, bf16, compile, int8, ...)",
        "Measure images/s of each network under each inference setting on this machine, the\n"
        "speed-up over fp32 with its spread, whether the predictions stay the same, and\n"
        "recommend the fastest setting that keeps them. Prints markdown tables.",
        EPILOG,
    )
    networks = parser.add_mutually_exclusive_group()
    networks.add_argument(
        "--arch",
        nargs="+",
        choices=list(ARCHITECTURES),
        default=["resnet50", "resnet101"],
        metavar="ARCH",
        help=f"networks with random weights (default: resnet50 resnet101; any of "
        f"{', '.join(ARCHITECTURES)})",
    )
    networks.add_argument(
        "--checkpoint",
        nargs="+",
        metavar="PATH",
        help="trained checkpoints (last.pt or best.pt) to benchmark instead of --arch",
    )
    parser.add_argument(
        "--image-size",
        type=positive_int,
        metavar="N",
        help=f"input resolution in pixels (default: the {profile.name} profile's, "
        f"{profile.image_size})",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=profile.batch_size,
        metavar="N",
        help=f"images per timed batch (default: the {profile.name} profile's, "
        f"{profile.batch_size})",
    )
    parser.add_argument(
        "--batch-sizes",
        type=positive_int,
        nargs="+",
        metavar="N",
        help="also sweep these batch sizes: images/s of fp32 and the recommended setting",
    )
    parser.add_argument(
        "--settings",
        nargs="+",
        choices=speed.SETTINGS,
        default=list(speed.SETTINGS),
        metavar="SETTING",
        help=f"settings to measure (default: all: {' '.join(speed.SETTINGS)}); fp32 is "
        "always measured, as the baseline",
    )
    parser.add_argument(
        "--warmup", type=int, default=3, metavar="N", help="untimed rounds (default: 3)"
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=10, metavar="N", help="timed rounds (default: 10)"
    )
    parser.add_argument(
        "--train",
        action="store_true",
        help=f"also time training steps ({', '.join(speed.TRAIN_SETTINGS)})",
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="also measure peak memory per setting (a fresh Python process for each: slow)",
    )
    parser.add_argument("--csv", metavar="PATH", help="write every measurement to this CSV")
    parser.add_argument("--markdown", metavar="PATH", help="write the printed tables here too")
    parser.set_defaults(run=run)


def _images(split: str, size: int, count: int, device: torch.device) -> torch.Tensor:
    """``count`` bundled images of ``split`` at ``size`` px, normalised, cycled if too few."""
    records = bundled_records(split)[:count]
    dataset = PetDataset(records, eval_transform(size))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    return images.repeat(-(-count // len(images)), 1, 1, 1)[:count].to(device)


def _networks(args: argparse.Namespace, device: torch.device) -> dict[str, tuple[nn.Module, int]]:
    """Label -> (model on ``device``, image size): checkpoints, or random-weight networks."""
    if args.checkpoint:
        networks = {}
        for path in args.checkpoint:
            model, size = load_model(path, args.image_size)
            label = _label(model)
            networks[label if label not in networks else f"{label} ({path})"] = (model, size)
        return networks
    size = args.image_size or get_profile().image_size
    return {
        ARCHITECTURES[arch].label: (build_model(arch, num_classes=len(CLASSES)).to(device), size)
        for arch in dict.fromkeys(args.arch)
    }


def _label(model: nn.Module) -> str:
    """The architecture table's label of ``model`` (e.g. "ResNet-50"), from its stages."""
    blocks = tuple(len(getattr(model, stage)) for stage in RESIDUAL_STAGES)
    for spec in ARCHITECTURES.values():
        if blocks == spec.stage_blocks and isinstance(model.layer1[0], spec.block):
            return spec.label
    return type(model).__name__


def run(args: argparse.Namespace) -> int:
    """Benchmark every network, print the tables and the recommendation, write the files."""
    device = get_device()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}; batch {args.batch_size}, "
        f"warm-up {args.warmup}, {args.repeats} interleaved rounds"
    )
    sections: list[str] = []
    frames: list[pd.DataFrame] = []
    inference: dict[str, list[speed.Setting]] = {}

    def show(title: str, table: pd.DataFrame | str) -> None:
        text = table if isinstance(table, str) else speed.markdown_table(table)
        sections.append(f"### {title}\n\n{text}")
        print(f"\n{title}\n{text}")

    for label, (model, size) in _networks(args, device).items():
        images = _images("test", size, args.batch_size, device)
        calibration = _images("val", size, CALIBRATION_IMAGES, device)
        results = speed.benchmark_settings(
            model,
            images,
            args.settings,
            warmup=args.warmup,
            repeats=args.repeats,
            calibration=calibration,
            memory=args.memory,
        )
        inference[label] = results
        frame = speed.results_frame({label: results}).assign(measurement="inference")
        frames.append(frame)
        show(
            f"{label}: inference at {size} px, batch {args.batch_size}", speed.summary_table(frame)
        )
        if args.memory:
            print(f"peak MiB: {speed.memory_measure(device)}")
        show(f"{label}: recommendation", speed.recommend(results, device))
        if args.batch_sizes:
            best = speed.fastest_agreeing(results)
            sweep_settings = [speed.BASELINE] + ([best.name] if best else [])
            sweep = speed.batch_size_sweep(
                model,
                _images("test", size, max(args.batch_sizes), device),
                args.batch_sizes,
                sweep_settings,
                warmup=args.warmup,
                repeats=args.repeats,
            ).assign(network=label, measurement="batch sweep", status="ok")
            frames.append(sweep)
            wide = sweep.pivot(index="batch_size", columns="setting", values="images_per_s")
            show(f"{label}: images/s vs batch size", wide[sweep_settings].reset_index())
        if args.train:
            training = speed.training_throughput(
                model, size, args.batch_size, device, warmup=args.warmup, repeats=args.repeats
            )
            frame = speed.results_frame({label: training}).assign(measurement="training")
            frames.append(frame)
            show(
                f"{label}: training steps at {size} px, batch {args.batch_size}",
                speed.summary_table(frame).drop(
                    columns=["top-1 = fp32", "max Δp"], errors="ignore"
                ),
            )
    labels = [ARCHITECTURES[a].label for a in ("resnet50", "resnet101")]
    if all(label in inference for label in labels):
        ratios = speed.network_ratio_frame(speed.results_frame(inference), *labels[::-1])
        show("images/s, ResNet-101 / ResNet-50 (published GPU figures: ~0.61-0.65)", ratios)
    if args.csv:
        _write(Path(args.csv), pd.concat(frames, ignore_index=True).to_csv(index=False), "CSV")
    if args.markdown:
        _write(Path(args.markdown), "\n\n".join(sections) + "\n", "markdown")
    return 0


def _write(path: Path, text: str, kind: str) -> None:
    path = path.expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"{kind}: {display_path(path)}")

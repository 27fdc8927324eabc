"""``python -m course_utils train``: one training run, in the folder ``load_or_train`` uses."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from course_utils import zoo
from course_utils.config import get_device, get_profile
from course_utils.models import PretrainedWeightsUnavailable
from course_utils.train import LAST, TrainConfig


def train(args: argparse.Namespace) -> int:
    """Train ``args.arch`` at ``args.profile``; print the checkpoint's path as the last line."""
    profile = get_profile(args.profile)
    sizes = {"epochs": args.epochs, "image_size": args.image_size, "batch_size": args.batch_size}
    overrides = {name: value for name, value in sizes.items() if value is not None}
    cfg = TrainConfig.from_profile(profile, args.arch, args.regime, seed=args.seed, **overrides)
    folder = Path(args.output).expanduser() if args.output else zoo.run_dir(cfg, profile)
    last = folder / LAST
    if last.exists() and not (args.resume or args.force):
        raise FileExistsError(
            f"{folder} already holds a training run ({LAST}). Add --resume to continue it (same "
            f"settings), or --force to move it aside to {folder.name}.bak-<timestamp> and train "
            "afresh."
        )
    print(f"profile: {profile.name} ({profile.description}), device: {get_device()}")
    print(f"config: {cfg.summary()}")
    print(f"run folder: {folder}")
    try:
        _, history = zoo.train_run(cfg, profile, folder, resume=args.resume, overwrite=args.force)
    except KeyboardInterrupt:
        print(
            "Interrupted. Run the same command with --resume to continue from the last "
            "completed epoch.",
            file=sys.stderr,
        )
        return 130
    except PretrainedWeightsUnavailable as error:
        raise PretrainedWeightsUnavailable(
            f"{error}\nOn the command line, --regime scratch trains without them."
        ) from error
    final = history.records[-1]
    print(
        f"done: epoch {final['epoch']}/{cfg.epochs}, val acc {final['val_acc']:.1%}, "
        f"val loss {final['val_loss']:.3f}"
    )
    print(last.resolve())
    return 0

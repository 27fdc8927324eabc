"""``python -m course_utils train``: one training run, in the folder ``load_or_train`` uses."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from course_utils import zoo
from course_utils.cli.common import PROG, add_command, positive_int
from course_utils.config import (
    DEFAULT_SEED,
    PROFILE_ENV,
    PROFILES,
    display_path,
    get_device,
    get_profile,
)
from course_utils.models import ARCHITECTURES, PretrainedWeightsUnavailable
from course_utils.recipe import REGIMES, Recipe
from course_utils.runs import LAST, RunExistsError, RunFolder

EPILOG = f"""\
The run folder receives last.pt (written every epoch, resumable), best.pt (the epoch with the
best validation accuracy), history.json and history.csv (per-epoch metrics). The default folder
is load_or_train()'s cache, so a notebook asking for the same network, regime, profile and
settings loads this run instead of training again. Interrupted (Ctrl-C: exit code 130)? The
same command with --resume continues from the last completed epoch.

examples:
  {PROG} train --arch resnet50 --regime scratch --profile cpu
  {PROG} train --arch resnet101 --regime imagenet --profile gpu
  {PROG} train --arch resnet18 --profile smoke --epochs 1 --output runs/try
  {PROG} train --arch resnet50 --profile cpu --resume"""


def _per_profile(field: str) -> str:
    """``"smoke 1, cpu 24, gpu 30"``: a profile field's value in each profile, for help texts."""
    return ", ".join(f"{name} {getattr(profile, field)}" for name, profile in PROFILES.items())


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``train`` command: its options, help and epilog."""
    parser = add_command(
        subparsers,
        "train",
        "train a network on the profile's cats-vs-dogs data",
        "Train a ResNet on the profile's cats-vs-dogs train split, validating on its val split\n"
        "every epoch, with the course recipe (AdamW + one-cycle; ImageNet regime: the head\n"
        "first, then all layers; the 'recipe:' line of the output lists every setting). The\n"
        "last line of output is the path of the saved checkpoint (last.pt). An existing run is\n"
        "never overwritten without --resume or --force.",
        EPILOG,
    )
    parser.add_argument("--arch", required=True, choices=list(ARCHITECTURES), help="the network")
    parser.add_argument(
        "--regime",
        choices=REGIMES,
        default="scratch",
        help="scratch: random initial weights (works offline); imagenet: fine-tune torchvision's "
        "ImageNet weights, which must be downloadable or already cached (default: scratch)",
    )
    parser.add_argument(
        "--profile",
        choices=list(PROFILES),
        help=f"run scale: data set, image size, batch size, epochs (default: ${PROFILE_ENV}, "
        "else gpu with CUDA, else cpu)",
    )
    parser.add_argument(
        "--output",
        metavar="DIR",
        help="run folder (default: load_or_train's cache folder for these settings, "
        "<artifacts>/checkpoints/ARCH-REGIME-PROFILE-HASH)",
    )
    for flag, field, what in (
        ("--epochs", "epochs", "training epochs"),
        ("--image-size", "image_size", "training resolution in pixels"),
        ("--batch-size", "batch_size", "images per optimiser step"),
    ):
        parser.add_argument(
            flag,
            type=positive_int,
            metavar="N",
            help=f"{what} (default: the profile's: {_per_profile(field)})",
        )
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        metavar="N",
        help=f"seed of the initial weights, shuffling and augmentation (default: {DEFAULT_SEED})",
    )
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in the output folder from its last completed epoch (the settings "
        "must be the same); a finished run is only reported",
    )
    existing.add_argument(
        "--force",
        action="store_true",
        help="move the run in the output folder aside (to FOLDER.bak-TIMESTAMP) and train afresh",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Train ``args.arch`` at ``args.profile``; print the checkpoint's absolute path last."""
    profile = get_profile(args.profile)
    sizes = {"epochs": args.epochs, "image_size": args.image_size, "batch_size": args.batch_size}
    overrides = {name: value for name, value in sizes.items() if value is not None}
    recipe = Recipe.from_profile(profile, args.arch, args.regime, seed=args.seed, **overrides)
    data = zoo.training_data(recipe, profile)  # resolved once: in the gpu profile it may download
    default = zoo.run_dir(zoo.cache_key(recipe, profile, data))
    folder = RunFolder(Path(args.output).expanduser() if args.output else default)
    if folder.last.exists() and not (args.resume or args.force):
        raise RunExistsError(
            f"{display_path(folder.path)} already holds a training run ({LAST}). Add --resume to "
            f"continue it (same settings), or --force to move it aside to "
            f"{folder.path.name}.bak-<timestamp> and train afresh."
        )
    print(f"profile: {profile.name} ({profile.description}), device: {get_device()}")
    print(f"recipe: {recipe.summary()}")
    print(f"run folder: {display_path(folder.path)}")
    try:
        _, history = zoo.train_run(
            recipe, profile, folder.path, data=data, resume=args.resume, overwrite=args.force
        )
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
        f"done: epoch {final['epoch']}/{recipe.epochs}, val acc {final['val_acc']:.1%}, "
        f"val loss {final['val_loss']:.3f}"
    )
    print(folder.last.resolve())  # absolute, always: scripts read this line
    return 0

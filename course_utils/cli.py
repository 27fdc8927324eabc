"""The command line: ``python -m course_utils train | evaluate | predict`` (argument parsing).

Each command is one function: ``train`` in :mod:`course_utils.cli_train`, ``evaluate`` and
``predict`` in :mod:`course_utils.cli_evaluate`. User errors (a missing file, a folder without
``cats/`` and ``dogs/``, a file that is not a course checkpoint, no internet for ImageNet
weights) end with a one-paragraph message on stderr and exit code 2, not a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from course_utils import cli_evaluate, cli_train
from course_utils.config import ARTIFACTS_DIR_ENV, DEFAULT_SEED, DEVICE_ENV, PROFILE_ENV, PROFILES
from course_utils.data import DataIntegrityError, DatasetUnavailable
from course_utils.models import ARCHITECTURES, PretrainedWeightsUnavailable
from course_utils.train import REGIMES

PROG = "python -m course_utils"
# CheckpointError and the data module's layout errors are ValueErrors.
USER_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    ValueError,
    DataIntegrityError,
    DatasetUnavailable,
    PretrainedWeightsUnavailable,
)

_TOP_EPILOG = f"""\
Every command runs on CUDA when available, else the CPU (${DEVICE_ENV}, e.g. cpu or cuda:1,
overrides). Exit code 0 on success, 2 on a usage error or bad input (message on stderr).
Environment: ${PROFILE_ENV} (the default profile), ${ARTIFACTS_DIR_ENV} (where runs are
cached; default <repo>/artifacts).

examples:
  {PROG} train --arch resnet50 --regime scratch --profile cpu
  {PROG} evaluate --checkpoint RUN/last.pt --data my_pets/
  {PROG} predict --checkpoint RUN/last.pt tom.jpg rex.png

Run '{PROG} COMMAND --help' for the options of a command."""

_TRAIN_EPILOG = f"""\
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

_EVALUATE_EPILOG = f"""\
A folder given with --data must look like this (folder names in any case; images in any
common format, at any depth):
  my_pets/
  ├── cats/
  └── dogs/
Files that are not images, or are unreadable, too small or too large, are skipped and listed.
CSV columns: image_path, breed, mask_path (empty for your own folders), label, predicted,
correct, p_cat, p_dog.

examples:
  {PROG} evaluate --checkpoint RUN/last.pt
  {PROG} evaluate --checkpoint RUN/last.pt --data ~/my_pets --image-size 224"""

_PREDICT_EPILOG = f"""\
Output: one line per image, e.g. "tom.jpg: cat (cat 93.1%, dog 6.9%)"; a file that cannot be
classified (missing, not an image, corrupt, too small or too large) gets a line saying why.
Exit code 0 when at least one image was classified, 2 when none could be.

example:
  {PROG} predict --checkpoint RUN/last.pt tom.jpg rex.png"""


def _per_profile(field: str) -> str:
    """``"smoke 1, cpu 24, gpu 30"``: a profile field's value in each profile, for help texts."""
    return ", ".join(f"{name} {getattr(profile, field)}" for name, profile in PROFILES.items())


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _subparser(
    subparsers: argparse._SubParsersAction, name: str, summary: str, description: str, epilog: str
) -> argparse.ArgumentParser:
    """A command's parser; its description and epilog keep their line breaks."""
    return subparsers.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


_CHECKPOINT_HELP = "a checkpoint written by train (last.pt or best.pt)"


def _add_image_size(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--image-size",
        type=_positive_int,
        metavar="N",
        help="input resolution in pixels (default: the checkpoint's training resolution)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of the three commands, with complete ``--help`` texts."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train, evaluate and apply the course's cats-vs-dogs ResNets.",
        epilog=_TOP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = _subparser(
        sub,
        "train",
        "train a network on the profile's cats-vs-dogs data",
        "Train a ResNet on the profile's cats-vs-dogs train split, validating on its val split\n"
        "every epoch, with the course recipe (AdamW + one-cycle; ImageNet regime: the head\n"
        "first, then all layers; the 'config:' line of the output lists every setting). The\n"
        "last line of output is the path of the saved checkpoint (last.pt). An existing run is\n"
        "never overwritten without --resume or --force.",
        _TRAIN_EPILOG,
    )
    train.add_argument("--arch", required=True, choices=list(ARCHITECTURES), help="the network")
    train.add_argument(
        "--regime",
        choices=REGIMES,
        default="scratch",
        help="scratch: random initial weights (works offline); imagenet: fine-tune torchvision's "
        "ImageNet weights, which must be downloadable or already cached (default: scratch)",
    )
    train.add_argument(
        "--profile",
        choices=list(PROFILES),
        help=f"run scale: data set, image size, batch size, epochs (default: ${PROFILE_ENV}, "
        "else gpu with CUDA, else cpu)",
    )
    train.add_argument(
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
        train.add_argument(
            flag,
            type=_positive_int,
            metavar="N",
            help=f"{what} (default: the profile's: {_per_profile(field)})",
        )
    train.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        metavar="N",
        help=f"seed of the initial weights, shuffling and augmentation (default: {DEFAULT_SEED})",
    )
    existing = train.add_mutually_exclusive_group()
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
    train.set_defaults(run=cli_train.train)

    evaluate = _subparser(
        sub,
        "evaluate",
        "measure a checkpoint's accuracy on labelled images",
        "Evaluate a checkpoint on labelled images. Prints accuracy with a 95% bootstrap\n"
        "interval, the confusion matrix, per-breed accuracy (when breeds are known, as in the\n"
        "bundled set) and the path of a CSV with one row per image.",
        _EVALUATE_EPILOG,
    )
    evaluate.add_argument("--checkpoint", required=True, metavar="PATH", help=_CHECKPOINT_HELP)
    evaluate.add_argument(
        "--data",
        metavar="DIR",
        help="a folder with cats/ and dogs/ sub-folders (default: the bundled test split)",
    )
    evaluate.add_argument(
        "--output",
        metavar="CSV",
        help="the per-image predictions file (default: predictions-DATANAME.csv next to the "
        "checkpoint, DATANAME = bundled-test or the folder's name); an existing file is never "
        "overwritten: a numeric suffix is added (predictions-bundled-test-1.csv, ...) and the "
        "path written is printed",
    )
    _add_image_size(evaluate)
    evaluate.set_defaults(run=cli_evaluate.evaluate)

    predict = _subparser(
        sub,
        "predict",
        "classify image files as cat or dog",
        "Classify each image as cat or dog and print the probability of each class.",
        _PREDICT_EPILOG,
    )
    predict.add_argument("--checkpoint", required=True, metavar="PATH", help=_CHECKPOINT_HELP)
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="one or more image files")
    _add_image_size(predict)
    predict.set_defaults(run=cli_evaluate.predict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the command, return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except USER_ERRORS as error:
        print(f"{PROG} {args.command}: error: {error}", file=sys.stderr)
        return 2

"""What the commands share: the program name, parser set-up, ``--checkpoint``, ``--image-size``,
``--profile``."""

from __future__ import annotations

import argparse
from pathlib import Path

from torch import nn

from course_utils.config import PROFILE_ENV, PROFILES, display_path, get_device
from course_utils.data import CLASSES
from course_utils.errors import CourseError
from course_utils.runs import model_from_checkpoint

PROG = "python -m course_utils"


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def add_command(
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


def add_checkpoint(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint PATH`` (required), of evaluate and predict."""
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="PATH",
        help="a checkpoint written by train (last.pt or best.pt)",
    )


def add_profile(parser: argparse.ArgumentParser, what: str) -> None:
    """``--profile NAME`` of train and workshop pack; ``what`` says what the profile sets."""
    parser.add_argument(
        "--profile",
        choices=list(PROFILES),
        help=f"{what} (default: ${PROFILE_ENV}, else gpu with CUDA, else cpu)",
    )


def add_image_size(parser: argparse.ArgumentParser) -> None:
    """``--image-size N`` of evaluate and predict (default: the checkpoint's resolution)."""
    parser.add_argument(
        "--image-size",
        type=positive_int,
        metavar="N",
        help="input resolution in pixels (default: the checkpoint's training resolution)",
    )


def load_model(checkpoint: str, image_size: int | None) -> tuple[nn.Module, int]:
    """The checkpoint's model (eval mode, on ``get_device()``) and the resolution to use."""
    path = Path(checkpoint).expanduser()
    device = get_device()
    model, info = model_from_checkpoint(path, expected_num_classes=len(CLASSES), device=device)
    trained = info.get("recipe", {}).get("image_size")
    size = image_size or trained
    if size is None:
        raise CourseError(
            f"{display_path(path)} does not record its training image size: add --image-size."
        )
    print(
        f"checkpoint: {display_path(path)} ({info['arch']}, epoch {info.get('epoch', '?')}, "
        f"trained at {trained or '?'} px); running at {size} px on {device}"
    )
    return model, size

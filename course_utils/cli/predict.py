"""``python -m course_utils predict``: classify image files as cat or dog."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from course_utils.cli.common import PROG, add_checkpoint, add_command, add_image_size, load_model
from course_utils.data import CLASSES, check_image, eval_transform, load_rgb
from course_utils.errors import CourseError

EPILOG = f"""\
Output: one line per image, e.g. "tom.jpg: cat (cat 93.1%, dog 6.9%)"; a file that cannot be
classified (missing, a broken link, empty, not a JPEG, PNG, WebP, BMP, GIF or TIFF image,
truncated or corrupt, too small, too large or a decompression bomb) gets a line saying why, and
the others are still classified. An animated GIF or WebP is classified by its first frame.
Exit code 0 when at least one image was classified, 2 when none could be.

example:
  {PROG} predict --checkpoint RUN/last.pt tom.jpg rex.png"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``predict`` command: its options, help and epilog."""
    parser = add_command(
        subparsers,
        "predict",
        "classify image files as cat or dog",
        "Classify each image as cat or dog and print the probability of each class.",
        EPILOG,
    )
    add_checkpoint(parser)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="one or more image files")
    add_image_size(parser)
    parser.set_defaults(run=run)


def _problem(path: Path) -> str | None:
    """Why ``path`` cannot be classified, or ``None``."""
    if path.is_dir():
        return "a folder, not an image (for a folder with cats/ and dogs/, use evaluate --data)"
    return check_image(path)


@torch.no_grad()
def run(args: argparse.Namespace) -> int:
    """Print each image's predicted class and class probabilities, or why it was skipped.

    Raises :class:`CourseError` (exit code 2) when no image could be classified.
    """
    model, size = load_model(args.checkpoint, args.image_size)
    transform, device = eval_transform(size), next(model.parameters()).device
    predicted = 0
    for name in args.images:
        path = Path(name).expanduser()
        problem = _problem(path)
        if problem is not None:
            print(f"{name}: cannot classify: {problem}")
            continue
        probabilities = model(transform(load_rgb(path)).unsqueeze(0).to(device)).softmax(dim=1)[0]
        shares = ", ".join(
            f"{c} {p:.1%}" for c, p in zip(CLASSES, probabilities.tolist(), strict=True)
        )
        print(f"{name}: {CLASSES[int(probabilities.argmax())]} ({shares})")
        predicted += 1
    if predicted == 0:
        raise CourseError(f"none of the {len(args.images)} image(s) could be classified (above).")
    if predicted < len(args.images):
        print(f"classified {predicted} of {len(args.images)} files; the others are listed above.")
    return 0

"""``python -m course_utils evaluate``: a checkpoint's accuracy on labelled images."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

from course_utils.cli.common import PROG, add_checkpoint, add_command, add_image_size, load_model
from course_utils.config import display_path
from course_utils.data import (
    CLASSES,
    PetDataset,
    PetRecord,
    bundled_records,
    eval_transform,
    folder_records,
    format_skipped,
    make_loader,
)
from course_utils.data.records import class_counts
from course_utils.evaluate import confusion_matrix, format_accuracy, per_group_accuracy
from course_utils.evaluate import predict as run_model

BATCH_SIZE = 32

EPILOG = f"""\
A folder given with --data must look like this (folder names in any case; images in any
common format, at any depth):
  my_pets/
  ├── cats/
  └── dogs/
Hidden files are ignored; anything else in cats/ and dogs/ that is not a usable image is skipped
and listed with its reason (other file types; broken links, empty, truncated or corrupt files;
images too small, too large or decompression bombs; folders named like images), and the others
are evaluated. An animated GIF or WebP counts by its first frame.
CSV columns: image_path, breed, mask_path (empty for your own folders), label, predicted,
correct, p_cat, p_dog.

examples:
  {PROG} evaluate --checkpoint RUN/last.pt
  {PROG} evaluate --checkpoint RUN/last.pt --data ~/my_pets --image-size 224"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``evaluate`` command: its options, help and epilog."""
    parser = add_command(
        subparsers,
        "evaluate",
        "measure a checkpoint's accuracy on labelled images",
        "Evaluate a checkpoint on labelled images. Prints accuracy with a 95% bootstrap\n"
        "interval, the confusion matrix, per-breed accuracy (when breeds are known, as in the\n"
        "bundled set) and the path of a CSV with one row per image.",
        EPILOG,
    )
    add_checkpoint(parser)
    parser.add_argument(
        "--data",
        metavar="DIR",
        help="a folder with cats/ and dogs/ sub-folders (default: the bundled test split)",
    )
    parser.add_argument(
        "--output",
        metavar="CSV",
        help="the per-image predictions file (default: predictions-DATANAME.csv next to the "
        "checkpoint, DATANAME = bundled-test or the folder's name); an existing file is never "
        "overwritten: a numeric suffix is added (predictions-bundled-test-1.csv, ...) and the "
        "path written is printed",
    )
    add_image_size(parser)
    parser.set_defaults(run=run)


def _records(data: str | None) -> tuple[list[PetRecord], str]:
    """The labelled records to evaluate on and a short name for them (for the CSV's name)."""
    if data is None:
        records = bundled_records("test")
        print(f"data: bundled Oxford-IIIT Pet sample, test split: {class_counts(records)}")
        return records, "bundled-test"
    root = Path(data).expanduser()
    records, skipped = folder_records(root)
    print(f"data: {display_path(root)}: {class_counts(records)}")
    if skipped:
        print(format_skipped(skipped))
    return records, re.sub(r"[^\w.-]+", "_", root.resolve().name) or "data"


def _unused(path: Path) -> Path:
    """``path``, or the first of ``stem-1.csv``, ``stem-2.csv``... that does not exist."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def _breed_table(frame: pd.DataFrame) -> str:
    """``per_group_accuracy``'s frame as text: breed, n, accuracy and its 95% interval."""
    width = max(len("breed"), *map(len, frame.group))
    lines = [f"  {'breed':<{width}}    n  accuracy  95% CI"]
    lines += [
        f"  {row.group:<{width}}  {row.n:>3}  {row.accuracy:>8.1%}  "
        f"{row.ci_low * 100:.0f}-{row.ci_high * 100:.0f}%"
        for row in frame.itertuples()
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Accuracy with its interval, confusion matrix, per-breed accuracy; write the CSV."""
    model, size = load_model(args.checkpoint, args.image_size)
    records, name = _records(args.data)
    loader = make_loader(PetDataset(records, eval_transform(size)), BATCH_SIZE, train=False)
    result = run_model(model, loader, metadata=records)
    print(f"accuracy: {format_accuracy(result.correct)}")
    counts = confusion_matrix(result.labels, result.predicted, len(CLASSES))
    matrix = pd.DataFrame(
        counts, index=[f"true {c}" for c in CLASSES], columns=[f"predicted {c}" for c in CLASSES]
    )
    print(f"confusion matrix (rows: true class, columns: predicted class):\n{matrix.to_string()}")
    if all(record.breed is not None for record in records):
        breeds = per_group_accuracy(result.correct, [record.breed for record in records])
        print("per-breed accuracy (worst first; few images per breed: wide intervals):")
        print(_breed_table(breeds))
    default = Path(args.checkpoint).expanduser().parent / f"predictions-{name}.csv"
    csv = _unused(Path(args.output).expanduser() if args.output else default)
    csv.parent.mkdir(parents=True, exist_ok=True)
    result.to_frame(CLASSES).to_csv(csv, index=False)
    print(f"per-image predictions ({len(records)} rows): {display_path(csv)}")
    return 0

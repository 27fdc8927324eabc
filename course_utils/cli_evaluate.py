"""``python -m course_utils evaluate`` and ``predict``: apply a saved checkpoint to images."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from course_utils.checkpoints import model_from_checkpoint
from course_utils.config import get_device
from course_utils.data import (
    CLASSES,
    PetDataset,
    PetRecord,
    bundled_records,
    check_image,
    eval_transform,
    folder_records,
    format_skipped,
    load_rgb,
    make_loader,
)
from course_utils.data.records import class_counts
from course_utils.evaluate import confusion_matrix, format_accuracy, per_group_accuracy
from course_utils.evaluate import predict as run_model

BATCH_SIZE = 32


def _load(path: str, image_size: int | None) -> tuple[nn.Module, int]:
    """The checkpoint's model (eval mode, on ``get_device()``) and the resolution to use."""
    device = get_device()
    model, info = model_from_checkpoint(path, expected_num_classes=len(CLASSES), device=device)
    trained = info.get("config", {}).get("image_size")
    size = image_size or trained
    if size is None:
        raise ValueError(f"{path} does not record its training image size: add --image-size.")
    print(
        f"checkpoint: {path} ({info['arch']}, epoch {info.get('epoch', '?')}, trained at "
        f"{trained or '?'} px); running at {size} px on {device}"
    )
    return model, size


def _records(data: str | None) -> tuple[list[PetRecord], str]:
    """The labelled records to evaluate on and a short name for them (for the CSV's name)."""
    if data is None:
        records = bundled_records("test")
        print(f"data: bundled Oxford-IIIT Pet sample, test split: {class_counts(records)}")
        return records, "bundled-test"
    root = Path(data).expanduser()
    records, skipped = folder_records(root)
    print(f"data: {root}: {class_counts(records)}")
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


def evaluate(args: argparse.Namespace) -> int:
    """Accuracy with its interval, confusion matrix, per-breed accuracy; write the CSV."""
    model, size = _load(args.checkpoint, args.image_size)
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
    print(f"per-image predictions ({len(records)} rows): {csv}")
    return 0


def _problem(path: Path) -> str | None:
    """Why ``path`` cannot be classified, or ``None``."""
    if not path.exists():
        return "no such file"
    if path.is_dir():
        return "a folder, not an image (for a folder with cats/ and dogs/, use evaluate --data)"
    return check_image(path)


@torch.no_grad()
def predict(args: argparse.Namespace) -> int:
    """Print each image's predicted class and class probabilities, or why it was skipped.

    Raises ``ValueError`` (exit code 2) when no image could be classified.
    """
    model, size = _load(args.checkpoint, args.image_size)
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
        raise ValueError(f"none of the {len(args.images)} image(s) could be classified (above).")
    return 0

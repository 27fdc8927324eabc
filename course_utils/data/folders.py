"""A user's own images: a folder with ``cats/`` and ``dogs/`` sub-folders."""

from __future__ import annotations

from pathlib import Path

from course_utils.data.images import (
    IMAGE_EXTENSIONS,
    SkippedImage,
    format_skipped,
    validate_images,
)
from course_utils.data.records import CLASSES, PetRecord
from course_utils.errors import CourseError

_CLASS_FOLDERS = tuple(f"{name}s" for name in CLASSES)  # ("cats", "dogs"), in label order


class FolderLayoutError(CourseError, ValueError):
    """A user folder that is missing, lacks ``cats/`` or ``dogs/``, or holds no usable image."""


def _expected_layout(root: Path) -> str:
    return (
        "Expected layout (folder names in any case; images in any common format, at any depth):\n"
        f"  {root.name or root}/\n"
        "  ├── cats/\n"
        "  │   ├── tom.jpg\n"
        "  │   └── ...\n"
        "  └── dogs/\n"
        "      ├── rex.png\n"
        "      └── ..."
    )


def _found(root: Path) -> str:
    entries = sorted(root.iterdir())
    names = [f"{p.name}/" if p.is_dir() else p.name for p in entries[:12]]
    more = f", ... ({len(entries) - 12} more)" if len(entries) > 12 else ""
    return f"Found in {root}: {', '.join(names) + more if names else '(nothing)'}"


def folder_records(root: Path) -> tuple[list[PetRecord], list[SkippedImage]]:
    """Records for every usable image under ``root/cats`` and ``root/dogs``, and the skip list.

    Sub-folders are searched recursively; hidden files are ignored; files that are not images,
    or are truncated, too small or too large, go to the skip list (see :func:`format_skipped`).
    A wrong layout raises :class:`FolderLayoutError` showing the expected one.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FolderLayoutError(f"{root} is not a folder.\n{_expected_layout(root)}")
    class_dirs = {name: [] for name in _CLASS_FOLDERS}
    for child in root.iterdir():
        if child.is_dir() and child.name.lower() in class_dirs:
            class_dirs[child.name.lower()].append(child)
    problems = [f"no '{name}/' folder" for name, dirs in class_dirs.items() if not dirs]
    problems += [
        f"several folders named '{name}/' ({', '.join(d.name for d in dirs)})"
        for name, dirs in class_dirs.items()
        if len(dirs) > 1
    ]
    if problems:
        raise FolderLayoutError(
            f"{root} does not have the expected layout: {'; '.join(problems)}.\n"
            f"{_expected_layout(root)}\n{_found(root)}"
        )
    records: list[PetRecord] = []
    skipped: list[SkippedImage] = []
    for label, name in enumerate(_CLASS_FOLDERS):
        files = sorted(
            p
            for p in class_dirs[name][0].rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.parts[len(root.parts) :])
        )
        candidates = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
        skipped += [
            SkippedImage(p, f"not an image file type ({p.suffix or 'no extension'})")
            for p in files
            if p.suffix.lower() not in IMAGE_EXTENSIONS
        ]
        usable, bad = validate_images(candidates)
        records += [PetRecord(p, label, breed=None, mask_path=None) for p in usable]
        skipped += bad
    if not records:
        searched = " or ".join(str(class_dirs[name][0]) for name in _CLASS_FOLDERS)
        raise FolderLayoutError(f"No usable images under {searched}.\n{format_skipped(skipped)}")
    return records, skipped

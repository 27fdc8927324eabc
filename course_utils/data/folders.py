"""A user's own images: a folder with ``cats/`` and ``dogs/`` sub-folders."""

from __future__ import annotations

import os
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


def _entries(folder: Path) -> tuple[list[Path], list[SkippedImage]]:
    """Every non-hidden path under ``folder``, sorted, and the sub-folders that could not be read.

    Links to folders are listed, not followed (a loop of links would never end).
    """
    unreadable: list[SkippedImage] = []

    def note(error: OSError) -> None:
        reason = f"folder cannot be read ({error.strerror}); its images are not used"
        unreadable.append(SkippedImage(Path(error.filename), reason))

    found: list[Path] = []
    for top, folders, files in os.walk(folder, onerror=note):
        folders[:] = [name for name in folders if not name.startswith(".")]
        found += [Path(top, name) for name in folders + files if not name.startswith(".")]
    return sorted(found), unreadable


def _candidates(folder: Path) -> tuple[list[Path], list[SkippedImage]]:
    """The files under ``folder`` named like images, and why each other entry is not used.

    Plain sub-folders are searched and not listed, unless named like an image (``x.jpg/``).
    """
    entries, skipped = _entries(folder)
    candidates: list[Path] = []
    for path in entries:
        suffix = path.suffix.lower()
        if path.is_dir() and path.is_symlink():
            reason = "a link to a folder (links to folders are not followed)"
        elif path.is_dir() and suffix in IMAGE_EXTENSIONS:
            reason = "a folder named like an image, not an image (what it holds is searched)"
        elif path.is_dir():
            continue
        elif suffix in IMAGE_EXTENSIONS:
            candidates.append(path)  # a file, a link (broken or not) or a pipe: check_image says
            continue
        else:
            reason = f"not an image file type ({path.suffix or 'no extension'})"
        skipped.append(SkippedImage(path, reason))
    return candidates, skipped


def folder_records(root: Path) -> tuple[list[PetRecord], list[SkippedImage]]:
    """Records for every usable image under ``root/cats`` and ``root/dogs``, and the skip list.

    Sub-folders are searched recursively; hidden files and folders are ignored; everything else
    that is not a usable image goes to the skip list with its reason (see :func:`format_skipped`):
    other file types, unreadable, truncated, too small or too large images, broken links, links
    to folders, folders named like images, sub-folders that cannot be read.
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
        candidates, not_used = _candidates(class_dirs[name][0])
        usable, bad = validate_images(candidates)
        records += [PetRecord(p, label, breed=None, mask_path=None) for p in usable]
        skipped += sorted(not_used + bad, key=lambda item: item.path)
    if not records:
        searched = " or ".join(str(class_dirs[name][0]) for name in _CLASS_FOLDERS)
        raise FolderLayoutError(f"No usable images under {searched}.\n{format_skipped(skipped)}")
    return records, skipped

"""The bundled data set: 940 Oxford-IIIT Pet images with pet masks, in ``data/pets``.

``scripts/build_bundled_data.py`` writes ``data/pets/index.csv`` with one row per image (split,
label, breed and the SHA-256 of the image and mask); :func:`bundled_records` checks those hashes
once per process before handing out records.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

from course_utils import config
from course_utils.data.records import PetRecord
from course_utils.data.splits import check_split
from course_utils.errors import CourseError

INDEX_COLUMNS: tuple[str, ...] = (
    "image",
    "mask",
    "breed",
    "species",
    "label",
    "split",
    "width",
    "height",
    "mask_kind",
    "image_sha256",
    "mask_sha256",
)
_FIX = (
    "Restore the committed files with `git checkout -- data/`, or rebuild them with "
    "`python scripts/build_bundled_data.py`."
)
_verified_roots: set[Path] = set()


class DataIntegrityError(CourseError):
    """A bundled file is missing or its SHA-256 differs from ``index.csv``."""


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def default_bundled_root() -> Path:
    """``<data dir>/pets``, where the data dir is ``$COURSE_DATA_DIR`` or ``<repo>/data``."""
    return config.data_dir() / "pets"


def read_index(root: Path) -> list[dict[str, str]]:
    """The rows of ``root/index.csv`` (every split), checked for the expected columns."""
    index = root / "index.csv"
    if not index.is_file():
        raise FileNotFoundError(
            f"Bundled data set not found: there is no {index}. It ships with the course "
            f"repository in data/pets; run from a clone of the repository, or set "
            f"${config.DATA_DIR_ENV} to the folder that holds pets/index.csv "
            f"(now: {config.data_dir()})."
        )
    with index.open(newline="") as file:
        reader = csv.DictReader(file)
        missing = set(INDEX_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise DataIntegrityError(f"{index} lacks the column(s) {sorted(missing)}. {_FIX}")
        return list(reader)


def verify_bundled(root: Path, rows: list[dict[str, str]]) -> None:
    """Raise :class:`DataIntegrityError` naming every file missing or unlike its index hash."""
    problems = []
    for row in rows:
        for column in ("image", "mask"):
            path = root / row[column]
            if not path.is_file():
                problems.append(f"{path} (missing)")
            elif sha256_file(path) != row[f"{column}_sha256"]:
                problems.append(f"{path} (SHA-256 differs from index.csv)")
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise DataIntegrityError(
            f"{len(problems)} bundled file(s) do not match {root / 'index.csv'}:\n  "
            f"{shown}{more}\n{_FIX}"
        )


def bundled_records(split: str, root: Path | None = None, verify: bool = True) -> list[PetRecord]:
    """Records of one split (``"train"``, ``"val"`` or ``"test"``) of the bundled set.

    ``root`` defaults to ``config.data_dir() / "pets"``. With ``verify`` every file's SHA-256 is
    checked against ``index.csv`` (all splits, once per root per process).
    """
    check_split(split)
    root = Path(root) if root is not None else default_bundled_root()
    rows = read_index(root)
    if verify and root.resolve() not in _verified_roots:
        verify_bundled(root, rows)
        _verified_roots.add(root.resolve())
    return [
        PetRecord(
            image_path=root / row["image"],
            label=int(row["label"]),
            breed=row["breed"],
            mask_path=root / row["mask"],
        )
        for row in rows
        if row["split"] == split
    ]

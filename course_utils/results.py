"""The course verdict: one row per aspect (accuracy, cost, calibration, ...), written by the
notebook that measured it, so that the README's table is generated, never typed.

A notebook calls :func:`record` with measured, formatted values; the rows of a run land in
``<artifacts>/results/verdict.json`` (keyed by profile). ``scripts/run_notebooks.py --in-place``
copies them into the committed ``results/verdict.json``, and ``scripts/show_results.py`` renders
that file's ``cpu`` rows into the README.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from course_utils import config

VERDICT_FILE = "verdict.json"


@dataclass(frozen=True)
class VerdictRow:
    """One aspect of the comparison, as the notebook that measured it states it."""

    aspect: str  # what is compared, e.g. "test accuracy (bundled test split, 218 images)"
    resnet50: str  # ResNet-50's measured value, with its interval where it has one
    resnet101: str
    difference: str  # ResNet-101 minus ResNet-50 (or the ratio), with its interval
    verdict: str  # the sentence generated from the numbers
    notebook: str  # e.g. "04"


def run_file() -> Path:
    """This run's verdict file: ``<artifacts>/results/verdict.json``."""
    return config.artifacts_dir() / "results" / VERDICT_FILE


def read(path: Path) -> dict[str, dict[str, dict[str, str]]]:
    """``{profile: {key: row fields}}`` from ``path`` (empty when it does not exist)."""
    return json.loads(path.read_text()) if path.exists() else {}


def write(path: Path, rows: dict[str, dict[str, dict[str, str]]]) -> None:
    """Write ``rows`` to ``path`` atomically (a crash never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        json.dump(rows, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")
    os.replace(f.name, path)


def record(profile: config.Profile, key: str, row: VerdictRow) -> None:
    """Store ``row`` under ``key`` for ``profile`` in this run's verdict file (replacing the row
    an earlier run of the same notebook wrote)."""
    path = run_file()
    rows = read(path)
    rows.setdefault(profile.name, {})[key] = asdict(row)
    write(path, rows)


def merge(source: Path, target: Path, profile: str) -> int:
    """Copy ``profile``'s rows from ``source`` into ``target``; return how many were copied."""
    new = read(source).get(profile, {})
    if new:
        rows = read(target)
        rows.setdefault(profile, {}).update(new)
        write(target, rows)
    return len(new)

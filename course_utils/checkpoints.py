"""Checkpoint files: atomic saving, safe loading (``weights_only=True``) and RNG state.

A course checkpoint is a plain ``dict`` that ``torch.load(..., weights_only=True)`` can read:
tensors and plain Python values only (dicts, lists, tuples, str, int, float, bool, None), never
pickled objects. This module checks its header: ``format`` (:data:`CHECKPOINT_FORMAT`), ``arch``,
``num_classes`` and ``model``; what else a training run stores is typed in
:mod:`course_utils.runs`.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from course_utils.errors import CourseError

# Bumped whenever the contents change; older files get a clear message, never a half-load.
# 2: "config" became "recipe" (without channels_last), "runtime" added.
CHECKPOINT_FORMAT = "course_utils.checkpoint/2"
_FORMAT_PREFIX = "course_utils.checkpoint/"
# How torch's weights-only unpickler says that a file holds code (a function, a class, a call);
# anything else it rejects (an unknown opcode, a stray byte) is a damaged file.
_CODE_OBJECT = re.compile(
    r"GLOBAL \S+|call reduce for|create new object for|Can only build", re.IGNORECASE
)
_GLOBAL = re.compile(r"GLOBAL (\S+)")
_TORCH_ADVICE = re.compile(r"weights_only|file an issue|can still be loaded|documentation of torch")


class CheckpointError(CourseError):
    """A file that is not a usable course checkpoint, or one for a different model."""


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """No file at the checkpoint path."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (see :func:`write_atomic`) and return the path."""
    return write_atomic(path, lambda file: torch.save({"format": CHECKPOINT_FORMAT, **state}, file))


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write`` on a binary file that atomically becomes ``path``; return the path.

    The bytes go to a temporary file in the same folder, are flushed to disk (``fsync``) and the
    file is renamed over ``path`` (``os.replace``), so a crash mid-save leaves the previous
    file intact, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as file:  # "x": a fresh file, with the usual permissions
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(
    path: str | Path,
    *,
    expected_arch: str | None = None,
    expected_num_classes: int | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load a course checkpoint safely (``weights_only=True``) and check what it holds.

    Raises :class:`CheckpointNotFound` for a missing file, :class:`CheckpointError` for a file
    that is truncated or corrupt, holds code objects (pickled functions or classes: it may be
    malicious, and nothing in it runs), is not a course checkpoint (or one of another format
    version), or was saved for another architecture or class count than
    ``expected_arch`` / ``expected_num_classes``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointNotFound(f"No checkpoint at {path}" + _nearby(path))
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if _CODE_OBJECT.search(str(error)) is None:
            raise _unreadable(path, _specific_reason(error)) from error
        named = _GLOBAL.search(str(error))
        what = f"code objects ({named.group(1)})" if named else "code objects"
        raise CheckpointError(
            f"Refusing to load {path}: it holds {what}, which run code when unpickled, so it may "
            "be malicious. torch.load(weights_only=True) refused it before anything ran. Course "
            "checkpoints hold only tensors and plain values: use one written by the train command "
            "or load_or_train, and do not open this file by any other means."
        ) from error
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as error:
        raise _unreadable(path, _specific_reason(error)) from error
    _check_contents(path, state, expected_arch, expected_num_classes)
    return state


def _unreadable(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {reason}"
    )


def _specific_reason(error: Exception) -> str:
    """The specific part of torch's long weights-only message (e.g. ``Unsupported operand 110``).

    torch's advice around it (loading with other arguments, filing an issue) is left out.
    """
    for line in str(error).splitlines():
        reason = line.rpartition("WeightsUnpickler error:")[2].strip()
        reason = reason.removeprefix("Weights only load failed.").strip()
        if reason and not _TORCH_ADVICE.search(reason):
            return reason
    return type(error).__name__


def _nearby(path: Path) -> str:
    """A hint listing the checkpoints next to a missing path, if there are any."""
    folder = path.parent
    found = sorted(p.name for p in folder.glob("*.pt")) if folder.is_dir() else []
    return f" (checkpoints in {folder}: {', '.join(found)})" if found else ""


def _check_contents(
    path: Path, state: object, expected_arch: str | None, expected_num_classes: int | None
) -> None:
    """Raise :class:`CheckpointError` unless ``state`` is a course checkpoint of the model asked."""
    stored_format = state.get("format") if isinstance(state, dict) else None
    older = isinstance(stored_format, str) and stored_format.startswith(_FORMAT_PREFIX)
    if older and stored_format != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} was written by another version of course_utils (format {stored_format!r}; "
            f"this version reads {CHECKPOINT_FORMAT!r}). Retrain it: delete or move away its "
            "run folder, and load_or_train (or the train command) trains it afresh."
        )
    if not isinstance(state, dict) or stored_format != CHECKPOINT_FORMAT:
        hint = ""
        if isinstance(state, dict) and state and all(torch.is_tensor(v) for v in state.values()):
            hint = (
                " It looks like a bare state_dict: load it with "
                "model.load_state_dict(torch.load(path, weights_only=True))."
            )
        raise CheckpointError(
            f"{path} is not a course_utils checkpoint (no format {CHECKPOINT_FORMAT!r}).{hint}"
        )
    missing = {"arch", "num_classes", "model"} - set(state)
    if missing:
        raise CheckpointError(f"{path} is incomplete: it lacks {sorted(missing)}.")
    arch, num_classes = state["arch"], state["num_classes"]
    wrong_arch = expected_arch is not None and arch != expected_arch
    wrong_classes = expected_num_classes is not None and num_classes != expected_num_classes
    if wrong_arch or wrong_classes:
        asked_arch = expected_arch or arch
        asked_classes = num_classes if expected_num_classes is None else expected_num_classes
        raise CheckpointError(
            f"Checkpoint {path} is {arch} with {num_classes} classes; you asked for "
            f"{asked_arch} with {asked_classes} classes."
        )


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch (CPU and every CUDA device) RNG states, as tensors and plain lists."""
    version, mt_state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # noqa: NPY002
    return {
        "python": [version, list(mt_state), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng_state`: put every RNG back where it was."""
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

"""A run folder: what a training run writes, how it is resumed, and what its checkpoints hold.

One folder per run::

    last.pt        everything needed to resume (weights, optimiser, scheduler, grad scaler,
                   history, RNG states), rewritten atomically after every epoch
    best.pt        the weights of the epoch with the best validation accuracy so far
    history.json   the per-epoch records, the recipe and what peak memory measured
    history.csv    the records as a table

The checkpoint contents are typed once here (:class:`Checkpoint`, :class:`ResumableCheckpoint`)
and hold only tensors and plain values, so ``torch.load(..., weights_only=True)`` reads them.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import pandas as pd
import torch
import torchvision
from torch import nn

from course_utils import models
from course_utils.checkpoints import load_checkpoint, save_checkpoint, write_atomic
from course_utils.config import display_path
from course_utils.errors import CourseError
from course_utils.recipe import Recipe

log = logging.getLogger(__name__)

LAST, BEST = "last.pt", "best.pt"
HISTORY_JSON, HISTORY_CSV = "history.json", "history.csv"


class Checkpoint(TypedDict):
    """What ``best.pt`` and ``last.pt`` hold (``format`` is added by ``save_checkpoint``)."""

    kind: str  # "last", "best" or "final" (weights only: a workshop archive's last.pt)
    arch: str
    num_classes: int
    epoch: int  # epochs completed
    recipe: dict[str, Any]  # Recipe.to_dict()
    model: dict[str, torch.Tensor]  # the state_dict
    history: list[dict[str, Any]]
    memory_measure: str
    runtime: dict[str, Any]  # Runtime.describe() of the epochs written last: device, amp dtype...
    meta: dict[str, Any]  # the caller's: cache key, profile, data sources, classes
    versions: dict[str, str]


class ResumableCheckpoint(Checkpoint):
    """``last.pt``: a :class:`Checkpoint` plus the state that resuming needs."""

    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any]  # empty when the run had no fp16 gradient scaler
    rng: dict[str, Any]  # checkpoints.capture_rng_state()


RESUME_KEYS = frozenset(ResumableCheckpoint.__annotations__) - frozenset(Checkpoint.__annotations__)


class RunExistsError(CourseError, FileExistsError):
    """The folder already holds a training run, and neither resume nor overwrite was asked."""


class RecipeMismatch(CourseError):
    """A run cannot be resumed with another recipe than the one it was started with."""


class NotResumable(CourseError):
    """``last.pt`` holds final weights only (no optimiser state): a finished run, never resumed."""


@dataclass
class History:
    """Per-epoch metrics of a run, one dict per epoch (see ``train.fit`` for the keys)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    recipe: dict[str, Any] = field(default_factory=dict)
    memory_measure: str = ""

    def to_frame(self) -> pd.DataFrame:
        """The records as a DataFrame, one row per epoch."""
        return pd.DataFrame(self.records)

    @property
    def best(self) -> dict[str, Any] | None:
        """The record of the epoch with the highest validation accuracy (the first, on ties)."""
        return max(self.records, key=lambda r: r["val_acc"], default=None)

    @classmethod
    def from_checkpoint(cls, state: Checkpoint) -> History:
        """The history stored in a loaded checkpoint."""
        return cls(list(state["history"]), state["recipe"], state["memory_measure"])


def model_from_state(state: Checkpoint) -> nn.Module:
    """Build the architecture a loaded checkpoint names and load its weights (strict)."""
    model = models.build_model(state["arch"], num_classes=state["num_classes"])
    model.load_state_dict(state["model"], strict=True)
    return model


def model_from_checkpoint(
    path: str | Path,
    *,
    expected_arch: str | None = None,
    expected_num_classes: int | None = None,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the stored architecture, load its weights and return ``(model, info)``.

    The model is in eval mode on ``device``. ``info`` is the checkpoint without its weights and
    resume state: ``arch``, ``num_classes``, ``epoch``, ``recipe``, ``history``, ``meta``...
    """
    state: Checkpoint = load_checkpoint(  # type: ignore[assignment]
        path, expected_arch=expected_arch, expected_num_classes=expected_num_classes
    )
    model = model_from_state(state)
    info = {key: value for key, value in state.items() if key != "model" and key not in RESUME_KEYS}
    return model.to(device).eval(), info


def describe_versions() -> dict[str, str]:
    """The library versions a checkpoint was written with."""
    return {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__)}


@dataclass(frozen=True)
class RunFolder:
    """The folder of one training run (see the module docstring for its files)."""

    path: Path

    @property
    def last(self) -> Path:
        return self.path / LAST

    @property
    def best(self) -> Path:
        return self.path / BEST

    def holds_run(self) -> bool:
        """True when a ``last.pt`` exists (a finished or an interrupted run)."""
        return self.last.is_file()

    def prepare(self, *, resume: bool, overwrite: bool) -> None:
        """Refuse to write over a run unless asked; ``overwrite`` moves the old one aside."""
        if resume and overwrite:
            raise ValueError("Choose resume=True (continue the run) or overwrite=True, not both.")
        if self.last.exists() and not resume:
            if not overwrite:
                raise RunExistsError(
                    f"{display_path(self.path)} already holds a training run ({LAST}). Resume it "
                    f"(resume=True, or --resume) or move it aside to "
                    f"{self.path.name}.bak-<timestamp> and start afresh (overwrite=True, --force)."
                )
            self.move_aside()
        self.path.mkdir(parents=True, exist_ok=True)

    def move_aside(self) -> Path:
        """Rename the folder to ``<name>.bak-<timestamp>`` (kept, never deleted); return that."""
        backup = self.path.with_name(f"{self.path.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
        self.path.rename(backup)
        log.info("Moved the previous run to %s", display_path(backup))
        return backup

    def load_for_resume(self, recipe: Recipe) -> ResumableCheckpoint:
        """``last.pt``, checked to be a run of ``recipe`` (the same arch, classes and recipe)."""
        state = load_checkpoint(
            self.last, expected_arch=recipe.arch, expected_num_classes=recipe.num_classes
        )
        if not state.keys() >= RESUME_KEYS:
            raise NotResumable(
                f"{display_path(self.last)} holds final weights only (no optimiser state, e.g. "
                "from a workshop archive): load_or_train loads it as a finished run, and it "
                "cannot be resumed. To train it yourself, start afresh (overwrite=True, --force)."
            )
        changes = recipe.changes_from(state["recipe"])
        if changes:
            raise RecipeMismatch(
                f"Cannot resume {display_path(self.last)}: it was trained with another recipe "
                f"({', '.join(changes)}). Use the same recipe, or start a new run "
                "(overwrite=True, --force)."
            )
        return state  # type: ignore[return-value]

    def save_epoch(self, last: ResumableCheckpoint, history: History, *, improved: bool) -> None:
        """Write ``last.pt``, ``best.pt`` (weights only) when val accuracy improved, the history."""
        save_checkpoint(self.last, dict(last))
        if improved:
            best = {k: v for k, v in last.items() if k not in RESUME_KEYS}
            save_checkpoint(self.best, {**best, "kind": "best"})
        payload = {
            "recipe": history.recipe,
            "memory_measure": history.memory_measure,
            "epochs": history.records,
        }
        json_bytes = json.dumps(payload, indent=2).encode()
        csv_bytes = history.to_frame().to_csv(index=False).encode()
        write_atomic(self.path / HISTORY_JSON, lambda file: file.write(json_bytes))
        write_atomic(self.path / HISTORY_CSV, lambda file: file.write(csv_bytes))

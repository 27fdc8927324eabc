"""Run profiles, seeding, device selection and paths: the one place that sets the scale of a run.

``COURSE_PROFILE`` picks a profile (``smoke``, ``cpu`` or ``gpu``); without it the course uses
``gpu`` when CUDA is available, else ``cpu``. Notebooks read sizes from the profile and never
hard-code them.
"""

from __future__ import annotations

import logging
import os
import platform
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from course_utils.errors import CourseError

PROFILE_ENV = "COURSE_PROFILE"
DEVICE_ENV = "COURSE_DEVICE"
DATA_DIR_ENV = "COURSE_DATA_DIR"
ARTIFACTS_DIR_ENV = "COURSE_ARTIFACTS_DIR"
OXFORD_DIR_ENV = "COURSE_OXFORD_DIR"  # a full Oxford-IIIT Pet copy on disk: used, never downloaded

DEFAULT_SEED = 0


@dataclass(frozen=True)
class Profile:
    """Everything that sets the size of a run. Notebooks read these, never hard-code them."""

    name: str
    description: str
    dataset: str  # "bundled" (ships with the repo) or "oxford-iiit-pet" (full download)
    image_size: int  # training resolution in pixels (square crops)
    batch_size: int
    epochs: int
    max_images_per_split: int | None  # None: every image of each split
    pretrained: bool  # try torchvision's ImageNet weights where a notebook offers them
    demo_image_size: int  # notebook 01: resolution of the plain-vs-residual experiment
    demo_depths: tuple[int, ...]  # notebook 01: depths (6n+2 layers) of the compared stacks
    demo_steps: int  # notebook 01: optimiser steps per stack


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        description="CI: tiny subsets, low resolution, a few steps",
        dataset="bundled",
        image_size=64,
        batch_size=16,
        epochs=4,
        max_images_per_split=64,
        pretrained=False,
        demo_image_size=32,
        demo_depths=(8, 14),
        demo_steps=6,
    ),
    "cpu": Profile(
        name="cpu",
        description="a laptop without a GPU: bundled data, 128 px, minutes per network",
        dataset="bundled",
        image_size=128,
        batch_size=32,
        epochs=24,
        max_images_per_split=None,
        pretrained=False,
        demo_image_size=32,
        demo_depths=(20, 56),
        demo_steps=300,
    ),
    "gpu": Profile(
        name="gpu",
        description="a workshop or Colab GPU: full Oxford-IIIT Pet when reachable, 224 px",
        dataset="oxford-iiit-pet",
        image_size=224,
        batch_size=64,
        epochs=30,
        max_images_per_split=None,
        pretrained=True,
        demo_image_size=32,
        demo_depths=(20, 56),
        demo_steps=1000,
    ),
}


def get_profile(name: str | None = None) -> Profile:
    """Return the named profile, else the one in ``$COURSE_PROFILE``, else gpu/cpu by hardware."""
    name = name or os.environ.get(PROFILE_ENV) or ("gpu" if torch.cuda.is_available() else "cpu")
    try:
        return PROFILES[name.strip().lower()]
    except KeyError:
        valid = ", ".join(PROFILES)
        raise ValueError(
            f"Unknown course profile {name!r}. Valid profiles: {valid}. "
            f"Set it with e.g. `export {PROFILE_ENV}=cpu`."
        ) from None


def get_device() -> torch.device:
    """CUDA when available, else CPU; ``$COURSE_DEVICE`` (e.g. ``cpu``, ``cuda:1``) overrides."""
    requested = os.environ.get(DEVICE_ENV)
    if not requested:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise CourseError(
            f"${DEVICE_ENV}={requested!r} is not a device: use cpu, cuda, cuda:N or mps."
        ) from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),  # Apple silicon, macOS 12.3+
    }
    if not available.get(device.type, False):
        raise CourseError(
            f"${DEVICE_ENV}={requested!r}, but this machine's PyTorch has no {device.type} "
            f"device. Unset {DEVICE_ENV} (CUDA when available, else the CPU) or set it to cpu."
        )
    return device


def seed_everything(seed: int = DEFAULT_SEED) -> torch.Generator:
    """Seed python, numpy and torch; return a generator to pass to a DataLoader."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - libraries draw from the global numpy RNG
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: derive python and numpy seeds from torch's worker seed."""
    worker_seed = torch.initial_seed() % 2**32
    random.seed(worker_seed)
    np.random.seed(worker_seed)  # noqa: NPY002 - as above, per worker


def default_num_workers() -> int:
    """DataLoader workers for this machine: one per spare core, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, min(8, (cores or 1) - 1))


QUIET_PROGRESS_ENV = "COURSE_QUIET_PROGRESS"


def progress_bars_off() -> bool:
    """True when nobody watches the bars: under CI (``$CI``), or in a headless notebook run
    (``$COURSE_QUIET_PROGRESS``, set by ``scripts/run_notebooks.py``), where a bar would be
    saved frozen at 0 % in the executed notebook. Logs stay readable either way."""
    return bool(os.environ.get("CI") or os.environ.get(QUIET_PROGRESS_ENV))


def repo_root() -> Path:
    """The course repository (the folder that holds ``course_utils/``)."""
    return Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """The bundled data set: ``$COURSE_DATA_DIR`` or ``<repo>/data``."""
    return Path(os.environ.get(DATA_DIR_ENV) or repo_root() / "data")


def artifacts_dir() -> Path:
    """Where runs write checkpoints, downloads and figures (git-ignored).

    ``$COURSE_ARTIFACTS_DIR`` moves it, e.g. to a mounted Google Drive folder in Colab.
    """
    return Path(os.environ.get(ARTIFACTS_DIR_ENV) or repo_root() / "artifacts")


def display_path(path: str | Path) -> str:
    """``path`` relative to the artifacts folder, the repository, or the home folder (``~/...``,
    e.g. torch.hub's cache) when it lies inside one of them, else as given: outputs never show
    this machine's absolute paths. The artifacts folder reads ``artifacts/...``, or
    ``$COURSE_ARTIFACTS_DIR/...`` where that setting moves it, so the path still says where to
    look."""
    path = Path(path)
    resolved = path.expanduser().resolve()
    moved = artifacts_dir().resolve() != (repo_root() / "artifacts").resolve()
    artifacts_label = f"${ARTIFACTS_DIR_ENV}" if moved else "artifacts"
    for base, label in ((artifacts_dir(), artifacts_label), (repo_root(), ""), (Path.home(), "~")):
        try:
            relative = resolved.relative_to(base.resolve())
        except ValueError:
            continue
        return str(Path(label) / relative) if label else str(relative)
    return str(path)


class _StdoutHandler(logging.Handler):
    """Writes each record to the ``sys.stdout`` of the moment (a notebook cell's, a terminal's)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stdout, flush=True)
        except Exception:  # logging must never break the caller
            self.handleError(record)


def setup_logging(level: int = logging.INFO) -> None:
    """Show the package's log lines ("loaded ...", "training ...", one line per epoch) on stdout.

    The library reports through :mod:`logging` and prints nothing itself; each notebook's setup
    code and the command line call this once. Calling it again changes only the level.
    """
    logger = logging.getLogger("course_utils")
    logger.setLevel(level)
    if not any(isinstance(handler, _StdoutHandler) for handler in logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)


def environment_report(profile: Profile | None = None) -> dict[str, str]:
    """Profile, device and library versions that produced a notebook's outputs."""
    import torchvision

    profile = profile or get_profile()
    device = get_device()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    return {
        "profile": f"{profile.name} ({profile.description})",
        "device": str(device),
        "gpu": gpu,
        "cpu threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(terse=True),
    }


def print_environment(profile: Profile | None = None) -> None:
    """Print :func:`environment_report` as aligned ``key: value`` lines."""
    report = environment_report(profile)
    width = max(map(len, report))
    for key, value in report.items():
        print(f"{key:>{width}}: {value}")


def profile_as_dict(profile: Profile) -> dict[str, object]:
    """The profile as a plain dict (for checkpoints and result files)."""
    return asdict(profile)

"""Workshop mode: every network the course uses, trained once, shared as one verified archive.

An instructor runs :func:`pack` the day before (it trains through ``load_or_train``, so cached
runs are reused); attendees run :func:`unpack`, and ``load_or_train`` then loads each run as a
finished one. The archive is an uncompressed tar laid out like an artifacts folder::

    manifest.json                       format, course and torch versions, profile; per run its
                                        recipe, cache key and each file's size and sha256
    checkpoints/<run folder>/last.pt    the final weights, history and metadata: no optimiser
    checkpoints/<run folder>/history.json   state, so the run is finished and never resumed
    checkpoints/<run folder>/history.csv

:func:`unpack` (and :func:`verify`) refuse, with nothing written: a corrupt or truncated archive,
a foreign one (no manifest, or another format version), runs whose folder, recipe, cache key or
profile disagree with the manifest or with their checkpoint, any member that is not a plain file
at its expected path (absolute, ``..``, links, devices), and an existing run with other content
(unless ``replace``, which moves it aside).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import course_utils
from course_utils.checkpoints import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    write_atomic,
)
from course_utils.config import Profile, artifacts_dir, display_path, repo_root
from course_utils.cost import count_macs
from course_utils.data import CLASSES
from course_utils.errors import CourseError
from course_utils.models import (
    ARCHITECTURES,
    PretrainedWeightsUnavailable,
    build_model,
    imagenet_weights_file,
)
from course_utils.recipe import Recipe, Regime
from course_utils.runs import (
    HISTORY_CSV,
    HISTORY_JSON,
    LAST,
    RESUME_KEYS,
    RunFolder,
    describe_versions,
)
from course_utils.zoo import cache_key, load_or_train, run_dir, training_data

log = logging.getLogger(__name__)

WORKSHOP_FORMAT = "course_utils.workshop/1"
_FORMAT_PREFIX = "course_utils.workshop/"
MANIFEST = "manifest.json"
CHECKPOINTS = "checkpoints"
RUN_FILES = (LAST, HISTORY_JSON, HISTORY_CSV)
MAX_MANIFEST_BYTES = 1 << 20
ARCHS = ("resnet50", "resnet101")
WIDE_CROP_SCALE = (0.08, 1.0)  # notebook 05's scale-augmented recipe
_MEMBER_TYPES = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.DIRTYPE: "a folder",
}


class ArchiveError(CourseError):
    """An archive that :func:`unpack` refuses (nothing was written)."""


def cost_matched_image_size(profile: Profile) -> int:
    """Notebook 05's cost-matched size: the side (a multiple of 16) where ResNet-101's MACs come
    closest to ResNet-50's at the profile's training size."""
    size, classes = profile.image_size, len(CLASSES)
    macs = {arch: count_macs(build_model(arch, num_classes=classes), size) for arch in ARCHS}
    return round(size / (macs["resnet101"] / macs["resnet50"]) ** 0.5 / 16) * 16


@dataclass(frozen=True)
class CourseRun:
    """One ``load_or_train(arch, regime, **overrides)`` call of the notebooks; an override may be
    a function of the profile (e.g. :func:`cost_matched_image_size`). ``profiles``: the profiles
    whose notebooks make the call (``None``: all)."""

    arch: str
    regime: Regime = "scratch"
    overrides: Mapping[str, Any | Callable[[Profile], Any]] = field(default_factory=dict)
    profiles: tuple[str, ...] | None = None

    def wanted_in(self, profile: Profile) -> bool:
        """Whether the notebooks make this call at ``profile``."""
        return self.profiles is None or profile.name in self.profiles

    def resolved(self, profile: Profile) -> dict[str, Any]:
        """The overrides at ``profile``, functions called."""
        return {k: v(profile) if callable(v) else v for k, v in self.overrides.items()}

    def describe(self) -> str:
        """The call as a notebook writes it, e.g. ``load_or_train('resnet50', crop_scale=...)``."""
        args = [repr(self.arch)] + ([repr(self.regime)] if self.regime != "scratch" else [])
        for name, value in self.overrides.items():
            args.append(
                f"{name}={value.__name__}(profile)" if callable(value) else f"{name}={value!r}"
            )
        return f"load_or_train({', '.join(args)})"


# Notebook 04's rare-breed trial: one network beyond the cpu profile's budget, so not in cpu.
BREED_BALANCED_TRIAL = CourseRun(
    "resnet50", overrides={"breed_balanced": True}, profiles=("smoke", "gpu")
)
# Every network the notebooks get from load_or_train (tests/test_workshop.py checks the list
# against their sources). The imagenet runs are packed only where the weights are available.
COURSE_RUNS: tuple[CourseRun, ...] = (
    *(CourseRun(arch) for arch in ARCHS),  # notebooks 04-07
    CourseRun("resnet50", overrides={"seed": 1}),  # 04's noise floor, 06's agreement control
    *(CourseRun(arch, "imagenet") for arch in ARCHS),  # notebook 04
    *(CourseRun(arch, overrides={"crop_scale": WIDE_CROP_SCALE}) for arch in ARCHS),  # 05
    CourseRun("resnet101", overrides={"image_size": cost_matched_image_size}),  # 05
    BREED_BALANCED_TRIAL,  # 04
)


@dataclass(frozen=True)
class Unpacked:
    """What :func:`unpack` did: the manifest, and run folders added, skipped and replaced."""

    manifest: dict[str, Any]
    added: list[str]
    skipped: list[str]  # already there with identical files
    replaced: dict[str, Path]  # folder -> where the previous run was moved


# ---------------------------------------------------------------------------------------- pack


def pack(
    output: str | Path,
    profile: Profile,
    runs: Sequence[CourseRun] = COURSE_RUNS,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or load) every run at ``profile`` and write the archive atomically; return its
    manifest. An imagenet run without available weights is skipped and listed as such."""
    output = Path(output).expanduser()
    output.parent.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "format": WORKSHOP_FORMAT,
        "profile": profile.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "course": {"version": course_utils.__version__, "commit": _commit()},
        "versions": describe_versions(),
        "runs": [],
        "skipped": [],
    }
    with tempfile.TemporaryDirectory(prefix=".workshop-", dir=output.parent) as scratch:
        staging = Path(scratch)
        for run in runs:
            if not run.wanted_in(profile):
                reason = f"the notebooks do not train it in the {profile.name} profile"
                manifest["skipped"].append({"run": run.describe(), "reason": reason})
                continue
            try:
                folder, key = _trained(run, profile, progress)
            except PretrainedWeightsUnavailable as error:
                log.warning("workshop: skipping %s: %s", run.describe(), error)
                manifest["skipped"].append({"run": run.describe(), "reason": str(error)})
                continue
            manifest["runs"].append(_stage(folder, key, staging / CHECKPOINTS / folder.path.name))
        write_atomic(output, lambda file: _write_tar(file, manifest, staging))
    return manifest


def _trained(run: CourseRun, profile: Profile, progress: bool) -> tuple[RunFolder, dict]:
    """The finished run folder of ``run`` (trained now if not cached) and its cache key."""
    no_weights = not (profile.pretrained or imagenet_weights_file(run.arch).exists())
    if run.regime == "imagenet" and no_weights:
        raise PretrainedWeightsUnavailable(
            f"no ImageNet weights in torch.hub's cache, and the {profile.name} profile does "
            "not download them"
        )
    overrides = run.resolved(profile)
    recipe = Recipe.from_profile(profile, run.arch, run.regime, **overrides)
    data = training_data(recipe, profile)
    load_or_train(run.arch, run.regime, profile, progress=progress, data=data, **overrides)
    key = cache_key(recipe, profile, data)
    return RunFolder(run_dir(key)), key


def _stage(folder: RunFolder, key: dict[str, Any], target: Path) -> dict[str, Any]:
    """Copy a finished run into ``target``, weights only; return its manifest entry."""
    recipe = key["recipe"]
    state = load_checkpoint(
        folder.last, expected_arch=recipe["arch"], expected_num_classes=recipe["num_classes"]
    )
    weights = {k: v for k, v in state.items() if k not in RESUME_KEYS}
    save_checkpoint(target / LAST, {**weights, "kind": "final"})
    for name in (HISTORY_JSON, HISTORY_CSV):
        shutil.copyfile(folder.path / name, target / name)
    return {
        "folder": folder.path.name,
        "recipe": recipe,
        "cache_key": key,
        "val_acc": state["history"][-1]["val_acc"],
        "trained_on": state["runtime"]["device"],
        "files": {
            name: {"bytes": (target / name).stat().st_size, "sha256": _sha256(target / name)}
            for name in RUN_FILES
        },
    }


def _write_tar(file: BinaryIO, manifest: dict[str, Any], staging: Path) -> None:
    """The manifest first, then every run's files, owned by nobody in particular."""

    def anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mode = 0o644
        return info

    with tarfile.open(fileobj=file, mode="w", format=tarfile.PAX_FORMAT) as tar:
        text = json.dumps(manifest, indent=2).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mtime = len(text), int(time.time())
        tar.addfile(anonymous(info), io.BytesIO(text))
        for entry in manifest["runs"]:
            for name in entry["files"]:
                arcname = f"{CHECKPOINTS}/{entry['folder']}/{name}"
                tar.add(staging / arcname, arcname=arcname, filter=anonymous)


def _commit() -> str | None:
    """The course repository's commit, where this copy is a git checkout."""
    try:
        done = subprocess.run(
            ["git", "-C", str(repo_root()), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------ verify, unpack


def verify(archive: str | Path) -> dict[str, Any]:
    """Check everything :func:`unpack` checks, in a temporary folder; return the manifest."""
    with (
        _open_archive(Path(archive).expanduser()) as (tar, manifest, label),
        tempfile.TemporaryDirectory(prefix="course-workshop-") as scratch,
    ):
        _extract_verified(tar, manifest, label, Path(scratch))
    return manifest


def unpack(
    archive: str | Path, into: str | Path | None = None, *, replace: bool = False
) -> Unpacked:
    """Verify ``archive`` and move its runs into ``<into>/checkpoints/`` (default: the artifacts
    folder). An existing run with identical files is skipped; one with other files is refused
    unless ``replace``, which moves it to ``<name>.bak-<timestamp>``. On any refusal nothing is
    written: the runs are extracted and checked in a temporary folder inside the target first."""
    into = Path(into).expanduser() if into is not None else artifacts_dir()
    checkpoints = into / CHECKPOINTS
    with _open_archive(Path(archive).expanduser()) as (tar, manifest, label):
        differs = {entry["folder"]: _differs(checkpoints, entry) for entry in manifest["runs"]}
        different = [name for name, state in differs.items() if state is True]
        skipped = [name for name, state in differs.items() if state is False]
        if different and not replace:
            raise ArchiveError(
                f"{display_path(checkpoints)} already holds other runs of the same recipe as "
                f"{label}: {', '.join(different)}. Nothing was unpacked. Move them away, or "
                "unpack with --replace (replace=True), which moves each to <name>.bak-<timestamp>."
            )
        created = [folder for folder in (into, checkpoints) if not folder.exists()]
        staging = checkpoints / f".workshop-unpack-{uuid.uuid4().hex}"
        try:
            staging.mkdir(parents=True)
            _extract_verified(tar, manifest, label, staging)
            replaced = {name: RunFolder(checkpoints / name).move_aside() for name in different}
            added = [name for name in differs if name not in skipped]
            for name in added:
                os.replace(staging / CHECKPOINTS / name, checkpoints / name)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            for folder in reversed(created):
                with suppress(OSError):  # only if empty: never another process's files
                    folder.rmdir()
            raise
        shutil.rmtree(staging, ignore_errors=True)
    return Unpacked(manifest, added, skipped, replaced)


def _differs(checkpoints: Path, entry: dict[str, Any]) -> bool | None:
    """None: no such run folder yet; False: it holds the archive's files; True: other files."""
    folder = checkpoints / entry["folder"]
    if not folder.exists() and not folder.is_symlink():
        return None
    return not all(
        (folder / name).is_file() and _sha256(folder / name) == file["sha256"]
        for name, file in entry["files"].items()
    )


@contextmanager
def _open_archive(path: Path) -> Iterator[tuple[tarfile.TarFile, dict[str, Any], str]]:
    """The open tar, its checked manifest and the archive's display name; every member checked
    to be a plain file at a path the manifest expects, before anything is extracted."""
    label = display_path(path)
    if not path.is_file():
        raise ArchiveError(f"No workshop archive at {label}.")
    try:
        with tarfile.open(path, mode="r:") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, label)
            manifest = _read_manifest(tar, members, label)
            _check_layout(members, manifest, label)
            yield tar, manifest, label
    except (tarfile.TarError, EOFError) as error:
        raise ArchiveError(
            f"{label} is not a readable tar archive (corrupt or truncated?): {error}. Download "
            "or copy it again."
        ) from error


def _check_member(member: tarfile.TarInfo, label: str) -> None:
    """Refuse a member whose path could land outside the archive's folder, or not a plain file."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or "\\" in member.name or not path.parts:
        raise ArchiveError(
            f"Refusing {label}: its member {member.name!r} has an unsafe path (absolute, or "
            "with '..'), which could write outside the target folder. Nothing was unpacked."
        )
    if not member.isreg():
        kind = _MEMBER_TYPES.get(member.type, f"of tar type {member.type!r}")
        raise ArchiveError(
            f"Refusing {label}: its member {member.name!r} is {kind}, not a plain file. Course "
            "workshop archives hold only plain files. Nothing was unpacked."
        )


def _read_manifest(
    tar: tarfile.TarFile, members: list[tarfile.TarInfo], label: str
) -> dict[str, Any]:
    """``manifest.json``, checked: its format, and that every run agrees with itself."""
    found = [member for member in members if member.name == MANIFEST]
    foreign = f"{label} is not a course workshop archive"
    if not found:
        raise ArchiveError(f"{foreign} (no {MANIFEST}). Use one written by 'workshop pack'.")
    if found[0].size > MAX_MANIFEST_BYTES:
        raise ArchiveError(f"{foreign}: its {MANIFEST} is larger than {MAX_MANIFEST_BYTES} bytes.")
    try:
        manifest = json.loads(tar.extractfile(found[0]).read())  # type: ignore[union-attr]
    except (ValueError, UnicodeDecodeError) as error:
        raise ArchiveError(f"{foreign}: its {MANIFEST} is not JSON ({error}).") from error
    stored = manifest.get("format") if isinstance(manifest, dict) else None
    if stored != WORKSHOP_FORMAT:
        if isinstance(stored, str) and stored.startswith(_FORMAT_PREFIX):
            raise ArchiveError(
                f"{label} was packed by another version of course_utils (format {stored!r}; "
                f"this version reads {WORKSHOP_FORMAT!r}). Pack it again with this version."
            )
        raise ArchiveError(f"{foreign} (no format {WORKSHOP_FORMAT!r} in its {MANIFEST}).")
    try:
        _check_runs(manifest, label)
    except (KeyError, TypeError, AttributeError) as error:
        raise ArchiveError(f"{label}: its {MANIFEST} is malformed ({error!r}).") from error
    return manifest


def _check_runs(manifest: dict[str, Any], label: str) -> None:
    """Each run's folder name, recipe, cache key and profile must agree with one another."""
    profile, folders = manifest["profile"], []
    for entry in manifest["runs"]:
        folder, recipe, key = entry["folder"], entry["recipe"], entry["cache_key"]
        where = f"{label}: run {folder!r}"
        if (
            not isinstance(folder, str)
            or PurePosixPath(folder).name != folder
            or folder[:1] in "./"
        ):
            raise ArchiveError(f"{where} has an unsafe folder name. Nothing was unpacked.")
        if folder in folders:
            raise ArchiveError(f"{where} appears twice in its {MANIFEST}.")
        folders.append(folder)
        if recipe.get("arch") not in ARCHITECTURES:
            raise ArchiveError(f"{where} is of an unknown architecture {recipe.get('arch')!r}.")
        problems = []
        if key["recipe"] != recipe:
            problems.append("its cache key holds another recipe")
        if key["data"]["profile"] != profile:
            problems.append(
                f"its cache key is of profile {key['data']['profile']!r}, not {profile!r}"
            )
        if key["format"] != CHECKPOINT_FORMAT:
            problems.append(
                f"its checkpoint format is {key['format']!r}, not {CHECKPOINT_FORMAT!r}"
            )
        if run_dir(key).name != folder:
            problems.append(f"its cache key names the folder {run_dir(key).name!r}")
        files = entry["files"]
        if LAST not in files or not set(files) <= set(RUN_FILES):
            problems.append(f"it lists {sorted(files)} instead of {list(RUN_FILES)}")
        if problems:
            raise ArchiveError(
                f"{where} does not match what it claims: {'; '.join(problems)}. Pack the archive "
                "again; nothing was unpacked."
            )


def _check_layout(members: list[tarfile.TarInfo], manifest: dict[str, Any], label: str) -> None:
    """The members are exactly the manifest and the files it lists, at the sizes it lists."""
    expected = {
        f"{CHECKPOINTS}/{entry['folder']}/{name}": file["bytes"]
        for entry in manifest["runs"]
        for name, file in entry["files"].items()
    }
    names = [member.name for member in members]
    unexpected = sorted({name for name in names if name not in expected and name != MANIFEST})
    repeated = sorted({name for name in names if names.count(name) > 1})
    if unexpected or repeated:
        raise ArchiveError(
            f"Refusing {label}: members its {MANIFEST} does not list, or lists once: "
            f"{unexpected + repeated}. Nothing was unpacked."
        )
    sizes = {member.name: member.size for member in members}
    damaged = sorted(name for name, size in expected.items() if sizes.get(name) != size)
    if damaged:
        raise ArchiveError(
            f"{label} is incomplete or damaged (truncated?): {damaged} missing or of another "
            f"size than its {MANIFEST} says. Download or copy it again; nothing was unpacked."
        )


def _extract_verified(
    tar: tarfile.TarFile, manifest: dict[str, Any], label: str, staging: Path
) -> None:
    """Extract the runs into ``staging`` and check each file's sha256 and each checkpoint."""
    root = staging.resolve()
    members = [member for member in tar.getmembers() if member.name != MANIFEST]
    for member in members:
        if not (root / member.name).resolve().is_relative_to(root):
            raise ArchiveError(f"Refusing {label}: {member.name!r} would land outside its folder.")
    try:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
            tar.extractall(staging, members=members, filter="data")
        else:
            tar.extractall(staging, members=members)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise ArchiveError(
            f"{label} could not be extracted (corrupt or truncated?): {error}. Download or copy "
            "it again; nothing was unpacked."
        ) from error
    for entry in manifest["runs"]:
        folder = staging / CHECKPOINTS / entry["folder"]
        for name, file in entry["files"].items():
            if _sha256(folder / name) != file["sha256"]:
                raise ArchiveError(
                    f"{label} is corrupt: {CHECKPOINTS}/{entry['folder']}/{name} does not match "
                    "its sha256 in the manifest. Download or copy it again; nothing was unpacked."
                )
        _check_checkpoint(folder / LAST, entry, f"{label}: {CHECKPOINTS}/{entry['folder']}")


def _check_checkpoint(path: Path, entry: dict[str, Any], where: str) -> None:
    """The extracted ``last.pt`` is a finished, weights-only run of the manifest's cache key."""
    recipe = entry["recipe"]
    try:
        state = load_checkpoint(
            path, expected_arch=recipe["arch"], expected_num_classes=recipe["num_classes"]
        )
    except CheckpointError as error:
        raise ArchiveError(f"{where}: {str(error).replace(str(path), LAST)}") from error
    problems = []
    if state.get("meta", {}).get("cache_key") != entry["cache_key"]:
        problems.append("its checkpoint was trained with another recipe or data")
    if state.get("recipe") != recipe:
        problems.append("its checkpoint holds another recipe")
    if state.get("epoch") != recipe["epochs"]:
        problems.append(f"it holds epoch {state.get('epoch')} of {recipe['epochs']}")
    if RESUME_KEYS & state.keys():
        problems.append("it holds training state, not the final weights only")
    if problems:
        raise ArchiveError(
            f"{where} does not match its manifest entry: {'; '.join(problems)}. Pack the "
            "archive again; nothing was unpacked."
        )

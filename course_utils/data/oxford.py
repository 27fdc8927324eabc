"""The full Oxford-IIIT Pet data set (7,349 images, 37 breeds): a copy on disk, or downloaded.

``$COURSE_OXFORD_DIR`` names a copy already on disk (a folder holding ``images/`` and
``annotations/``, or torchvision's ``oxford-iiit-pet/`` folder); nothing is downloaded then.
Otherwise the two archives of torchvision's ``OxfordIIITPet._RESOURCES`` (URL, MD5) are
downloaded into ``<root>/oxford-iiit-pet`` (a stall longer than ``$COURSE_DOWNLOAD_TIMEOUT_S``,
default :data:`DOWNLOAD_TIMEOUT_S`, fails the download), checked, extracted, and marked complete
with a :data:`COMPLETE_MARKER` file: a folder without it is never taken for the data set. The
official list files are read into :class:`PetRecord` lists with the layout of the other sources.
"""

from __future__ import annotations

import http.client
import logging
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from torchvision.datasets import OxfordIIITPet
from torchvision.datasets.utils import calculate_md5
from tqdm.auto import tqdm

from course_utils import config
from course_utils.data.records import PetRecord
from course_utils.data.splits import check_split, stratified_split
from course_utils.errors import CourseError

HOMEPAGE = "https://www.robots.ox.ac.uk/~vgg/data/pets/"
VAL_FRACTION = 0.15  # of the official trainval list, per breed
SPLIT_SEED = 0
DOWNLOAD_TIMEOUT_S = 60.0  # longest wait for any network operation: a blocked network fails
TIMEOUT_ENV = "COURSE_DOWNLOAD_TIMEOUT_S"  # overrides DOWNLOAD_TIMEOUT_S (seconds)
RETRY_AFTER_S = 600.0  # a failed download is not tried again in the process for this long
COMPLETE_MARKER = ".complete"  # written after download + extraction: archive names and MD5s
REQUIRED_ENTRIES: tuple[str, ...] = (
    "images",
    "annotations/trainval.txt",
    "annotations/test.txt",
    "annotations/trimaps",
)
_SPECIES_TO_LABEL = {1: 0, 2: 1}  # list files: species 1 = cat, 2 = dog
_CHUNK = 1 << 20
_failed_downloads: dict[str, tuple[float, str]] = {}  # url -> (time.monotonic(), reason)

log = logging.getLogger(__name__)


class DatasetUnavailable(CourseError):
    """The full data set could not be downloaded or found."""


def default_download_root() -> Path:
    """``<artifacts>/downloads``: where the Oxford-IIIT Pet archives are downloaded."""
    return config.artifacts_dir() / "downloads"


def download_timeout() -> float:
    """Seconds a download may stall: ``$COURSE_DOWNLOAD_TIMEOUT_S``, else
    :data:`DOWNLOAD_TIMEOUT_S`."""
    raw = os.environ.get(TIMEOUT_ENV)
    if not raw:
        return DOWNLOAD_TIMEOUT_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise DatasetUnavailable(
            f"${TIMEOUT_ENV} must be a positive number of seconds, not {raw!r}."
        )
    return seconds


def _archives() -> list[tuple[str, str, str]]:
    """``(url, md5, file name)`` of each archive, from torchvision's ``OxfordIIITPet``."""
    return [(url, md5, Path(urlparse(url).path).name) for url, md5 in OxfordIIITPet._RESOURCES]


def _marker_text() -> str:
    return "".join(f"{name} {md5}\n" for _url, md5, name in _archives())


def mark_complete(base: Path) -> None:
    """Write ``base/.complete``: ``base`` holds the fully extracted current archives."""
    (base / COMPLETE_MARKER).write_text(_marker_text())


def is_complete(base: Path) -> bool:
    """Whether ``base`` carries the marker of a finished download of the current archives."""
    marker = base / COMPLETE_MARKER
    return marker.is_file() and marker.read_text() == _marker_text()


def _retry_hint() -> str:
    return (
        f"It is tried again {RETRY_AFTER_S / 60:g} min after a failure (restart the Python "
        f"process to try sooner). Without internet, set ${config.OXFORD_DIR_ENV} to a copy of "
        "the data set on disk, or COURSE_DATASET=bundled to use the bundled sample."
    )


def _download(url: str, md5: str, target: Path, timeout: float) -> None:
    """Download ``url`` to ``target`` via a ``.part`` file, checking its length and MD5."""
    part = target.with_name(target.name + ".part")
    log.info("Downloading %s into %s", url, config.display_path(target.parent))
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "course_utils"})
        with urllib.request.urlopen(request, timeout=timeout) as response, part.open("wb") as file:
            expected = response.length  # Content-Length; None when the server sends none
            with tqdm(
                total=expected,
                unit="B",
                unit_scale=True,
                desc=target.name,
                leave=False,
                disable=config.progress_bars_off(),
            ) as bar:
                while chunk := response.read(_CHUNK):
                    file.write(chunk)
                    bar.update(len(chunk))
        received = part.stat().st_size
        if expected is not None and received < expected:  # http.client does not raise here
            raise DatasetUnavailable(
                f"the connection to {url} closed after {received:,} of {expected:,} bytes"
            )
        got = calculate_md5(part)
        if got != md5:
            raise DatasetUnavailable(
                f"{target.name} from {url} is corrupt: its MD5 is {got}, not {md5} ({received:,} "
                "bytes received); the file was deleted"
            )
        part.replace(target)
    except DatasetUnavailable:
        part.unlink(missing_ok=True)
        raise
    except (OSError, http.client.HTTPException) as err:
        part.unlink(missing_ok=True)
        raise DatasetUnavailable(_network_problem(url, err, timeout)) from err


def _network_problem(url: str, err: BaseException, timeout: float) -> str:
    """A one-line reason for a failed request."""
    if isinstance(err, urllib.error.HTTPError):
        return f"{url} answered HTTP {err.code} {err.reason}"
    reason = err.reason if isinstance(err, urllib.error.URLError) else err
    if isinstance(reason, TimeoutError):
        return (
            f"{url} sent no data for {timeout:g} s (${TIMEOUT_ENV} sets how long to wait); "
            "a slow or blocked network?"
        )
    if isinstance(err, http.client.IncompleteRead):
        return f"the connection to {url} closed early ({err!r})"
    return f"could not download {url}: {type(reason).__name__}: {reason}; no internet, or blocked?"


def _extract(archive: Path, base: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(base, filter="data")  # "data": no paths outside base, no devices
    except (OSError, tarfile.TarError, EOFError) as err:
        raise DatasetUnavailable(
            f"could not extract {config.display_path(archive)}: {type(err).__name__}: {err}"
        ) from err


def _download_and_extract(base: Path) -> None:
    """Fetch the archives missing from ``base`` (or failing their MD5), then extract them all."""
    now = time.monotonic()
    archives = _archives()
    for url, _md5, _name in archives:
        failed_at, reason = _failed_downloads.get(url, (None, ""))
        if failed_at is not None and now - failed_at < RETRY_AFTER_S:
            raise DatasetUnavailable(
                f"Full Oxford-IIIT Pet could not be downloaded: {reason} "
                f"({now - failed_at:.0f} s ago). {_retry_hint()}"
            )
    timeout = download_timeout()
    base.mkdir(parents=True, exist_ok=True)
    for url, md5, name in archives:
        target = base / name
        if target.is_file() and calculate_md5(target) == md5:
            continue  # downloaded before; only the extraction was not finished
        try:
            _download(url, md5, target, timeout)
        except DatasetUnavailable as err:
            _failed_downloads[url] = (time.monotonic(), str(err))
            raise DatasetUnavailable(
                f"Full Oxford-IIIT Pet could not be downloaded: {err}. {_retry_hint()}"
            ) from err
        _failed_downloads.pop(url, None)
    for folder in ("images", "annotations"):  # left by an extraction that did not finish
        shutil.rmtree(base / folder, ignore_errors=True)
    for _url, _md5, name in archives:
        log.info("Extracting %s", config.display_path(base / name))
        _extract(base / name, base)
    mark_complete(base)


def _fetch(root: Path, download: bool) -> Path:
    """The folder of the complete data set under ``root``, downloaded and extracted if asked."""
    base = root / "oxford-iiit-pet"
    if is_complete(base):
        return base
    if download:
        if base.exists():
            log.warning(
                "%s holds no finished download (no %s file); completing it.",
                config.display_path(base),
                COMPLETE_MARKER,
            )
        _download_and_extract(base)
        return base
    state = "is incomplete (no " + COMPLETE_MARKER + " file: a download or extraction stopped)"
    raise DatasetUnavailable(
        f"Full Oxford-IIIT Pet {state if base.exists() else 'not found'} in "
        f"{config.display_path(base)} and download=False. Download it with download=True, or "
        f"set ${config.OXFORD_DIR_ENV} to a complete copy."
    )


def local_copy(folder: Path) -> Path:
    """The data set folder inside ``folder`` (``$COURSE_OXFORD_DIR``): ``folder`` itself, or its
    ``oxford-iiit-pet/`` (torchvision's layout). Raises :class:`DatasetUnavailable` naming
    what is missing."""
    nested = folder / "oxford-iiit-pet"
    base = nested if not (folder / "images").exists() and nested.is_dir() else folder
    missing = [entry for entry in REQUIRED_ENTRIES if not (base / entry).exists()]
    if missing:
        raise DatasetUnavailable(
            f"${config.OXFORD_DIR_ENV} is {config.display_path(folder)}, but "
            f"{config.display_path(base)} lacks {', '.join(missing)}. Point it at the folder "
            "that holds the extracted images.tar.gz and annotations.tar.gz (images/ and "
            "annotations/), or unset it to download the data set."
        )
    return base


def read_oxford_list(list_file: Path, base: Path) -> list[PetRecord]:
    """Records from an official list file (lines ``Abyssinian_100 1 1 1``: name, class, species,
    breed id; ``#`` lines skipped) with ``base/images/NAME.jpg`` and its trimap."""
    records = []
    for line in list_file.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, _class_id, species, _breed_id = line.split()
        records.append(
            PetRecord(
                image_path=base / "images" / f"{name}.jpg",
                label=_SPECIES_TO_LABEL[int(species)],
                breed=name.rsplit("_", 1)[0],
                mask_path=base / "annotations" / "trimaps" / f"{name}.png",
            )
        )
    return records


def oxford_pets_records(
    split: str, root: Path | None = None, download: bool = True
) -> list[PetRecord]:
    """Records of one split of the full Oxford-IIIT Pet, downloaded on first use.

    ``"test"`` is the official test list; ``"train"`` and ``"val"`` divide the official trainval
    list, per breed, into 85 % / 15 % (deterministic). Without ``root``, a copy named by
    ``$COURSE_OXFORD_DIR`` is used as it is (never downloaded); else ``root`` defaults to
    ``config.artifacts_dir() / "downloads"``. Raises :class:`DatasetUnavailable` when the data
    set can be neither found nor downloaded.
    """
    check_split(split)
    official = "test" if split == "test" else "trainval"
    local = os.environ.get(config.OXFORD_DIR_ENV) if root is None else None
    if local:
        base = local_copy(Path(local).expanduser())
    else:
        base = _fetch(Path(root) if root is not None else default_download_root(), download)
    records = read_oxford_list(base / "annotations" / f"{official}.txt", base)
    if split == "test":
        return records
    assignment = stratified_split(
        ((r.image_path.stem, r.breed or "") for r in records),
        {"val": (VAL_FRACTION, 1)},
        seed=SPLIT_SEED,
    )
    return [r for r in records if assignment[r.image_path.stem] == split]

"""Known security advisories of the libraries the course parses untrusted files with.

The course reads checkpoints with ``torch.load(..., weights_only=True)`` and images with Pillow.
Both are only as safe as the installed version: below the first fixed release in
:data:`ADVISORIES`, importing ``course_utils`` warns (:class:`InsecureVersionWarning`), naming
the advisory and the version to upgrade to. The check reads installed package metadata only; it
imports neither library. Silence it with
``warnings.filterwarnings("ignore", category=InsecureVersionWarning)`` after reading it.
"""

from __future__ import annotations

import importlib.metadata
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass


class InsecureVersionWarning(UserWarning):
    """An installed library is older than the release that fixes a known advisory."""


@dataclass(frozen=True)
class Advisory:
    """A known vulnerability of ``package`` (its distribution name), fixed in ``fixed_in``."""

    package: str
    fixed_in: str
    ids: str
    summary: str


ADVISORIES = (
    Advisory(
        "torch",
        "2.10",
        "CVE-2026-24747 / GHSA-63cw-57p8-fm3p",
        "a crafted checkpoint can corrupt memory in torch.load(weights_only=True)",
    ),
    Advisory(
        "pillow",
        "13.0",
        "CVE-2026-96636 / GHSA-p8hx-v2p6-rp84 and the other decoder advisories fixed in 13.0",
        "crafted image files can bypass the decompression-bomb limit or crash a decoder",
    ),
)


def release(version: str) -> tuple[int, ...]:
    """The release numbers of a version string: ``"2.8.0+cu126"`` -> ``(2, 8, 0)``."""
    match = re.match(r"\d+(\.\d+)*", version)
    if match is None:
        raise ValueError(f"not a version number: {version!r}")
    return tuple(int(part) for part in match.group().split("."))


def installed_version(package: str) -> str | None:
    """The installed version of distribution ``package``, or ``None`` if it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def vulnerable_versions(
    version_of: Callable[[str], str | None] = installed_version,
) -> list[tuple[Advisory, str]]:
    """Each advisory whose package is installed below its fixed version, with that version.

    Pre-releases count as their release (``2.10.0rc1`` as 2.10.0); an unparsable version (a
    source build) is not flagged.
    """
    found = []
    for advisory in ADVISORIES:
        version = version_of(advisory.package)
        if version is None or not re.match(r"\d", version):
            continue
        if release(version) < release(advisory.fixed_in):
            found.append((advisory, version))
    return found


def warn_about_vulnerable_versions(
    version_of: Callable[[str], str | None] = installed_version,
) -> None:
    """One :class:`InsecureVersionWarning` per advisory that the installed versions are open to."""
    for advisory, version in vulnerable_versions(version_of):
        warnings.warn(
            f"{advisory.package} {version} is affected by {advisory.ids}: {advisory.summary}. "
            f"Upgrade to {advisory.package}>={advisory.fixed_in} before opening checkpoints or "
            "images from anyone you do not trust.",
            InsecureVersionWarning,
            stacklevel=2,
        )

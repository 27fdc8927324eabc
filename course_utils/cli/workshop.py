"""``python -m course_utils workshop pack | unpack | verify``: every course network, one archive."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from course_utils import workshop
from course_utils.cli.common import PROG, add_command, add_profile
from course_utils.config import ARTIFACTS_DIR_ENV, display_path, get_profile

RUNS = "\n".join(
    f"  {run.describe()}" + (f"  ({', '.join(run.profiles)} only)" if run.profiles else "")
    for run in workshop.COURSE_RUNS
)

EPILOG = f"""\
pack trains every network the notebooks get from load_or_train, at the chosen profile, through
load_or_train itself (runs already in the cache are reused, not retrained):
{RUNS}
The imagenet runs are packed only where ImageNet weights are available (in torch.hub's cache, or
downloadable in a profile that downloads them); otherwise they are listed as skipped.

The archive is an uncompressed tar: per run its final weights and history (no optimiser state),
and a manifest.json with the format version, the course and torch versions, the profile and, per
run, the recipe, the cache key and each file's size and sha256.

unpack (and verify, which writes nothing) refuses a corrupt or truncated archive, one without a
manifest or of another format version, runs whose folder, recipe, cache key or profile disagree
with the manifest or their checkpoint, and members that are not plain files at the paths the
manifest lists (absolute paths, '..', links, devices). Everything is extracted and checked in a
temporary folder inside the target first, so a refused archive leaves nothing behind. A run you
already have with identical files is skipped; one with other files is refused unless --replace,
which moves yours to <name>.bak-<timestamp>.

examples:
  {PROG} workshop pack --profile cpu --output course-weights-cpu.tar
  {PROG} workshop verify course-weights-cpu.tar
  {PROG} workshop unpack course-weights-cpu.tar
  {PROG} workshop unpack course-weights-cpu.tar --into ~/course-weights
      # then: export {ARTIFACTS_DIR_ENV}=~/course-weights"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``workshop`` command and its ``pack``, ``unpack`` and ``verify`` actions."""
    parser = add_command(
        subparsers,
        "workshop",
        "pack every course network into one archive, or unpack one",
        "Workshop mode: an instructor trains every network the course uses once, into one\n"
        "archive of final weights with a manifest of checksums; attendees unpack it, and the\n"
        "notebooks' load_or_train loads those runs instead of training.",
        EPILOG,
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    pack = actions.add_parser("pack", help="train (or reuse) every course network; write the tar")
    add_profile(pack, "the profile to train at")
    pack.add_argument(
        "--output",
        metavar="PATH",
        help="the archive to write (default: course-weights-PROFILE.tar)",
    )
    pack.set_defaults(run=run_pack)
    unpack = actions.add_parser("unpack", help="verify an archive and add its runs to the cache")
    unpack.add_argument("archive", metavar="ARCHIVE", help="a tar written by 'workshop pack'")
    unpack.add_argument(
        "--into",
        metavar="DIR",
        help=f"the artifacts folder to add the runs to (default: ${ARTIFACTS_DIR_ENV}, else "
        "<repo>/artifacts); runs land in DIR/checkpoints/",
    )
    unpack.add_argument(
        "--replace",
        action="store_true",
        help="replace existing runs whose files differ (moved to <name>.bak-<timestamp>)",
    )
    unpack.set_defaults(run=run_unpack)
    verify = actions.add_parser("verify", help="check an archive without unpacking it")
    verify.add_argument("archive", metavar="ARCHIVE", help="a tar written by 'workshop pack'")
    verify.set_defaults(run=run_verify)


def run_pack(args: argparse.Namespace) -> int:
    """Train or load every course run and write the archive."""
    profile = get_profile(args.profile)
    output = Path(args.output or f"course-weights-{profile.name}.tar").expanduser()
    manifest = workshop.pack(output, profile)
    _print_runs(manifest)
    for skipped in manifest["skipped"]:
        print(f"skipped {skipped['run']}: {skipped['reason']}")
    size = output.stat().st_size / 2**20
    print(f"wrote {display_path(output)} ({len(manifest['runs'])} runs, {size:.0f} MiB)")
    return 0


def run_unpack(args: argparse.Namespace) -> int:
    """Verify the archive and move its runs into the artifacts folder."""
    done = workshop.unpack(args.archive, args.into, replace=args.replace)
    _print_runs(done.manifest)
    for name in done.skipped:
        print(f"already there, identical: {name}")
    for name, backup in done.replaced.items():
        print(f"replaced {name} (yours is now {display_path(backup)})")
    print(
        f"unpacked {len(done.added)} runs, every file matching its sha256; load_or_train uses "
        f"them at the {done.manifest['profile']} profile"
    )
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """Check the archive as unpack would, writing nothing."""
    manifest = workshop.verify(args.archive)
    _print_runs(manifest)
    print(f"{display_path(args.archive)}: OK, every file matches its sha256 and manifest entry")
    return 0


def _print_runs(manifest: dict[str, Any]) -> None:
    """The archive's header line, then one line per run."""
    course, versions = manifest["course"], manifest["versions"]
    commit = f" ({course['commit'][:12]})" if course.get("commit") else ""
    print(
        f"archive: profile {manifest['profile']}, course_utils {course['version']}{commit}, "
        f"torch {versions['torch']}, packed {manifest['created']}"
    )
    for entry in manifest["runs"]:
        print(
            f"  {entry['folder']}: val acc {entry['val_acc']:.1%}, trained on "
            f"{entry['trained_on']}, {entry['files']['last.pt']['bytes'] / 2**20:.0f} MiB"
        )

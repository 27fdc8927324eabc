"""The command line: ``python -m course_utils train | evaluate | predict | bench | workshop``.

One module per command (:mod:`~course_utils.cli.train`, :mod:`~course_utils.cli.evaluate`,
:mod:`~course_utils.cli.predict`, :mod:`~course_utils.cli.bench`,
:mod:`~course_utils.cli.workshop`), each with ``add_parser(subparsers)`` and ``run(args)``.
A :class:`~course_utils.errors.CourseError` (a problem the user can fix: a missing file, a folder
without ``cats/`` and ``dogs/``, a foreign checkpoint, no internet for ImageNet weights) ends with
its message on stderr and exit code 2; Ctrl-C with exit code 130. Any other exception is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from course_utils.cli import bench, evaluate, predict, train, workshop
from course_utils.cli.common import PROG
from course_utils.config import ARTIFACTS_DIR_ENV, DEVICE_ENV, PROFILE_ENV, setup_logging
from course_utils.errors import CourseError

EPILOG = f"""\
Every command runs on CUDA when available, else the CPU (${DEVICE_ENV}, e.g. cpu or cuda:1,
overrides). Exit code 0 on success, 2 on a usage error or bad input (message on stderr).
Environment: ${PROFILE_ENV} (the default profile), ${ARTIFACTS_DIR_ENV} (where runs are
cached; default <repo>/artifacts).

examples:
  {PROG} train --arch resnet50 --regime scratch --profile cpu
  {PROG} evaluate --checkpoint RUN/last.pt --data my_pets/
  {PROG} predict --checkpoint RUN/last.pt tom.jpg rex.png
  {PROG} bench --arch resnet50 resnet101 --settings fp32 bf16 compile int8
  {PROG} workshop pack --profile cpu --output course-weights-cpu.tar

Run '{PROG} COMMAND --help' for the options of a command."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of the five commands, with complete ``--help`` texts."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train, evaluate, apply and benchmark the course's cats-vs-dogs ResNets.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (train, evaluate, predict, bench, workshop):
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the command, return the exit code."""
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        return args.run(args)
    except CourseError as error:
        print(f"{PROG} {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130

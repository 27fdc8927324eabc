"""``python -m course_utils``: the command line (see :mod:`course_utils.cli`)."""

from course_utils.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

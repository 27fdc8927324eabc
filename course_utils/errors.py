"""The one base class of the errors a user can fix: :class:`CourseError`.

Raise a subclass for bad input, a missing file, no internet or a checkpoint of another model:
the command line prints its message after ``error:`` and exits with code 2. Anything else (a bug
in torch, numpy or this package) keeps its traceback.
"""

from __future__ import annotations


class CourseError(Exception):
    """A problem the user can fix, with a message that says how."""

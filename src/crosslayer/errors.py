"""User-facing errors.

Every problem a user can cause (bad spec, bad file, bad config) is raised as a
:class:`CrosslayerError` whose message is one line naming the problem and the fix.
The CLI prints that line and exits non-zero with no traceback; library users get a
normal exception they can catch.
"""

from __future__ import annotations


class CrosslayerError(Exception):
    """A problem with the user's input, reported as one line: what is wrong, and the fix."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem} — {fix}")


class ConfigMismatchError(CrosslayerError):
    """An existing artefact was made with a different configuration."""


class DataError(CrosslayerError):
    """Data on disk is missing, damaged, empty or non-finite."""

"""The base of every error a user can fix (bad input, a bad config, a missing file or model).

The CLI and the UIs catch `ChexlabError` and show its message as it is; anything else is a bug, shown as a
short note with the traceback in the log. Domain errors also keep their historical base (most are
`ValueError`s), so existing `except ValueError` callers keep working.
"""

from __future__ import annotations


class ChexlabError(Exception):
    """An error the user can fix; its message says what is wrong and what to do."""


def internal_error(err: Exception) -> str:
    """What users see of an error that is not theirs to fix; the caller logs the traceback."""
    return f"an internal error ({type(err).__name__}); the details are in the server's log"

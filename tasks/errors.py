"""The one root of the errors a person may be shown.

Every error the service raises on purpose derives from `DemographicsError`: its message is one
line, safe to print, log and keep in a run record (it never holds a student value, a password
or file contents), so the command line and the flows show it as it is, with no traceback.
Anything else that escapes is a bug or an outside failure, and is described by its type only.
"""

from __future__ import annotations


class DemographicsError(Exception):
    """An error whose message is safe to show.

    `transient` says whether trying the same thing again later may work (a server down or
    busy, a lock held) or not before someone changes something (settings, a file, a grant),
    so that retries are spent only on the first kind.
    """

    transient: bool = False

    def __init__(self, message: str = "", *, transient: bool | None = None) -> None:
        super().__init__(message)
        if transient is not None:
            self.transient = transient


def is_transient(exc: BaseException | None) -> bool:
    """Worth another try later: a `DemographicsError` that says so."""
    return isinstance(exc, DemographicsError) and exc.transient

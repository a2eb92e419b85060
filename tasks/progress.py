"""Progress of long work (a sync, a preview, an undo, a roster load), told to whoever shows it.

The tasks say which phase they are in and, where the work is long and countable, how far it
has got; the command line shows that on a terminal (flows/cli) and nothing else does. What is
told is a phase name and counts, never a value of a student.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def phase(self, name: str, total: int | None = None) -> None:
        """A new phase starts (`read`, `validate`, `match`, `apply`, `history`, `commit`, ...);
        `total` is its units of work (rows) when they are known, so a bar can be drawn."""

    def advance(self, done: int) -> None:
        """`done` more units of the current phase are finished."""


class Silent:
    """Tells no one: the default everywhere but an interactive command line."""

    def phase(self, name: str, total: int | None = None) -> None:
        return None

    def advance(self, done: int) -> None:
        return None


SILENT: Progress = Silent()

"""Progress of a long command on a terminal: one line per phase with its elapsed time, and a
bar when the phase's rows are counted.

A sync of millions of rows runs for a minute; without this a person at a terminal sees nothing
and cannot tell working from stuck. It is drawn on stderr, so stdout stays the report, and only
when stderr is a terminal and the report is not JSON: a pipe, a log file or a script gets
exactly the report, as before. What is drawn is phase names and counts (the `Progress` the
tasks talk to, tasks/progress.py), never a student's value. rich redraws from its own thread a
few times a second; the tasks tell a phase once, not a row at a time, so the cost is nil.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from flows.cli.output import SyncFormat
from tasks.progress import SILENT, Progress

if TYPE_CHECKING:  # rich is imported only when there is a terminal to draw on
    from rich.progress import Progress as Display
    from rich.progress import TaskID

REFRESH_PER_SECOND = 4


@contextmanager
def shown(format: SyncFormat = SyncFormat.text) -> Iterator[Progress]:
    """The `Progress` a command hands its tasks: drawn while the block runs when stderr is a
    terminal and the format is not JSON, else SILENT. The display is gone from the screen's
    bottom (its last frame left above) before the command writes its report."""
    if format is SyncFormat.json or not sys.stderr.isatty():
        yield SILENT
        return
    display = _display()
    progress = TerminalProgress(display)
    with display:
        try:
            yield progress
        except BaseException:
            progress.close(failed=True)
            raise
        progress.close()


class TerminalProgress:
    """A `Progress` drawn by rich: each phase a line of its own (mark, name, bar, rows, time),
    the phases before it left on screen, finished."""

    def __init__(self, display: Display) -> None:
        self._display = display
        self._task: TaskID | None = None
        self._total: int | None = None

    def phase(self, name: str, total: int | None = None) -> None:
        """Finish the current phase and start `name`. Its bar pulses until a first `advance`
        (the rows are known, how far the work is not yet)."""
        self.close()
        self._total = total
        self._task = self._display.add_task(name, total=None, rows=total)

    def advance(self, done: int) -> None:
        if self._task is not None:
            self._display.update(self._task, total=self._total, advance=done)

    def close(self, failed: bool = False) -> None:
        """The current phase ends: marked done (its clock stopped, its bar full) or failed."""
        if self._task is None:
            return
        task, self._task = self._task, None
        if failed:
            self._display.update(task, failed=True)
        else:
            full = max(self._total or 1, 1)
            self._display.update(task, total=full, completed=full)
        self._display.stop_task(task)


def _display() -> Display:
    """rich's live display on stderr with this module's columns; stdout is left alone (a
    report written to it must reach a pipe or file byte for byte)."""
    from rich.console import Console
    from rich.progress import Progress as Display

    console = Console(file=sys.stderr)
    unicode = console.encoding.lower().startswith("utf")
    return Display(
        *_columns(unicode),
        console=console,
        refresh_per_second=REFRESH_PER_SECOND,
        redirect_stdout=False,
    )


def _columns(unicode: bool) -> tuple[object, ...]:
    """Mark (spinner, then done or failed), phase name, bar, rows, elapsed seconds."""
    from rich.progress import BarColumn, ProgressColumn, SpinnerColumn, Task, TextColumn
    from rich.text import Text

    class Mark(SpinnerColumn):
        def render(self, task: Task) -> Text:  # type: ignore[override]
            if task.fields.get("failed"):
                return Text("✗" if unicode else "x", style="red")
            return super().render(task)  # type: ignore[return-value]

    class Bar(BarColumn):
        def render(self, task: Task) -> object:  # type: ignore[override]
            return super().render(task) if task.fields.get("rows") is not None else Text("")

    class Rows(ProgressColumn):
        def render(self, task: Task) -> Text:
            rows = task.fields.get("rows")
            if rows is None:
                return Text("")
            if task.total is None or task.finished:
                return Text(f"{rows:,} rows")
            return Text(f"{int(task.completed):,}/{rows:,} rows")

    class Elapsed(ProgressColumn):
        def render(self, task: Task) -> Text:
            return Text(f"{task.elapsed or 0.0:.1f}s", style="progress.elapsed")

    done = Text("✓" if unicode else "+", style="green")
    spinner = "dots" if unicode else "line"
    return (
        Mark(spinner, finished_text=done),
        TextColumn("{task.description}"),
        Bar(),
        Rows(),
        Elapsed(),
    )

"""What every command shares: its error line, its report file, its common options.

The leaf of the command-line package: every command module imports this one, and it imports
none of them (nor tasks or Prefect at load time), so there is no cycle and a file-only command
such as `demographics validate` loads nothing it does not use.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn, ParamSpec, TypeVar

import typer

P = ParamSpec("P")
R = TypeVar("R")


class SyncFormat(StrEnum):
    text = "text"
    json = "json"


DistrictOption = Annotated[str, typer.Option("--district", "-d", help="The district's code.")]
FileArgument = Annotated[Path, typer.Argument(help="The demographics CSV file.")]


def fail(message: str) -> NoReturn:
    """One line on stderr and exit status 2: the command could not run."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def one_line_errors(func: Callable[P, R]) -> Callable[P, R]:
    """The errors a person may be shown as one line on stderr (exit 2), never a traceback.

    Any `DemographicsError` says its own message (it is safe to show); a database error is
    described by `describe_error` (the server's message may hold values). Anything else is
    left to `main`, which names its type only.
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from tasks.errors import DemographicsError

        try:
            return func(*args, **kwargs)
        except DemographicsError as exc:
            fail(str(exc))
        except typer.Exit:  # a command's own exit (fail among them) is not an error here
            raise
        except Exception as exc:
            # Imported only on the way out: a command that never touches the database
            # does not load psycopg.
            import psycopg

            if not isinstance(exc, psycopg.Error):
                raise
            from tasks.db import describe_error

            fail(describe_error(exc))

    return wrapper


def read_or_fail(path: Path) -> bytes:
    """The file's bytes, or `error: cannot read ...` (exit 2)."""
    from tasks.read import SourceUnreadable, read_source

    try:
        return read_source(path)
    except SourceUnreadable as exc:
        fail(f"cannot read {exc}")


def write_report(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or 'I/O error'}")


def split_list(value: str) -> tuple[str, ...]:
    """A comma-separated option's items, trimmed, empty ones left out."""
    return tuple(v.strip() for v in value.split(",") if v.strip())


def parse_gender_codes(value: str) -> tuple[str, ...]:
    """Gender codes as given, upper case, each once, in order; empty when none is given (the
    caller refuses that in its own words)."""
    return tuple(dict.fromkeys(c.upper() for c in split_list(value)))

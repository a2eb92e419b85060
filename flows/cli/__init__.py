"""The `demographics` command: a thin shell over tasks and flows.

Prefect is imported only by the commands that run flows, so a file-only command such as
`demographics validate` starts fast and touches nothing but the file.

One module per group of commands, each importing only `output` (errors, report files, shared
options) and `progress` (a long command's phases on a terminal), never another: this module
puts them together.
"""

from __future__ import annotations

import sys

import typer

from flows.cli import access, database, demo, drop, store, validate
from flows.cli.drop import flow_outcome

__all__ = ["app", "flow_outcome", "main"]

app = typer.Typer(
    name="demographics",
    help="Validate and sync student demographics files for a school district.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Typers added without a name lend their commands to `app`; the order here is the order of
# `demographics --help`: the commands, then the groups.
app.add_typer(validate.app)
app.add_typer(store.app)
app.add_typer(drop.app)
app.add_typer(demo.app)
app.add_typer(database.db_app, name="db")
app.add_typer(database.district_app, name="district")
app.add_typer(database.roster_app, name="roster")
app.add_typer(access.access_app, name="access")
app.add_typer(drop.drop_app, name="drop")


def main() -> None:
    """Entry point: usage errors exit 2; an unexpected failure is one line, never a traceback."""
    try:
        app(standalone_mode=True)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        from tasks.errors import DemographicsError

        if isinstance(exc, DemographicsError):  # e.g. a setting read as flows.pipeline loads
            typer.echo(f"error: {exc}", err=True)
        else:  # the message may quote data: name the type only
            typer.echo(f"error: unexpected failure ({type(exc).__name__})", err=True)
        sys.exit(2)

"""`demographics db ...`, `district add` and `roster load`: the database, its districts and
their rosters."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli.output import SyncFormat, fail, one_line_errors
from flows.cli.progress import shown

db_app = typer.Typer(
    help="The database: URL, schema upgrade, embedded server.", no_args_is_help=True
)
roster_app = typer.Typer(help="The district roster (OneRoster 1.1 CSV).", no_args_is_help=True)
district_app = typer.Typer(help="Districts: add one before its first roster.", no_args_is_help=True)


@db_app.command("url")
@one_line_errors
def db_url() -> None:
    """Print the connection URL, starting the embedded server if needed.

    So `psql "$(demographics db url)"` works.
    """
    from tasks.db import database_url

    typer.echo(database_url())


@db_app.command("prefect-url")
@one_line_errors
def db_prefect_url() -> None:
    """Print the URL of Prefect's own database on the embedded server, starting it if needed.

    So `PREFECT_API_DATABASE_CONNECTION_URL="$(demographics db prefect-url)" prefect server
    start` keeps Prefect on PostgreSQL, beside the project's database.
    """
    from tasks.db import embedded_prefect_url
    from tasks.settings import load_settings

    typer.echo(embedded_prefect_url(load_settings().pgdata))


@db_app.command("upgrade")
@one_line_errors
def db_upgrade() -> None:
    """Apply the numbered SQL files in sql/ that are not applied yet, then the access views
    and grants (re-asserted every time, like the apply-access-views flow)."""
    from tasks.access import apply_access_views
    from tasks.db import connect, database_url, upgrade

    with connect(database_url()) as conn:
        applied = upgrade(conn)
        views = apply_access_views(conn)
    typer.echo(f"applied {', '.join(applied)}" if applied else "the schema is up to date")
    typer.echo("access views and grants applied")
    for step in views.owner_steps:
        typer.echo(f"still to do: {step}")


@db_app.command("stop")
@one_line_errors
def db_stop() -> None:
    """Stop the embedded PostgreSQL server (it is left running between commands)."""
    from tasks.db import stop_embedded
    from tasks.settings import load_settings

    settings = load_settings()
    if settings.database_url:
        fail("DEMOGRAPHICS_DATABASE_URL is set: there is no embedded server to stop")
    stopped = stop_embedded(settings.pgdata)
    typer.echo("stopped the embedded server" if stopped else "the embedded server is not running")


@roster_app.command("load")
@one_line_errors
def roster_load(
    directory: Annotated[
        Path, typer.Argument(help="Folder with orgs.csv, users.csv, classes.csv, enrollments.csv.")
    ],
    district: Annotated[str, typer.Option("--district", "-d", help="The district's code.")],
    format: Annotated[SyncFormat, typer.Option("--format", "-f")] = SyncFormat.text,
) -> None:
    """Load a district's full roster snapshot: upsert what is there, deactivate what is gone.

    Exit status: 0 loaded, 1 the roster has errors (nothing loaded), 2 the command could not run.
    """
    from tasks.db import connect, ready_database_url
    from tasks.render import render_roster
    from tasks.roster import load_roster, read_roster
    from tasks.settings import load_settings

    if not directory.is_dir():
        fail(f"{directory}: not a folder")
    with shown(format) as progress:
        progress.phase("read")  # the files read and checked
        snapshot = read_roster(directory)
        progress.phase("connect")
        url = ready_database_url()
        with connect(url) as conn:
            result = load_roster(
                conn, district, snapshot, load_settings().lock_wait_seconds, progress=progress
            )
    typer.echo(result.to_json() if format is SyncFormat.json else render_roster(result), nl=False)
    raise typer.Exit(0 if result.loaded else 1)


@district_app.command("add")
@one_line_errors
def district_add(
    code: Annotated[str, typer.Argument(help="The district's code, as its drop folder is named.")],
    name: Annotated[str, typer.Option("--name", help="The district's name.")],
    manager: Annotated[
        str,
        typer.Option(
            "--manager",
            help="Its first data manager's email: they get the district's emails, and become "
            "a data manager when a roster lists them as staff.",
        ),
    ],
) -> None:
    """Add a district before its first roster, so the roster can arrive by the drop (an
    operator command). Its drop folder is <drop>/<code>/, the roster goes in its roster/."""
    from tasks.db import connect, ready_database_url
    from tasks.store import add_district
    from tasks.sync import default_requester

    with connect(ready_database_url(), autocommit=True) as conn:
        add_district(conn, code, name, manager, default_requester())
    typer.echo(f"district {code} ({name.strip()}) added")
    typer.echo(f"  first data manager: {manager} (granted when a roster lists them as staff)")
    typer.echo(f"  its roster goes in the drop's {code}/roster/ folder, its files in {code}/")

"""The district file drop and the Prefect flows that work on it.

`demographics drop list|put`, and the commands that run a flow: `nightly`, `approve` and
`discard` (a held sync from the drop), and `serve` (the deployments). Prefect is imported
only inside the flow commands.
"""

from __future__ import annotations

from contextlib import suppress
from enum import StrEnum
from typing import Annotated, Any

import typer

from flows.cli.output import DistrictOption, FileArgument, fail, one_line_errors, read_or_fail
from tasks.errors import DemographicsError

drop_app = typer.Typer(
    help="The district file drop (SFTP or a local folder).", no_args_is_help=True
)
app = typer.Typer()

AsOption = Annotated[
    str, typer.Option("--as", help="Your email: a data manager of the run's district.")
]


def _known_district(code: str) -> None:
    """Refuse a district the store does not know (UnknownDistrict), before the drop is
    touched: a typo must not list nothing, or make a folder nobody reads."""
    from tasks.db import connect, ready_database_url
    from tasks.store import get_district

    with connect(ready_database_url(), autocommit=True) as conn:
        get_district(conn, code)


class Folder(StrEnum):
    district = "district"
    roster = "roster"
    preview = "preview"


@drop_app.command("list")
@one_line_errors
def drop_list(district: DistrictOption) -> None:
    """Show what the nightly run would do with each file in a district's drop: its folder,
    its roster/ and its preview/."""
    from tasks.drop import FOLDERS, check_district, open_drop
    from tasks.settings import load_settings

    settings = load_settings()
    _known_district(check_district(district))
    drop = open_drop(settings)
    typer.echo(f"{drop.description}/{district}")
    shown = sum(
        _list_folder(drop.list(district, folder=folder), f"{folder}/" if folder else "")
        for folder in FOLDERS
    )
    if not shown:
        typer.echo("  empty: no file in the district's folder, its roster/ or its preview/")


def _list_folder(listing: Any, prefix: str) -> int:
    """Print a folder's entries, one line each; returns how many."""
    from tasks.render import printable

    groups = (
        ("ready", listing.ready),
        ("settling (may still be uploading)", listing.settling),
        ("too large (rejected unread)", listing.too_large),
        ("past retention (deleted)", listing.expired),
        ("not a kind taken here (told once)", listing.other),
    )
    for label, files in groups:
        for f in files:
            stamp = f.modified.strftime("%Y-%m-%d %H:%M:%S")
            name = printable(prefix + f.name)
            typer.echo(f"  {label:<36} {stamp} UTC {f.size:>12} bytes  {name}")
    for r in listing.refused:
        typer.echo(f"  {'refused (' + r.reason + ')':<36} {prefix}{r.name}")
    return sum(len(files) for _label, files in groups) + len(listing.refused)


@drop_app.command("put")
@one_line_errors
def drop_put(
    file: FileArgument,
    district: DistrictOption,
    folder: Annotated[
        Folder,
        typer.Option(
            help="district: a demographics file to sync; roster: a OneRoster file or .zip; "
            "preview: a file to check without syncing."
        ),
    ] = Folder.district,
) -> None:
    """Place a file in a district's drop, as a district's upload would."""
    from tasks.drop import check_district, check_name, open_drop
    from tasks.settings import load_settings

    settings = load_settings()
    _known_district(check_district(district))
    sub = "" if folder is Folder.district else folder.value
    name = check_name(file.name, sub)
    data = read_or_fail(file)
    drop = open_drop(settings)
    drop.put(district, name, data, folder=sub)
    typer.echo(f"placed {file.name} in {drop.description}/{district}" + (f"/{sub}" if sub else ""))


ENGINE_PREFIX = "Flow run encountered an exception: "


def flow_outcome(name: str, state_name: str, completed: bool, message: str | None) -> str:
    """The last line a flow command prints: `name: Completed[: message]`, or for any other
    end `error: name failed: reason` (a refusal's reason, or the exception Prefect recorded,
    without its engine's preamble)."""
    reason = (message or "").removeprefix(ENGINE_PREFIX).strip()
    if completed:
        return f"{name}: {state_name}" + (f": {reason}" if reason else "")
    ended = {"Failed": "failed", "Refused": "refused"}.get(state_name, f"ended {state_name}")
    return f"error: {name} {ended}" + (f": {reason}" if reason else "")


def _flow_result(name: str, state: Any) -> None:
    """As for the other commands: 0 completed; 2 and one line on stderr when the run failed."""
    completed = bool(state.is_completed())
    line = flow_outcome(name, state.name, completed, state.message)
    typer.echo(line, err=not completed)
    raise typer.Exit(0 if completed else 2)


@app.command()
@one_line_errors
def nightly() -> None:
    """Run the nightly deployment once, now, and wait for it: every active district's drop.

    With PREFECT_API_URL set, it runs where that server runs it (its work pool's workers, or
    `demographics serve`); unset, this command starts a Prefect server on the embedded
    PostgreSQL and serves the deployments itself until the run has ended.
    """
    from tasks.settings import load_settings

    load_settings()  # a wrong setting is one line here, before Prefect starts
    from flows.deploy import NIGHTLY, run_now

    before = _runs_so_far()
    ended = run_now(NIGHTLY)
    if ended is None:
        fail("nightly-sync was stopped before it ended; its runs were stopped too")
    if before is not None:
        with suppress(DemographicsError):  # the summary must not hide the run's own end
            _what_was_done(before)
    _flow_result("nightly-sync", ended.state)


def _runs_so_far() -> int | None:
    """The latest run recorded before the nightly run; None when the database cannot say
    (the nightly run then fails, saying why, and there is nothing to list)."""
    from tasks.db import connect, ready_database_url
    from tasks.errors import DemographicsError
    from tasks.store import last_run_id

    try:
        with connect(ready_database_url(), autocommit=True) as conn:
            return last_run_id(conn)
    except DemographicsError:
        return None


def _what_was_done(after_run: int) -> None:
    """A line per district and per file the nightly run took (the runs it recorded)."""
    from tasks.db import connect, ready_database_url
    from tasks.render import render_nightly
    from tasks.store import active_district_codes, list_runs

    with connect(ready_database_url(), autocommit=True) as conn:
        runs = list_runs(conn, limit=100_000, after_run=after_run)
        districts = active_district_codes(conn)
    typer.echo(render_nightly(districts, runs), nl=False)


def _decision_refused(run_id: int, email: str) -> None:
    """The flow's own first checks (a held run waiting, a data manager deciding), run before
    Prefect starts, so a refusal is one line and no flow run. The flow checks again."""
    from tasks import process

    # A StepFailed from either check is a DemographicsError: one line, by one_line_errors.
    held = process.held_sync(run_id)
    refused = held if isinstance(held, process.Refused) else process.check_approver(held, email)
    if refused is not None:
        fail(refused.reason)


@app.command()
@one_line_errors
def approve(
    run_id: Annotated[int, typer.Argument(help="The held sync run.")], as_: AsOption
) -> None:
    """Apply a held sync from the drop (the same file, by SHA-256), through Prefect."""
    _decision_refused(run_id, as_)
    from flows.local import prefect_api
    from flows.pipeline import approve_held_sync

    with prefect_api():  # a Prefect server on PostgreSQL unless PREFECT_API_URL names one
        _flow_result("approve-held-sync", approve_held_sync(run_id, as_, return_state=True))


@app.command()
@one_line_errors
def discard(
    run_id: Annotated[int, typer.Argument(help="The held sync run.")], as_: AsOption
) -> None:
    """Drop a held sync and delete its file from the drop, through Prefect."""
    _decision_refused(run_id, as_)
    from flows.local import prefect_api
    from flows.pipeline import discard_held_sync

    with prefect_api():
        _flow_result("discard-held-sync", discard_held_sync(run_id, as_, return_state=True))


@app.command()
@one_line_errors
def serve() -> None:
    """Serve the deployments (nightly schedule, manual runs) from this process until SIGTERM
    or Ctrl-C; it stops within 5 s, cancelling the runs in flight (their files stay). With no
    PREFECT_API_URL, it first starts a Prefect server (API and UI on 127.0.0.1, port
    PREFECT_SERVER_API_PORT, 4200) on the embedded PostgreSQL, and stops it on the way out."""
    from flows.deploy import serve_all
    from flows.local import prefect_api, server_port

    with prefect_api(ui=True, port=server_port()) as local:
        if local is not None:
            typer.echo(f"Prefect UI: {local.ui_url} (its database: PostgreSQL)", err=False)
        line = serve_all().line()
    typer.echo(line)

"""The store's commands: preview and sync a file, list and undo runs, a district's settings."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.output import (
    DistrictOption,
    FileArgument,
    SyncFormat,
    fail,
    one_line_errors,
    parse_gender_codes,
    read_or_fail,
    split_list,
)
from flows.cli.progress import shown

app = typer.Typer()

FormatOption = Annotated[SyncFormat, typer.Option("--format", "-f", help="Output format.")]
MaxIssuesOption = Annotated[
    int | None, typer.Option(help="Issues listed in text output (default 200); 0 lists all.")
]


def _sync_command(
    file: Path,
    district: str,
    mode: str,
    approve: bool,
    format: SyncFormat,
    max_issues: int | None,
    approver: str | None = None,
) -> None:
    from tasks.db import ready_database_url
    from tasks.render import DEFAULT_TEXT_ISSUES, render_json, render_sync_text
    from tasks.settings import load_settings
    from tasks.sync import default_requester, run_file

    with shown(format) as progress:
        progress.phase("read")
        data = read_or_fail(file)
        progress.phase("connect")
        url = ready_database_url()
        if approve and not approver:
            fail("--approve needs --as EMAIL: approving a held sync is a data manager's act")
        outcome = run_file(
            url,
            district,
            data,
            file.name,
            mode=mode,  # type: ignore[arg-type]
            approve=approve,
            lock_wait_seconds=load_settings().lock_wait_seconds,
            approved_by=approver,
            via=default_requester(),
            progress=progress,
        )
    if format is SyncFormat.json:
        sys.stdout.write(render_json(outcome.report) + "\n")
    else:
        limit = DEFAULT_TEXT_ISSUES if max_issues is None else max_issues
        sys.stdout.write(render_sync_text(outcome.report, outcome.message, limit))
    if outcome.status == "failed":
        typer.echo(f"error: {outcome.message}", err=True)
        raise typer.Exit(2)
    raise typer.Exit(outcome.report.exit_code)


@app.command()
@one_line_errors
def preview(
    file: FileArgument,
    district: DistrictOption,
    format: FormatOption = SyncFormat.text,
    max_issues: MaxIssuesOption = None,
) -> None:
    """Show what a sync would do (matching, safeguards, counts) without writing anything."""
    _sync_command(file, district, "preview", False, format, max_issues)


@app.command()
@one_line_errors
def sync(
    file: FileArgument,
    district: DistrictOption,
    approve: Annotated[
        bool, typer.Option(help="Apply this file although it was held (same file, same SHA-256).")
    ] = False,
    as_: Annotated[
        str | None,
        typer.Option("--as", help="With --approve: the data manager approving (their email)."),
    ] = None,
    format: FormatOption = SyncFormat.text,
    max_issues: MaxIssuesOption = None,
) -> None:
    """Apply a file to the district's students, in one transaction, with history and a run record.

    Exit status: 0 no errors, 1 errors found, 2 the command could not run (or the run failed).
    """
    _sync_command(file, district, "sync", approve, format, max_issues, as_)


@app.command()
@one_line_errors
def runs(
    district: Annotated[str | None, typer.Option("--district", "-d")] = None,
    limit: Annotated[int, typer.Option(help="How many of the latest runs.")] = 50,
) -> None:
    """List sync and undo runs, latest first."""
    from tasks.db import connect, ready_database_url
    from tasks.render import render_runs
    from tasks.store import get_district, list_runs

    with connect(ready_database_url()) as conn:
        if district is not None:
            get_district(conn, district)  # an unknown district is refused, not "no runs yet"
        typer.echo(render_runs(list_runs(conn, district, limit)), nl=False)


@app.command()
@one_line_errors
def undo(run_id: Annotated[int, typer.Argument(help="The sync run to undo.")]) -> None:
    """Put back the values a sync run changed (values changed again since are kept)."""
    from tasks.db import ready_database_url
    from tasks.settings import load_settings
    from tasks.sync import default_requester
    from tasks.undo import undo_run

    with shown() as progress:
        progress.phase("connect")
        url = ready_database_url()
        outcome = undo_run(
            url, run_id, default_requester(), load_settings().lock_wait_seconds, progress
        )
    typer.echo(outcome.message)
    for student, field, later in outcome.kept_examples:
        typer.echo(f"  kept: student {student}, {field} (changed again by run {later})")
    if outcome.kept > len(outcome.kept_examples):
        typer.echo(f"  ... and {outcome.kept - len(outcome.kept_examples)} more kept values")


@app.command()
@one_line_errors
def settings(
    district: DistrictOption,
    error_limit: Annotated[
        float | None,
        typer.Option(help="Reject a file when more than this share of rows has errors."),
    ] = None,
    hold_limit: Annotated[
        float | None,
        typer.Option(
            help="Hold a sync that would change more than this share of values on record."
        ),
    ] = None,
    gender_codes: Annotated[
        str | None, typer.Option(help="Allowed gender codes, comma-separated (e.g. M,F,X).")
    ] = None,
    notify: Annotated[
        str | None, typer.Option(help="Notification recipients, comma-separated emails.")
    ] = None,
    roster_limit: Annotated[
        float | None,
        typer.Option(
            help="Hold a roster that would deactivate more than this share of active students."
        ),
    ] = None,
) -> None:
    """Show a district's settings, or change the ones given (an operator command)."""
    from tasks.db import connect, ready_database_url
    from tasks.store import update_settings

    with connect(ready_database_url(), autocommit=True) as conn:
        now = update_settings(
            conn,
            district,
            error_limit,
            hold_limit,
            None if gender_codes is None else parse_gender_codes(gender_codes),
            None if notify is None else split_list(notify),
            roster_limit,
        )
    typer.echo(f"district {now.code} ({now.name})")
    typer.echo(f"  error limit   {now.error_limit:.0%} of rows with errors rejects a file")
    typer.echo(
        f"  hold limit    {now.hold_limit:.0%} of students with values on record changed "
        "holds a sync"
    )
    typer.echo(
        f"  roster limit  {now.roster_limit:.0%} of active students deactivated holds a roster "
        "(so does a school left with none)"
    )
    typer.echo(f"  gender codes  {', '.join(now.gender_codes)}")
    typer.echo(f"  notify        {', '.join(now.recipients) or '(nobody yet)'}")

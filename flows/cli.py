"""The `demographics` command: a thin shell over tasks and flows.

Prefect is imported only by the commands that run flows, so a file-only command such as
`demographics validate` starts fast and touches nothing but the file.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

app = typer.Typer(
    name="demographics",
    help="Validate and sync student demographics files for a school district.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SAMPLE_FILE = Path(__file__).resolve().parent.parent / "schemas" / "samples" / "demographics.csv"


class Format(StrEnum):
    text = "text"
    json = "json"
    html = "html"


def fail(message: str) -> NoReturn:
    """One line on stderr and exit status 2: the command could not run."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _gender_codes(value: str) -> tuple[str, ...]:
    codes = tuple(dict.fromkeys(c.strip().upper() for c in value.split(",") if c.strip()))
    if not codes:
        fail("--gender-codes needs at least one code, e.g. M,F")
    return codes


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="The demographics CSV file to check.")],
    format: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = (
        Format.text
    ),
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the report here.")
    ] = None,
    gender_codes: Annotated[
        str, typer.Option(help="Allowed gender codes, comma-separated (a district setting).")
    ] = "M,F",
    max_issues: Annotated[
        int | None,
        typer.Option(
            help="Issues listed in text (default 200) and html (default 10000) output; "
            "0 lists all. JSON always lists all.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Check a file against the CSV contract without writing anything anywhere.

    Exit status: 0 no errors, 1 errors found, 2 the command could not run.
    """
    from tasks.read import SourceUnreadable, read_source
    from tasks.render import (
        DEFAULT_HTML_ISSUES,
        DEFAULT_TEXT_ISSUES,
        render_html,
        render_json,
        render_text,
        summary_line,
    )
    from tasks.validate import validate_bytes

    codes = _gender_codes(gender_codes)
    try:
        data = read_source(file)
    except SourceUnreadable as exc:
        fail(f"cannot read {exc}")
    report = validate_bytes(data, file.name, gender_codes=codes).report
    if format is Format.json:
        rendered = render_json(report) + "\n"
    elif format is Format.html:
        rendered = render_html(report, DEFAULT_HTML_ISSUES if max_issues is None else max_issues)
    else:
        rendered = render_text(report, DEFAULT_TEXT_ISSUES if max_issues is None else max_issues)
    if output is None:
        sys.stdout.write(rendered)
    else:
        write_report(output, rendered)
        typer.echo(summary_line(report))
        typer.echo(f"report written to {output}")
    raise typer.Exit(report.exit_code)


def write_report(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or 'I/O error'}")


db_app = typer.Typer(
    help="The database: URL, schema upgrade, embedded server.", no_args_is_help=True
)
roster_app = typer.Typer(help="The district roster (OneRoster 1.1 CSV).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(roster_app, name="roster")


def _register_access() -> None:
    from flows.access_cli import access_app

    app.add_typer(access_app, name="access")


_register_access()


class SyncFormat(StrEnum):
    text = "text"
    json = "json"


def _database_errors(func):  # type: ignore[no-untyped-def]
    """Turn database and store exceptions into one line on stderr (exit 2), never a traceback."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        import psycopg

        from tasks.access import AccessError
        from tasks.db import DatabaseUnavailable, MigrationChanged, describe_error
        from tasks.roster import RosterRefused
        from tasks.settings import SettingsError
        from tasks.store import DistrictBusy, InvalidSetting, NotHeld, UnknownDistrict
        from tasks.undo import UndoRefused

        try:
            return func(*args, **kwargs)
        except (
            SettingsError,
            DatabaseUnavailable,
            DistrictBusy,
            UnknownDistrict,
            NotHeld,
            MigrationChanged,
            RosterRefused,
            UndoRefused,
            InvalidSetting,
            AccessError,
        ) as exc:
            fail(str(exc))
        except psycopg.Error as exc:
            fail(describe_error(exc))

    return wrapper


@db_app.command("url")
@_database_errors
def db_url() -> None:
    """Print the connection URL, starting the embedded server if needed.

    So `psql "$(demographics db url)"` works.
    """
    from tasks.db import database_url

    typer.echo(database_url())


@db_app.command("upgrade")
@_database_errors
def db_upgrade() -> None:
    """Apply the numbered SQL files in sql/ that are not applied yet, then the access views
    and grants (re-asserted every time, like the apply-access-views flow)."""
    from tasks.access import AccessError, apply_access_views
    from tasks.db import connect, database_url, upgrade

    with connect(database_url()) as conn:
        applied = upgrade(conn)
        try:
            views = apply_access_views(conn)
        except AccessError as exc:
            fail(str(exc))
    typer.echo(f"applied {', '.join(applied)}" if applied else "the schema is up to date")
    typer.echo("access views and grants applied")
    for step in views.owner_steps:
        typer.echo(f"still to do: {step}")


@db_app.command("stop")
@_database_errors
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
@_database_errors
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
    snapshot = read_roster(directory)
    url = ready_database_url()
    with connect(url) as conn:
        result = load_roster(conn, district, snapshot, load_settings().lock_wait_seconds)
    typer.echo(result.to_json() if format is SyncFormat.json else render_roster(result), nl=False)
    raise typer.Exit(0 if result.loaded else 1)


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
    from tasks.read import SourceUnreadable, read_source
    from tasks.render import DEFAULT_TEXT_ISSUES, render_json, render_sync_text
    from tasks.settings import load_settings
    from tasks.sync import default_requester, run_file

    try:
        data = read_source(file)
    except SourceUnreadable as exc:
        fail(f"cannot read {exc}")
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


DistrictOption = Annotated[str, typer.Option("--district", "-d", help="The district's code.")]
FileArgument = Annotated[Path, typer.Argument(help="The demographics CSV file.")]
FormatOption = Annotated[SyncFormat, typer.Option("--format", "-f", help="Output format.")]
MaxIssuesOption = Annotated[
    int | None, typer.Option(help="Issues listed in text output (default 200); 0 lists all.")
]


@app.command()
@_database_errors
def preview(
    file: FileArgument,
    district: DistrictOption,
    format: FormatOption = SyncFormat.text,
    max_issues: MaxIssuesOption = None,
) -> None:
    """Show what a sync would do (matching, safeguards, counts) without writing anything."""
    _sync_command(file, district, "preview", False, format, max_issues)


@app.command()
@_database_errors
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
@_database_errors
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
@_database_errors
def undo(run_id: Annotated[int, typer.Argument(help="The sync run to undo.")]) -> None:
    """Put back the values a sync run changed (values changed again since are kept)."""
    from tasks.db import ready_database_url
    from tasks.settings import load_settings
    from tasks.sync import default_requester
    from tasks.undo import undo_run

    outcome = undo_run(
        ready_database_url(), run_id, default_requester(), load_settings().lock_wait_seconds
    )
    typer.echo(outcome.message)
    for student, field, later in outcome.kept_examples:
        typer.echo(f"  kept: student {student}, {field} (changed again by run {later})")
    if outcome.kept > len(outcome.kept_examples):
        typer.echo(f"  ... and {outcome.kept - len(outcome.kept_examples)} more kept values")


@app.command()
@_database_errors
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
) -> None:
    """Show a district's settings, or change the ones given (an operator command)."""
    from tasks.db import connect, ready_database_url
    from tasks.store import update_settings

    def split(value: str | None) -> tuple[str, ...] | None:
        return None if value is None else tuple(v.strip() for v in value.split(",") if v.strip())

    codes = split(gender_codes)
    with connect(ready_database_url(), autocommit=True) as conn:
        now = update_settings(
            conn,
            district,
            error_limit,
            hold_limit,
            None if codes is None else tuple(dict.fromkeys(c.upper() for c in codes)),
            split(notify),
        )
    typer.echo(f"district {now.code} ({now.name})")
    typer.echo(f"  error limit   {now.error_limit:.0%} of rows with errors rejects a file")
    typer.echo(
        f"  hold limit    {now.hold_limit:.0%} of students with values on record changed "
        "holds a sync"
    )
    typer.echo(f"  gender codes  {', '.join(now.gender_codes)}")
    typer.echo(f"  notify        {', '.join(now.recipients) or '(nobody yet)'}")


drop_app = typer.Typer(
    help="The district file drop (SFTP or a local folder).", no_args_is_help=True
)
app.add_typer(drop_app, name="drop")


def _drop_errors(func):  # type: ignore[no-untyped-def]
    """Drop errors as one line, exit 2 (the drop commands also check the district in the
    database: they carry _database_errors too)."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        from tasks.drop import DropError

        try:
            return func(*args, **kwargs)
        except DropError as exc:
            fail(str(exc))

    return wrapper


def _known_district(code: str) -> None:
    """Refuse a district the store does not know (UnknownDistrict), before the drop is
    touched: a typo must not list nothing, or make a folder nobody reads."""
    from tasks.db import connect, ready_database_url
    from tasks.store import get_district

    with connect(ready_database_url(), autocommit=True) as conn:
        get_district(conn, code)


@drop_app.command("list")
@_drop_errors
@_database_errors
def drop_list(district: DistrictOption) -> None:
    """Show what the nightly run would do with each file in a district's drop."""
    from tasks.drop import check_district, open_drop
    from tasks.render import printable
    from tasks.settings import load_settings

    settings = load_settings()
    _known_district(check_district(district))
    drop = open_drop(settings)
    listing = drop.list(district)
    typer.echo(f"{drop.description}/{district}")
    groups = (
        ("ready", listing.ready),
        ("settling (may still be uploading)", listing.settling),
        ("too large (rejected unread)", listing.too_large),
        ("past retention (deleted)", listing.expired),
    )
    for label, files in groups:
        for f in files:
            stamp = f.modified.strftime("%Y-%m-%d %H:%M:%S")
            typer.echo(f"  {label:<36} {stamp} UTC {f.size:>12} bytes  {printable(f.name)}")
    for r in listing.refused:
        typer.echo(f"  {'refused (' + r.reason + ')':<36} {r.name}")


@drop_app.command("put")
@_drop_errors
@_database_errors
def drop_put(file: FileArgument, district: DistrictOption) -> None:
    """Place a file in a district's drop, as a district's upload would."""
    from tasks.drop import check_district, check_name, open_drop
    from tasks.read import SourceUnreadable, read_source
    from tasks.settings import load_settings

    settings = load_settings()
    _known_district(check_district(district))
    name = check_name(file.name)
    try:
        data = read_source(file)
    except SourceUnreadable as exc:
        fail(f"cannot read {exc}")
    drop = open_drop(settings)
    drop.put(district, name, data)
    typer.echo(f"placed {file.name} in {drop.description}/{district}")


@app.command()
@_database_errors
def nightly() -> None:
    """Run the nightly-sync flow once, now, through Prefect (every active district's drop)."""
    from tasks.settings import load_settings

    load_settings()  # a wrong setting is one line here, before Prefect starts
    from flows.pipeline import nightly_sync

    _flow_result("nightly-sync", nightly_sync(return_state=True))


AsOption = Annotated[
    str, typer.Option("--as", help="Your email: a data manager of the run's district.")
]


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


def _decision_refused(run_id: int, email: str) -> None:
    """The flow's own first checks (a held run waiting, a data manager deciding), run before
    Prefect starts, so a refusal is one line and no flow run. The flow checks again."""
    from tasks import process

    try:
        held = process.held_sync(run_id)
        refused = held if isinstance(held, process.Refused) else process.check_approver(held, email)
    except process.StepFailed as exc:
        fail(str(exc))
    if refused is not None:
        fail(refused.reason)


@app.command()
@_database_errors
def approve(
    run_id: Annotated[int, typer.Argument(help="The held sync run.")], as_: AsOption
) -> None:
    """Apply a held sync from the drop (the same file, by SHA-256), through Prefect."""
    _decision_refused(run_id, as_)
    from flows.pipeline import approve_held_sync

    _flow_result("approve-held-sync", approve_held_sync(run_id, as_, return_state=True))


@app.command()
@_database_errors
def discard(
    run_id: Annotated[int, typer.Argument(help="The held sync run.")], as_: AsOption
) -> None:
    """Drop a held sync and delete its file from the drop, through Prefect."""
    _decision_refused(run_id, as_)
    from flows.pipeline import discard_held_sync

    _flow_result("discard-held-sync", discard_held_sync(run_id, as_, return_state=True))


@app.command()
def serve() -> None:
    """Serve the deployments (nightly schedule, manual runs) from this process until SIGTERM
    or Ctrl-C; it stops within 5 s, cancelling the runs in flight (their files stay)."""
    from flows.deploy import ApiUnavailable, serve_all

    try:
        stopped = serve_all()
    except ApiUnavailable as exc:
        fail(str(exc))
    typer.echo(stopped.line())


SAMPLE_ROSTER = SAMPLE_FILE.parent / "roster"
SAMPLE_DISTRICT = "maple-valley"


SAMPLE_MANAGER = "patricia.morales-grant@maplevalley.k12.example.us"  # adm-01, district admin
SAMPLE_TEACHER = "rebecca.lindqvist@maplevalley.k12.example.us"  # tch-01
SAMPLE_SCHOOL_ADMIN = "kevin.ashford@maplevalley.k12.example.us"  # adm-02, middle school
SAMPLE_TEACHER_FIELDS = ("gender", "english_learner")


@app.command()
@_database_errors
def demo() -> None:
    """Run the whole product once on embedded defaults: roster, drop, nightly flow, email."""
    import os

    from tasks.access import grant_manager, set_teacher_fields
    from tasks.db import connect, ready_database_url
    from tasks.drop import open_drop
    from tasks.read import read_source
    from tasks.render import render_html, render_roster
    from tasks.roster import load_roster, read_roster
    from tasks.settings import load_settings
    from tasks.store import list_runs
    from tasks.validate import validate_bytes

    # The sample file is placed a moment before the run; a real upload settles first.
    os.environ.setdefault("DEMOGRAPHICS_SETTLE_SECONDS", "0")
    # Prefect starts a temporary local API for the run when none is configured.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    settings = load_settings()
    data = read_source(SAMPLE_FILE)
    report = validate_bytes(data, SAMPLE_FILE.name).report
    html_path = settings.reports_dir / "demo-validation.html"
    write_report(html_path, render_html(report))

    url = ready_database_url()
    typer.echo(f"1. Load the sample roster {SAMPLE_ROSTER} as district {SAMPLE_DISTRICT}")
    with connect(url, autocommit=True) as conn:
        result = load_roster(conn, SAMPLE_DISTRICT, read_roster(SAMPLE_ROSTER))
        # The operator makes the district admin a data manager: the results email goes to them.
        grant_manager(conn, SAMPLE_DISTRICT, SAMPLE_MANAGER, "demo")
        set_teacher_fields(conn, SAMPLE_DISTRICT, SAMPLE_TEACHER_FIELDS, SAMPLE_MANAGER)
    typer.echo(render_roster(result))
    typer.echo(
        f"   data manager: {SAMPLE_MANAGER}; teachers may see: {', '.join(SAMPLE_TEACHER_FIELDS)}"
    )
    drop = open_drop(settings)
    drop.put(SAMPLE_DISTRICT, SAMPLE_FILE.name, data)
    typer.echo(f"2. Placed {SAMPLE_FILE.name} in the drop: {drop.description}/{SAMPLE_DISTRICT}")
    typer.echo("3. Run the nightly-sync flow through Prefect")
    from flows.pipeline import nightly_sync

    state = nightly_sync(return_state=True)
    typer.echo(f"   nightly-sync: {state.name}" + (f" ({state.message})" if state.message else ""))
    with connect(url, autocommit=True) as conn:
        runs = list_runs(conn, SAMPLE_DISTRICT, 1)
        row = None
        if runs:
            row = conn.execute(
                "SELECT email_status, email_detail, file_deleted_at FROM core.sync_runs "
                "WHERE run_id = %s",
                (runs[0].run_id,),
            ).fetchone()
    if runs and row is not None:
        run = runs[0]
        typer.echo(
            f"   run {run.run_id}: {run.status}, {run.rows} rows, matched {run.matched}, "
            f"updated {run.updated}, unchanged {run.unchanged}, unmatched {run.unmatched}, "
            f"{run.values_changed} values changed; {run.message}"
        )
        typer.echo("   source file: " + ("deleted from the drop" if row[2] else "kept in the drop"))
        if row[0] == "written":
            eml = Path(row[1])
            typer.echo(f"Results email: {eml}")
            typer.echo(f"               {eml.with_suffix('.html')}")
        else:
            typer.echo(f"Results email: {row[0]} ({row[1]})")
    typer.echo("4. What the reporting view shows, asked as each person's own SQL login")
    _demo_view(url)
    typer.echo(f"HTML validation report: {html_path}")
    typer.echo(f"Runs: .venv/bin/demographics runs --district {SAMPLE_DISTRICT}")
    typer.echo(f'Database: {_psql()} "$(.venv/bin/demographics db url)"')
    if not state.is_completed():
        raise typer.Exit(1)


def _demo_view(url: str) -> None:
    """Rows and visible fields of reporting.student_demographics for two sample people."""
    from tasks.access import create_sql_login, view_summary
    from tasks.db import connect

    people = (
        ("teacher tch-01", SAMPLE_TEACHER),
        ("school admin adm-02", SAMPLE_SCHOOL_ADMIN),
    )
    with connect(url, autocommit=True) as conn:
        for label, email in people:
            login = create_sql_login(conn, SAMPLE_DISTRICT, email, "demo")
            rows, fields = view_summary(conn, login.role)
            typer.echo(
                f"   {label} ({login.role}): {rows} rows; fields: {', '.join(fields) or 'none'}"
            )


def _psql() -> str:
    """psql: the embedded server's own when there is one (a fresh machine has no other)."""
    from tasks.settings import load_settings

    if load_settings().database_url:
        return "psql"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver._commands import POSTGRES_BIN_PATH
    return str(POSTGRES_BIN_PATH / "psql")


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
        from tasks.settings import SettingsError

        if isinstance(exc, SettingsError):  # e.g. read as a module loads (flows.pipeline)
            typer.echo(f"error: {exc}", err=True)
        else:  # the message may quote data: name the type only
            typer.echo(f"error: unexpected failure ({type(exc).__name__})", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()

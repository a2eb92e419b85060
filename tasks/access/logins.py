"""SQL logins: a PostgreSQL login role per person, mapped by the view to their roster user.

Roles are created, rotated (a new password, every attribute restated) and revoked here; the
password never reaches the server, only its SCRAM-SHA-256 verifier (`credentials`) does.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import errors, sql

from tasks.access.common import (
    GROUP_ROLE,
    AccessError,
    AccessRefused,
    Person,
    UnknownPerson,
    find_staff,
    record_act,
)
from tasks.access.credentials import (
    check_password,
    generate_password,
    role_name,
    scram_sha256_verifier,
)
from tasks.store import get_district

LOGIN_CONNECTION_LIMIT = 10  # per login: one person cannot take every connection slot


@dataclass(frozen=True)
class SqlLogin:
    """A created or rotated login. `password` is the generated one, None when supplied."""

    role: str
    person: Person
    created: bool
    password: str | None


@dataclass(frozen=True)
class RevokedLogin:
    """A closed login, and whether its role could be dropped."""

    role: str
    dropped: bool  # False: kept, NOLOGIN and out of the group; it has objects elsewhere


def _require_view(conn: psycopg.Connection) -> None:
    row = conn.execute(
        """SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                          WHERE n.nspname = 'reporting' AND c.relname = 'student_demographics'),
                  EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s)""",
        (GROUP_ROLE,),
    ).fetchone()
    if not row or not all(row):
        raise AccessError("the reporting view is not set up; run: demographics db upgrade")


def _role_exists(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is not None


def _role_oid(conn: psycopg.Connection, name: str) -> int:
    row = conn.execute("SELECT oid FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
    assert row is not None
    return int(row[0])


def _create_role(conn: psycopg.Connection, name: str, verifier: str) -> None:
    try:
        with conn.transaction():
            conn.execute(
                sql.SQL(
                    "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT "
                    "NOREPLICATION NOBYPASSRLS CONNECTION LIMIT {} PASSWORD {}"
                ).format(
                    sql.Identifier(name), sql.Literal(LOGIN_CONNECTION_LIMIT), sql.Literal(verifier)
                )
            )
    except errors.InsufficientPrivilege:
        raise AccessError(
            "the application's database user cannot create roles: it needs CREATEROLE"
        ) from None


_GROUP_MEMBERSHIP = (GROUP_ROLE, True, False, False)  # (role, INHERIT, SET, ADMIN)


def _refuse_foreign_role(conn: psycopg.Connection, name: str, *, reopening: bool) -> None:
    """Refuse to hand out an existing role unless it is exactly a login this tool makes.

    Its memberships: the group with INHERIT TRUE, SET FALSE, and nothing else (none at all is
    fine too when reopening a revoked login: the revoke took the group away). Nobody but the
    application's own user is a member of it (a member could `SET ROLE` to it). Not a
    superuser, not REPLICATION, not BYPASSRLS (a CREATEROLE user could not even undo those).
    And when this database recorded the role's oid, the same role: not one dropped and made
    again by hand under the name.
    """
    oid = _role_oid(conn, name)
    mighty = conn.execute(
        "SELECT rolsuper OR rolreplication OR rolbypassrls FROM pg_roles WHERE oid = %s", (oid,)
    ).fetchone()
    of = conn.execute(  # distinct: the same grant by two grantors is one membership
        """SELECT DISTINCT g.rolname, m.inherit_option, m.set_option, m.admin_option
           FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
           WHERE m.member = %s ORDER BY 1, 2, 3, 4""",
        (oid,),
    ).fetchall()
    members = conn.execute(
        """SELECT count(*) FROM pg_auth_members m
           WHERE m.roleid = %s
             AND m.member <> (SELECT oid FROM pg_roles WHERE rolname = current_user)""",
        (oid,),
    ).fetchone()
    recorded = conn.execute(
        """SELECT (detail->>'role_oid')::bigint FROM core.access_acts
           WHERE act IN ('sql_login_create', 'sql_login_rotate') AND detail->>'role' = %s
           ORDER BY act_id DESC LIMIT 1""",
        (name,),
    ).fetchone()
    allowed = ([_GROUP_MEMBERSHIP], []) if reopening else ([_GROUP_MEMBERSHIP],)
    if (
        (mighty and mighty[0])
        or (members and members[0])
        or [tuple(m) for m in of] not in allowed
        or (recorded is not None and recorded[0] is not None and recorded[0] != oid)
    ):
        raise AccessRefused(
            f"the PostgreSQL role {name} is not as this tool makes its logins (a member of "
            f"{GROUP_ROLE} only, with no member of its own, no superuser, replication or "
            "bypassrls attribute, the role this database made); it is not handed out and "
            "nothing was changed. Revoke the login (demographics access sql-login --revoke) "
            "and create it again"
        )


def _restate_login(conn: psycopg.Connection, name: str, verifier: str) -> None:
    """Set the new password and restate every attribute of a login, then check them.

    PostgreSQL 16 lets a role change SUPERUSER, CREATEDB, REPLICATION or BYPASSRLS on
    another only if it has that attribute itself: those we restate when we may, and in any
    case refuse (rolling everything back) unless the role ends up with none of them.
    """
    mine = conn.execute(
        "SELECT rolsuper, rolcreatedb, rolreplication, rolbypassrls FROM pg_roles "
        "WHERE rolname = current_user"
    ).fetchone()
    assert mine is not None
    superuser, createdb, replication, bypassrls = (bool(x) for x in mine)
    attributes = ["LOGIN", "NOCREATEROLE", "NOINHERIT"]
    attributes += ["NOSUPERUSER"] if superuser else []
    attributes += ["NOCREATEDB"] if superuser or createdb else []
    attributes += ["NOREPLICATION"] if superuser or replication else []
    attributes += ["NOBYPASSRLS"] if superuser or bypassrls else []
    conn.execute(
        sql.SQL(
            "ALTER ROLE {} WITH {} CONNECTION LIMIT {} VALID UNTIL 'infinity' PASSWORD {}"
        ).format(
            sql.Identifier(name),
            sql.SQL(" ").join(sql.SQL(a) for a in attributes),
            sql.Literal(LOGIN_CONNECTION_LIMIT),
            sql.Literal(verifier),
        )
    )
    now = conn.execute(
        """SELECT rolcanlogin AND NOT (rolsuper OR rolcreatedb OR rolcreaterole OR rolinherit
                                       OR rolreplication OR rolbypassrls)
                  AND rolconnlimit = %s
           FROM pg_roles WHERE rolname = %s""",
        (LOGIN_CONNECTION_LIMIT, name),
    ).fetchone()
    if not now or not now[0]:
        raise AccessRefused(
            f"the PostgreSQL role {name} has attributes this database user cannot take away "
            "(CREATEDB, REPLICATION or BYPASSRLS); it is not handed out and nothing was changed"
        )


def create_sql_login(
    conn: psycopg.Connection,
    district_code: str,
    email: str,
    created_by: str,
    password: str | None = None,
) -> SqlLogin:
    """Create the person's login role, or set a new password on it (rotate).

    The role is a member of the group role only (INHERIT TRUE, so SELECT works directly;
    SET FALSE, so it cannot `SET ROLE` to it) and of nothing else; no attribute beyond LOGIN,
    and at most LOGIN_CONNECTION_LIMIT connections. A rotation or a reopening restates all of
    that, and refuses a role that is not exactly such a login (`_refuse_foreign_role`).
    With no `password`, one is generated and returned: print it once, store it nowhere.
    """
    generated = password is None
    secret = generate_password() if password is None else password
    check_password(secret)
    verifier = scram_sha256_verifier(secret)
    with conn.transaction():
        person = find_staff(conn, district_code, email)
        _require_view(conn)
        _lock_staff(conn, person)
        open_login = conn.execute(
            "SELECT login_id, role_name FROM core.sql_logins "
            "WHERE staff_id = %s AND revoked_at IS NULL FOR UPDATE",
            (person.staff_id,),
        ).fetchone()
        if open_login is not None:
            login_id, name = open_login
            _rotate_login(conn, login_id, name, verifier, created_by)
            act = "sql_login_rotate"
        else:
            name = _open_login(conn, person, verifier, created_by)
            act = "sql_login_create"
        conn.execute(
            sql.SQL("GRANT {} TO {} WITH INHERIT TRUE, SET FALSE").format(
                sql.Identifier(GROUP_ROLE), sql.Identifier(name)
            )
        )
        record_act(
            conn,
            person.district_id,
            act,
            created_by,
            subject_staff_id=person.staff_id,
            detail={"role": name, "role_oid": _role_oid(conn, name)},
        )
    return SqlLogin(name, person, act == "sql_login_create", secret if generated else None)


def _lock_staff(conn: psycopg.Connection, person: Person) -> None:
    """One login change per person at a time: a row lock on their staff record (logins
    cannot touch core, unlike advisory locks), checked again under the lock."""
    still = conn.execute(
        "SELECT 1 FROM core.staff WHERE staff_id = %s AND active AND enabled FOR NO KEY UPDATE",
        (person.staff_id,),
    ).fetchone()
    if still is None:
        raise UnknownPerson(
            f"no active staff member of district {person.district_code} has that email "
            "(students and people of other districts cannot be given access)"
        )


def _rotate_login(
    conn: psycopg.Connection, login_id: int, name: str, verifier: str, rotated_by: str
) -> None:
    """A new password on the person's open login (made again if it was dropped by hand)."""
    if _role_exists(conn, name):
        _refuse_foreign_role(conn, name, reopening=False)
        _restate_login(conn, name, verifier)
    else:  # dropped by hand: make it again under the same name
        _create_role(conn, name, verifier)
    conn.execute(
        "UPDATE core.sql_logins SET rotated_by = %s, rotated_at = now() WHERE login_id = %s",
        (rotated_by, login_id),
    )


def _open_login(conn: psycopg.Connection, person: Person, verifier: str, created_by: str) -> str:
    """A login for a person with none open: a new role, or their revoked one reopened.
    Returns the role's name."""
    database = conn.execute("SELECT current_database()").fetchone()
    assert database is not None
    name = role_name(database[0], person.district_code, person.sourced_id)
    if _role_exists(conn, name):
        ours = conn.execute(
            "SELECT 1 FROM core.sql_logins WHERE role_name = %s AND staff_id = %s",
            (name, person.staff_id),
        ).fetchone()
        if ours is None:
            raise AccessRefused(
                f"a PostgreSQL role named {name} already exists and is not a login "
                "this database made for that person; nothing was changed"
            )
        # This person's earlier login, revoked but kept: open it again.
        _refuse_foreign_role(conn, name, reopening=True)
        _restate_login(conn, name, verifier)
    else:
        _create_role(conn, name, verifier)
    conn.execute(
        """INSERT INTO core.sql_logins (role_name, district_id, staff_id, created_by)
           VALUES (%s, %s, %s, %s)""",
        (name, person.district_id, person.staff_id, created_by),
    )
    return name


def revoke_sql_login(
    conn: psycopg.Connection, district_code: str, email: str, revoked_by: str
) -> RevokedLogin:
    """Close the person's login and drop its role; their open sessions are ended.

    Works for someone who has left the roster too. From the commit on, the view maps the role
    to nobody, so even a session that could not be ended sees no rows. What the role owns in
    this database (a large object, say) is dropped with it (`DROP OWNED BY`), so it cannot
    keep the role alive; only objects in another database of the server can (dropped=False).
    """
    with conn.transaction():
        district = get_district(conn, district_code)
        name, staff_id = _close_login(conn, district.district_id, district.code, email, revoked_by)
        record_act(
            conn,
            district.district_id,
            "sql_login_revoke",
            revoked_by,
            subject_staff_id=staff_id,
            detail={"role": name},
        )
        row = conn.execute("SELECT oid FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
        oid = None if row is None else int(row[0])
        dropped = True if oid is None else _drop_role(conn, name, oid)
    if oid is not None:
        _end_sessions(conn, oid)
    return RevokedLogin(name, dropped)


def _close_login(
    conn: psycopg.Connection, district_id: int, district_code: str, email: str, revoked_by: str
) -> tuple[str, int]:
    """Mark the person's one open login revoked; returns (role name, staff_id)."""
    row = conn.execute(
        """UPDATE core.sql_logins l SET revoked_by = %s, revoked_at = now()
           FROM core.staff sf
           WHERE sf.staff_id = l.staff_id AND l.district_id = %s
             AND l.revoked_at IS NULL AND lower(sf.email) = lower(%s)
           RETURNING l.role_name, l.staff_id""",
        (revoked_by, district_id, email.strip()),
    ).fetchall()
    if len(row) != 1:
        raise UnknownPerson(
            f"no SQL login of district {district_code} belongs to that email"
            if not row
            else f"{len(row)} SQL logins of district {district_code} match that email; "
            "nothing was changed"
        )
    name, staff_id = row[0]
    return name, staff_id


def _drop_role(conn: psycopg.Connection, name: str, oid: int) -> bool:
    """Take the login and the group away, then drop the role with what it owns here.
    False: kept (NOLOGIN, out of the group), it has objects or privileges elsewhere."""
    ident = sql.Identifier(name)
    conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(ident))
    conn.execute(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(GROUP_ROLE), ident))
    try:
        with conn.transaction():
            may = conn.execute(
                "SELECT rolsuper OR pg_has_role(current_user, %s, 'USAGE') "
                "FROM pg_roles WHERE rolname = current_user",
                (name,),
            ).fetchone()
            if not may or not may[0]:
                # DROP OWNED (and ending its sessions) needs the role's privileges:
                # we hold ADMIN on the roles we made, so lend ourselves INHERIT; the
                # grant goes with the role (or with this savepoint).
                conn.execute(
                    sql.SQL("GRANT {} TO CURRENT_USER WITH INHERIT TRUE, SET FALSE").format(ident)
                )
            _end_sessions(conn, oid)  # their temporary objects go with them
            conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
            conn.execute(sql.SQL("DROP ROLE {}").format(ident))
    except (errors.DependentObjectsStillExist, errors.InsufficientPrivilege):
        return False  # it has objects or privileges in another database: kept
    return True


def _end_sessions(conn: psycopg.Connection, role_oid: int) -> None:
    """Best effort: a session we may not end still sees nothing once the revoke commits (its
    login is revoked, its group membership gone). By oid: a dropped role's sessions have no
    name."""
    try:
        with conn.transaction():
            conn.execute(
                "SELECT pg_terminate_backend(pid, 2000) FROM pg_stat_activity "
                "WHERE usesysid = %s AND pid <> pg_backend_pid()",
                (role_oid,),
            )
    except psycopg.Error:
        pass


def login_roles(conn: psycopg.Connection, district_code: str | None = None) -> list[str]:
    """The open logins' role names (of one district, or all)."""
    rows = conn.execute(
        """SELECT l.role_name FROM core.sql_logins l JOIN core.districts d USING (district_id)
           WHERE l.revoked_at IS NULL AND (%(d)s::text IS NULL OR d.code = %(d)s)
           ORDER BY l.role_name""",
        {"d": district_code},
    ).fetchall()
    return [r[0] for r in rows]

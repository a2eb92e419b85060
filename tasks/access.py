"""Who may do what (access-model.md): data managers, teacher fields, SQL logins, the view.

The reporting view itself and its grants are SQL (`sql/900_reporting_always.sql`); this module
records who may act, creates the PostgreSQL login roles that the view maps to roster users,
and re-applies the view. Every act is written to `core.access_acts` with who and when.

Messages never carry a student value, a password, or an email the caller typed that is not
known to be staff's (an unknown email could be a student's): they name the district instead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors, sql
from psycopg.types.json import Jsonb

from schemas.columns import DEMOGRAPHIC_COLUMNS
from tasks.db import apply_migration, lock_migrations, migrations, pending
from tasks.errors import DemographicsError
from tasks.store import get_district

FIELDS: tuple[str, ...] = DEMOGRAPHIC_COLUMNS  # the 10 fields a district may open to teachers
GROUP_ROLE = "demographics_reporting"  # NOLOGIN; USAGE on reporting, SELECT on the view
ROLE_PREFIX = "ds_"
SCRAM_ITERATIONS = 4096  # PostgreSQL's own default (scram_iterations)
PASSWORD_LENGTH = (16, 1000)
LOGIN_CONNECTION_LIMIT = 10  # per login: one person cannot take every connection slot
ACTS = (
    "grant_manager",
    "revoke_manager",
    "teacher_fields",
    "sql_login_create",
    "sql_login_rotate",
    "sql_login_revoke",
    "approve_held_sync",
    "discard_held_sync",
)


class AccessError(DemographicsError):
    """An access command cannot do what was asked; the message is safe to print."""


class AccessRefused(AccessError):
    """The act is not allowed (or would take over something that is not ours)."""


class NotAManager(AccessRefused):
    """The person is not a data manager of the district."""


class UnknownPerson(AccessError):
    """No active staff member (or no open SQL login) matches."""


class InvalidField(AccessError):
    """A teacher field name that is not one of the 10 demographic fields."""


class InvalidPassword(AccessError):
    """A supplied password that cannot be used (too short, not printable ASCII)."""


class AccessViewsBusy(AccessError):
    """The view could not be replaced in time: a long query holds it."""

    transient = True


@dataclass(frozen=True)
class Person:
    """A staff member of a district, as the roster has them."""

    staff_id: int
    district_id: int
    district_code: str
    sourced_id: str
    email: str
    role: str
    district_wide: bool

    @property
    def scope(self) -> str:
        """What the roster role gives in the reporting view (access-model.md)."""
        if self.role == "administrator":
            return "district admin" if self.district_wide else "school admin"
        return "teacher" if self.role == "teacher" else f"{self.role} (no rows)"


@dataclass(frozen=True)
class Manager:
    email: str
    sourced_id: str
    scope: str
    granted_by: str
    granted_at: datetime


@dataclass(frozen=True)
class TeacherFields:
    district_code: str
    fields: tuple[str, ...]
    changed_by: str | None
    changed_at: datetime | None


@dataclass(frozen=True)
class SqlLogin:
    """A created or rotated login. `password` is the generated one, None when supplied."""

    role: str
    person: Person
    created: bool
    password: str | None


@dataclass(frozen=True)
class RevokedLogin:
    role: str
    dropped: bool  # False: kept, NOLOGIN and out of the group; it has objects elsewhere


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


# --- people and acts ----------------------------------------------------------------------

_PERSON = """
    SELECT sf.staff_id, sf.district_id, d.code, sf.sourced_id, sf.email, sf.role,
           sf.district_wide
    FROM core.staff sf JOIN core.districts d USING (district_id)
"""


def find_staff(conn: psycopg.Connection, district_code: str, email: str) -> Person:
    """The active, enabled staff member of the district with this email (case ignored)."""
    district = get_district(conn, district_code)
    rows = conn.execute(
        _PERSON + " WHERE sf.district_id = %s AND lower(sf.email) = lower(%s) "
        "AND sf.active AND sf.enabled",
        (district.district_id, email.strip()),
    ).fetchall()
    if not rows:
        raise UnknownPerson(
            f"no active staff member of district {district.code} has that email "
            "(students and people of other districts cannot be given access)"
        )
    if len(rows) > 1:
        raise UnknownPerson(
            f"{len(rows)} active staff records of district {district.code} share that email; "
            "fix the roster so that each person has their own"
        )
    return Person(*rows[0])


def record_act(
    conn: psycopg.Connection,
    district_id: int,
    act: str,
    actor: str,
    *,
    actor_staff_id: int | None = None,
    subject_staff_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append one access act (who, when, what) to `core.access_acts`; never a password.

    For the approve/discard flows: `record_act(conn, district_id, "approve_held_sync",
    email, actor_staff_id=..., detail={"run_id": run_id})`.
    """
    if act not in ACTS:
        raise ValueError(f"unknown access act {act!r}")
    conn.execute(
        """INSERT INTO core.access_acts
               (district_id, act, actor, actor_staff_id, subject_staff_id, detail)
           VALUES (%s, %s, %s, %s, %s, %s)""",
        (district_id, act, actor, actor_staff_id, subject_staff_id, Jsonb(detail or {})),
    )


# --- data managers ------------------------------------------------------------------------


def grant_manager(
    conn: psycopg.Connection, district_code: str, email: str, granted_by: str
) -> bool:
    """Make an active staff member a data manager (an operator's act). False: already one."""
    with conn.transaction():
        person = find_staff(conn, district_code, email)
        row = conn.execute(
            """INSERT INTO core.data_managers (district_id, staff_id, granted_by)
               VALUES (%s, %s, %s)
               ON CONFLICT (district_id, staff_id) WHERE revoked_at IS NULL DO NOTHING
               RETURNING grant_id""",
            (person.district_id, person.staff_id, granted_by),
        ).fetchone()
        if row is None:
            return False
        record_act(
            conn, person.district_id, "grant_manager", granted_by, subject_staff_id=person.staff_id
        )
    return True


def revoke_manager(
    conn: psycopg.Connection, district_code: str, email: str, revoked_by: str
) -> str:
    """Close a data manager's grant (kept as history); returns their email as on record.

    Works for someone who has left the roster too: a grant must be revocable after the fact.
    """
    with conn.transaction():
        district = get_district(conn, district_code)
        row = conn.execute(
            """UPDATE core.data_managers m SET revoked_by = %s, revoked_at = now()
               FROM core.staff sf
               WHERE sf.staff_id = m.staff_id AND m.district_id = %s
                 AND m.revoked_at IS NULL AND lower(sf.email) = lower(%s)
               RETURNING m.staff_id, sf.email""",
            (revoked_by, district.district_id, email.strip()),
        ).fetchall()
        if not row:
            raise NotAManager(f"that person is not a data manager of district {district.code}")
        for staff_id, _email in row:
            record_act(
                conn, district.district_id, "revoke_manager", revoked_by, subject_staff_id=staff_id
            )
    return str(row[0][1])


def list_managers(conn: psycopg.Connection, district_code: str) -> list[Manager]:
    """The district's current data managers, earliest grant first."""
    district = get_district(conn, district_code)
    rows = conn.execute(
        """SELECT sf.email, sf.sourced_id, sf.role, sf.district_wide, sf.active AND sf.enabled,
                  m.granted_by, m.granted_at
           FROM core.data_managers m JOIN core.staff sf USING (staff_id)
           WHERE m.district_id = %s AND m.revoked_at IS NULL
           ORDER BY m.granted_at, m.grant_id""",
        (district.district_id,),
    ).fetchall()
    managers = []
    for email, sourced_id, role, wide, active, by, at in rows:
        scope = Person(0, 0, "", sourced_id, email, role, wide).scope
        managers.append(
            Manager(email, sourced_id, scope if active else "inactive: no rights", by, at)
        )
    return managers


def _manager(conn: psycopg.Connection, district_code: str, email: str) -> tuple[int, str] | None:
    """(staff_id, email as on record) of an active data manager, or None."""
    row = conn.execute(
        """SELECT m.staff_id, sf.email
           FROM core.data_managers m
           JOIN core.staff sf USING (staff_id)
           JOIN core.districts d ON d.district_id = m.district_id
           WHERE d.code = %s AND d.active AND m.revoked_at IS NULL
             AND sf.active AND sf.enabled AND lower(sf.email) = lower(%s)""",
        (district_code, email.strip()),
    ).fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


def _not_a_manager(district_code: str) -> NotAManager:
    return NotAManager(
        f"that person is not a data manager of district {district_code}; only a data "
        "manager may do this (the operator grants it: demographics access grant-manager)"
    )


def require_manager(conn: psycopg.Connection, district_code: str, email: str) -> None:
    """Refuse unless `email` is an active data manager of the district (approve, discard...)."""
    if _manager(conn, district_code, email) is None:
        raise _not_a_manager(district_code)


def record_manager_act(
    conn: psycopg.Connection,
    district_code: str,
    email: str,
    act: str,
    detail: dict[str, Any] | None = None,
    *,
    via: str | None = None,
) -> str:
    """Check that `email` is a data manager and record their act; returns the email as on
    record (for `resolved_by`). Call it in the transaction that does the act, e.g. approving
    a held run: `record_manager_act(conn, code, approved_by, "approve_held_sync",
    {"run_id": run_id}, via="flow-run:...")`; a refusal (NotAManager) then rolls the act
    back with it. `via` is who carried the claim (the operator, the flow run): the manager
    is only named, so the record says by whom.

    Inside an open transaction this runs in a savepoint (psycopg nests `conn.transaction()`):
    a refusal undoes only its own work, and the caller's transaction decides the rest.
    """
    details = dict(detail or {})
    if via is not None:
        details["via"] = via
    with conn.transaction():
        district = get_district(conn, district_code)
        manager = _manager(conn, district.code, email)
        if manager is None:
            raise _not_a_manager(district.code)
        record_act(
            conn, district.district_id, act, manager[1], actor_staff_id=manager[0], detail=details
        )
    return manager[1]


def manager_emails(conn: psycopg.Connection, district_id: int) -> tuple[str, ...]:
    """The default recipients of results emails: active managers who are active staff."""
    rows = conn.execute(
        """SELECT DISTINCT ON (lower(sf.email)) sf.email, m.granted_at
           FROM core.data_managers m JOIN core.staff sf USING (staff_id)
           WHERE m.district_id = %s AND m.revoked_at IS NULL
             AND sf.active AND sf.enabled AND sf.email IS NOT NULL
           ORDER BY lower(sf.email), m.granted_at""",
        (district_id,),
    ).fetchall()
    return tuple(email for email, _at in sorted(rows, key=lambda r: (r[1], r[0])))


# --- teacher fields -----------------------------------------------------------------------


_FIELD_LIKE = re.compile(r"[a-z][a-z_]{0,39}")


def parse_fields(names: Iterable[str]) -> tuple[str, ...]:
    """Field names as given (any case, duplicates allowed) in the canonical order."""
    wanted = {n.strip().casefold() for n in names if n.strip()}
    unknown = sorted(wanted - set(FIELDS))
    if unknown:
        # Only names shaped like a field are repeated: anything else may be a student's value
        named = [u for u in unknown if _FIELD_LIKE.fullmatch(u)][:5]
        others = len(unknown) - len(named)
        shown = [*named, *([f"{others} other value{'s' if others != 1 else ''}"] if others else [])]
        raise InvalidField(
            f"not a demographic field: {', '.join(shown)}; the fields are {', '.join(FIELDS)}"
        )
    return tuple(f for f in FIELDS if f in wanted)


def teacher_fields(conn: psycopg.Connection, district_code: str) -> TeacherFields:
    """The fields the district's teachers see now (none until a data manager opens some)."""
    district = get_district(conn, district_code)
    row = conn.execute(
        "SELECT fields, changed_by, changed_at FROM core.teacher_access WHERE district_id = %s",
        (district.district_id,),
    ).fetchone()
    if row is None:
        return TeacherFields(district.code, (), None, None)
    return TeacherFields(district.code, parse_fields(row[0]), row[1], row[2])


def set_teacher_fields(
    conn: psycopg.Connection, district_code: str, fields: Iterable[str], changed_by: str
) -> TeacherFields:
    """Set the fields teachers see; only a data manager may. Applies to the next query."""
    chosen = parse_fields(fields)
    with conn.transaction():
        district = get_district(conn, district_code)
        manager = _manager(conn, district.code, changed_by)
        if manager is None:
            raise _not_a_manager(district.code)
        staff_id, recorded = manager
        # One change at a time per district, so "from" is what the change replaced: a row
        # lock (logins cannot touch core.teacher_access), never an advisory lock, which any
        # login could take first and hold. The row is made (none = no field) to be locked.
        conn.execute(
            """INSERT INTO core.teacher_access (district_id, changed_by) VALUES (%s, %s)
               ON CONFLICT (district_id) DO NOTHING""",
            (district.district_id, recorded),
        )
        locked = conn.execute(
            "SELECT fields FROM core.teacher_access WHERE district_id = %s FOR UPDATE",
            (district.district_id,),
        ).fetchone()
        assert locked is not None
        before = parse_fields(locked[0])
        conn.execute(
            """UPDATE core.teacher_access
               SET fields = %s, changed_by = %s, changed_at = now()
               WHERE district_id = %s""",
            (list(chosen), recorded, district.district_id),
        )
        record_act(
            conn,
            district.district_id,
            "teacher_fields",
            recorded,
            actor_staff_id=staff_id,
            detail={"from": list(before), "to": list(chosen)},
        )
        return teacher_fields(conn, district.code)


# --- SQL logins ---------------------------------------------------------------------------


def role_name(database: str, district_code: str, sourced_id: str) -> str:
    """The login role of a person: `ds_` and 16 hex digits of a SHA-256 over the database,
    the district code and the exact sourcedId.

    Opaque on purpose: every login can list every role (pg_roles), so a name must tell no
    district and no person. Deterministic, so a person's new login gets the same name back;
    the database keeps two databases on one server apart (roles are server-wide).
    """
    digest = hashlib.sha256(f"{database}\0{district_code}\0{sourced_id}".encode()).hexdigest()
    return ROLE_PREFIX + digest[:16]


def generate_password() -> str:
    """32 URL-safe characters (192 bits) from the system's secure source."""
    return secrets.token_urlsafe(24)


def check_password(password: str) -> None:
    """Printable ASCII of a sane length: then SASLprep leaves it as it is, and our verifier
    matches what every client computes."""
    low, high = PASSWORD_LENGTH
    if not low <= len(password) <= high:
        raise InvalidPassword(f"a password has {low} to {high} characters")
    if any(not " " <= ch <= "~" for ch in password):
        raise InvalidPassword("a password is printable ASCII (letters, digits, punctuation)")


def scram_sha256_verifier(
    password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS
) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores (RFC 5802 and 7677), computed here.

    `ALTER ROLE ... PASSWORD '<verifier>'` then never sends the password itself to the server,
    so it can appear in no server log or statistics view.
    """
    salt = secrets.token_bytes(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


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
        # One login change per person at a time: a row lock on their staff record (logins
        # cannot touch core, unlike advisory locks), checked again under the lock.
        still = conn.execute(
            "SELECT 1 FROM core.staff WHERE staff_id = %s AND active AND enabled FOR NO KEY UPDATE",
            (person.staff_id,),
        ).fetchone()
        if still is None:
            raise UnknownPerson(
                f"no active staff member of district {person.district_code} has that email "
                "(students and people of other districts cannot be given access)"
            )
        open_login = conn.execute(
            "SELECT login_id, role_name FROM core.sql_logins "
            "WHERE staff_id = %s AND revoked_at IS NULL FOR UPDATE",
            (person.staff_id,),
        ).fetchone()
        if open_login is not None:
            login_id, name = open_login
            if _role_exists(conn, name):
                _refuse_foreign_role(conn, name, reopening=False)
                _restate_login(conn, name, verifier)
            else:  # dropped by hand: make it again under the same name
                _create_role(conn, name, verifier)
            conn.execute(
                "UPDATE core.sql_logins SET rotated_by = %s, rotated_at = now() "
                "WHERE login_id = %s",
                (created_by, login_id),
            )
            act = "sql_login_rotate"
        else:
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
        row = conn.execute(
            """UPDATE core.sql_logins l SET revoked_by = %s, revoked_at = now()
               FROM core.staff sf
               WHERE sf.staff_id = l.staff_id AND l.district_id = %s
                 AND l.revoked_at IS NULL AND lower(sf.email) = lower(%s)
               RETURNING l.role_name, l.staff_id""",
            (revoked_by, district.district_id, email.strip()),
        ).fetchall()
        if len(row) != 1:
            raise UnknownPerson(
                f"no SQL login of district {district.code} belongs to that email"
                if not row
                else f"{len(row)} SQL logins of district {district.code} match that email; "
                "nothing was changed"
            )
        name, staff_id = row[0]
        record_act(
            conn,
            district.district_id,
            "sql_login_revoke",
            revoked_by,
            subject_staff_id=staff_id,
            detail={"role": name},
        )
        dropped = True
        oid = conn.execute("SELECT oid FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
        if oid is not None:
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
                            sql.SQL("GRANT {} TO CURRENT_USER WITH INHERIT TRUE, SET FALSE").format(
                                ident
                            )
                        )
                    _end_sessions(conn, int(oid[0]))  # their temporary objects go with them
                    conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
                    conn.execute(sql.SQL("DROP ROLE {}").format(ident))
            except (errors.DependentObjectsStillExist, errors.InsufficientPrivilege):
                dropped = False  # it has objects or privileges in another database: kept
    if oid is not None:
        _end_sessions(conn, int(oid[0]))
    return RevokedLogin(name, dropped)


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


# --- the view -----------------------------------------------------------------------------


_LARGE_OBJECT_CREATORS = (
    "lo_create(oid)",
    "lo_creat(integer)",
    "lo_from_bytea(oid, bytea)",
    "lo_import(text)",
    "lo_import(text, oid)",
)


def owner_steps(conn: psycopg.Connection) -> list[OwnerStep]:
    """What still lets a login create something or lean on PUBLIC, checked on the privileges
    themselves (not on what the SQL file tried): empty when all is closed.

    `sql/900_reporting_always.sql` closes these when it may (database owner, superuser) and
    otherwise only raises a NOTICE, which a client never shows; this says what is left and
    the statement for whoever can run it.
    """
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
    db = sql.Identifier(database).as_string(conn)
    group = GROUP_ROLE  # a constant that needs no quoting
    owner = f"the owner of database {database}"
    steps = []
    if temp:
        steps.append(
            OwnerStep(
                "logins can create temporary tables and functions (TEMP on the database)",
                owner,
                f"REVOKE TEMPORARY ON DATABASE {db} FROM PUBLIC, {group};",
            )
        )
    if create:
        steps.append(
            OwnerStep(
                "logins can create schemas (CREATE on the database)",
                owner,
                f"REVOKE CREATE ON DATABASE {db} FROM PUBLIC, {group};",
            )
        )
    if not connect:
        steps.append(
            OwnerStep(
                f"{GROUP_ROLE} has no CONNECT of its own (logins stop working if PUBLIC loses it)",
                owner,
                f"GRANT CONNECT ON DATABASE {db} TO {group};",
            )
        )
    for schema in schemas:
        name = sql.Identifier(schema).as_string(conn)
        if schema == "public":
            steps.append(
                OwnerStep(
                    "logins can use (or create in) schema public",
                    owner,
                    "REVOKE ALL ON SCHEMA public FROM PUBLIC;",
                )
            )
        else:
            steps.append(
                OwnerStep(
                    f"logins can create objects in schema {schema}",
                    f"the owner of schema {schema}",
                    f"REVOKE CREATE ON SCHEMA {name} FROM PUBLIC, {group};",
                )
            )
    if large_objects:
        steps.append(
            OwnerStep(
                "logins can create large objects",
                "a superuser",
                f"REVOKE EXECUTE ON FUNCTION {', '.join(large_objects)} FROM PUBLIC;",
            )
        )
    return steps


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

"""Data managers: the staff members who may approve, discard and open fields to teachers.

An operator grants and revokes them; a grant is closed, never deleted, so it stays history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from tasks.access.common import NotAManager, Person, find_staff, record_act
from tasks.store import get_district


@dataclass(frozen=True)
class Manager:
    """A current data manager, as `list_managers` shows them."""

    email: str
    sourced_id: str
    scope: str
    granted_by: str
    granted_at: datetime


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


def active_manager(
    conn: psycopg.Connection, district_code: str, email: str
) -> tuple[int, str] | None:
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


def not_a_manager(district_code: str) -> NotAManager:
    """The refusal for someone who is not (or no longer) a data manager of the district."""
    return NotAManager(
        f"that person is not a data manager of district {district_code}; only a data "
        "manager may do this (the operator grants it: demographics access grant-manager)"
    )


def require_manager(conn: psycopg.Connection, district_code: str, email: str) -> None:
    """Refuse unless `email` is an active data manager of the district (approve, discard...)."""
    if active_manager(conn, district_code, email) is None:
        raise not_a_manager(district_code)


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
        manager = active_manager(conn, district.code, email)
        if manager is None:
            raise not_a_manager(district.code)
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


def pending_manager_emails(conn: psycopg.Connection, district_id: int) -> tuple[str, ...]:
    """The first data manager named when the district was added, until a roster has them."""
    rows = conn.execute(
        "SELECT email FROM core.pending_managers WHERE district_id = %s ORDER BY added_at, email",
        (district_id,),
    ).fetchall()
    return tuple(r[0] for r in rows)


def grant_pending_managers(conn: psycopg.Connection, district_id: int) -> list[str]:
    """Grant each pending data manager whom the roster now has as active staff (by email,
    ignoring case), as the operator who added the district; returns their emails. Run in the
    roster load's transaction."""
    rows = conn.execute(
        """DELETE FROM core.pending_managers p USING core.staff sf
           WHERE p.district_id = %s AND sf.district_id = p.district_id
             AND sf.active AND sf.enabled AND lower(sf.email) = lower(p.email)
           RETURNING p.email, p.added_by, sf.staff_id""",
        (district_id,),
    ).fetchall()
    for email, added_by, staff_id in rows:
        granted = conn.execute(
            """INSERT INTO core.data_managers (district_id, staff_id, granted_by)
               VALUES (%s, %s, %s)
               ON CONFLICT (district_id, staff_id) WHERE revoked_at IS NULL DO NOTHING
               RETURNING grant_id""",
            (district_id, staff_id, added_by),
        ).fetchone()
        if granted is not None:
            record_act(
                conn,
                district_id,
                "grant_manager",
                added_by,
                subject_staff_id=staff_id,
                detail={"named_when": "the district was added", "email": email},
            )
    return [r[0] for r in rows]

"""What every part of access shares: the constants, the errors, a staff member (Person) and
the append-only log of acts (`core.access_acts`).

Messages never carry a student value, a password, or an email the caller typed that is not
known to be staff's (an unknown email could be a student's): they name the district instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from schemas.columns import DEMOGRAPHIC_COLUMNS
from tasks.errors import DemographicsError
from tasks.store import get_district

FIELDS: tuple[str, ...] = DEMOGRAPHIC_COLUMNS  # the 10 fields a district may open to teachers
GROUP_ROLE = "demographics_reporting"  # NOLOGIN; USAGE on reporting, SELECT on the view
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

"""Teacher fields: which of the 10 demographic fields a district's teachers see in the view.

None until a data manager opens some; only a data manager may change them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import psycopg

from tasks.access.common import FIELDS, InvalidField, record_act
from tasks.access.managers import active_manager, not_a_manager
from tasks.store import get_district


@dataclass(frozen=True)
class TeacherFields:
    """The fields a district's teachers see, and who changed them last."""

    district_code: str
    fields: tuple[str, ...]
    changed_by: str | None
    changed_at: datetime | None


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
        manager = active_manager(conn, district.code, changed_by)
        if manager is None:
            raise not_a_manager(district.code)
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

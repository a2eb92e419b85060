"""Load a checked roster snapshot as the district's roster, in one transaction.

A snapshot replaces what the district had: records in it are added or updated, records gone
from it become inactive (never deleted: their history stays), and `status=tobedeleted` also
means inactive. It is set-based in the database (no work per record in Python), and writes
only what differs, so a nightly snapshot that changed little costs little.
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl
import psycopg
from psycopg import sql

from schemas.roster import STAFF_ROLES, RosterCounts, RosterResult, SchoolLoss
from tasks.access.managers import grant_pending_managers
from tasks.db import copy_frame
from tasks.errors import DemographicsError
from tasks.progress import SILENT, Progress
from tasks.roster.drop import guard_reason
from tasks.roster.read import RosterSnapshot
from tasks.roster.rules import is_active
from tasks.store import lock_district

ENTITIES = ("schools", "students", "staff", "classes", "enrollments")
# Memory for the load's hash joins and sorts (snapshot against district, by sourced_id): a
# district's keys then hash in memory, or in few batches, instead of many small ones on disk.
LOAD_WORK_MEM = "256MB"
# A load that adds more records than this analyses the table before the next step joins it: the
# statistics would otherwise not know of the district's new records (a first load of millions).
# Its lock, held to commit, makes another district's first load wait at the same step; syncs
# and smaller loads are not held up.
ANALYZE_AFTER = 10_000
_ORG_TYPE = pl.col("type").str.to_lowercase()


class RosterRefused(DemographicsError):
    """The roster cannot be loaded for this district; the message is safe to print."""


# Called in the load's transaction once the roster is loaded: what must commit with it (the
# run that records a roster taken from the drop, an approval's act).
OnLoaded = Callable[[psycopg.Cursor, int, RosterResult], None]


class _Held(Exception):
    """The guard stops the load; raised inside the transaction so nothing of it stays."""

    def __init__(self, reason: str, losses: list[SchoolLoss]):
        super().__init__(reason)
        self.reason, self.losses = reason, losses


def load_roster(
    conn: psycopg.Connection,
    district_code: str,
    snapshot: RosterSnapshot,
    lock_wait_seconds: float = 60.0,
    *,
    guard: float | None = None,
    on_loaded: OnLoaded | None = None,
    progress: Progress = SILENT,
) -> RosterResult:
    """Load a checked snapshot as the district's roster, in one transaction.

    With `guard` (the district's roster limit, a share), a roster that would deactivate more
    than that share of the district's active students, or all of a school's, is not loaded:
    the result says why it is held (`guard_reason`), with the losses by school.
    """
    counts = {name: RosterCounts() for name in ENTITIES}
    if snapshot.errors:
        return RosterResult(district_code, snapshot.issues, counts, loaded=False)
    tables = _tables(snapshot)
    district_row = snapshot.frames["orgs.csv"].filter(_ORG_TYPE == "district")
    sourced_id, name = district_row["sourcedId"][0], district_row["name"][0]
    result = RosterResult(district_code, snapshot.issues, counts, loaded=True)
    try:
        with conn.transaction(), conn.cursor() as cur:
            district_id = _district_id(cur, district_code, sourced_id, name)
            lock_district(cur, district_id, district_code, lock_wait_seconds)
            progress.phase("copy", total=sum(frame.height for frame in tables.values()))
            cur.execute(f"SET LOCAL work_mem = '{LOAD_WORK_MEM}'")
            cur.execute(_TEMP_TABLES)
            for table, frame in tables.items():
                copy_frame(cur, f"r_{table}", frame)
                cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(f"r_{table}")))
                progress.advance(frame.height)
            if guard is not None:
                _check_guard(cur, district_id, guard)
            cur.execute(
                "UPDATE core.districts SET name = %s, active = true, roster_loaded_at = now() "
                "WHERE district_id = %s",
                (name, district_id),
            )
            for entity in ENTITIES:
                progress.phase(entity)
                counts[entity] = _load_entity(cur, district_id, entity)
                # Active now: what the snapshot has active, as all else was made inactive.
                # Told by its frame: a count over the district read every row the load just
                # wrote (4.5 s for a first load of 5M students). This holds because every
                # record of a loaded snapshot is written: a dangling class, school or user
                # reference is an error in rules.py, so the inner joins of _SOURCES drop none
                # (tests/test_roster.py compares the counts with the database's).
                counts[entity].active = int(tables[entity]["active"].sum())
            result.granted = grant_pending_managers(conn, district_id)
            if on_loaded is not None:
                on_loaded(cur, district_id, result)
            progress.phase("commit")
    except _Held as held:
        result.loaded, result.held, result.losses = False, held.reason, held.losses
    return result


def _check_guard(cur: psycopg.Cursor, district_id: int, limit: float) -> None:
    """Raise _Held when the roster in the temporary tables trips the guard."""
    rows = cur.execute(
        """SELECT coalesce(sc.name, '(no school)'), count(*),
                  count(*) FILTER (WHERE r.sourced_id IS NULL OR NOT r.active)
           FROM core.students s
           LEFT JOIN core.schools sc ON sc.school_id = s.school_id
           LEFT JOIN r_students r ON r.sourced_id = s.sourced_id
           WHERE s.district_id = %s AND s.active
           GROUP BY 1 ORDER BY 1""",
        (district_id,),
    ).fetchall()
    losses = [SchoolLoss(school, active, leaving) for school, active, leaving in rows]
    reason = guard_reason(losses, limit)
    if reason is not None:
        raise _Held(reason, losses)


def _district_id(cur: psycopg.Cursor, district_code: str, sourced_id: str, name: str) -> int:
    """The district's id, created with its settings on its first roster unless an operator
    added it; a roster of another district (its district org has another sourcedId than the
    one its first roster had) is refused."""
    row = cur.execute(
        "SELECT district_id, sourced_id FROM core.districts WHERE code = %s",
        (district_code,),
    ).fetchone()
    if row is None:
        row = cur.execute(
            """INSERT INTO core.districts (code, sourced_id, name) VALUES (%s, %s, %s)
               RETURNING district_id, sourced_id""",
            (district_code, sourced_id, name),
        ).fetchone()
        assert row is not None
        cur.execute("INSERT INTO core.district_settings (district_id) VALUES (%s)", (row[0],))
    district_id, known_source = row
    if known_source is None:  # added by an operator: its first roster says which org it is
        cur.execute(
            "UPDATE core.districts SET sourced_id = %s WHERE district_id = %s",
            (sourced_id, district_id),
        )
    elif known_source != sourced_id:
        raise RosterRefused(
            f"district {district_code} was loaded from a roster whose district org has "
            "another sourcedId; this roster belongs to a different district, so nothing "
            "was loaded"
        )
    return int(district_id)


def _load_entity(cur: psycopg.Cursor, district_id: int, entity: str) -> RosterCounts:
    """Load one kind of record from its temporary table (see `_statements`): what is new is
    added, what differs updated, what is gone made inactive; nothing else is written."""
    counts = RosterCounts()
    target = sql.Identifier("core", entity)
    statements = _statements(entity)
    cur.execute(statements["diff"], {"d": district_id})
    cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(f"d_{entity}")))
    # Gone from the snapshot: inactive (never deleted).
    counts.deactivated = cur.execute(statements["deactivate"]).rowcount
    counts.updated = cur.execute(statements["update"]).rowcount
    counts.added = cur.execute(statements["insert"], {"d": district_id}).rowcount
    if counts.added > ANALYZE_AFTER:
        cur.execute(sql.SQL("ANALYZE {}").format(target))
    if entity == "staff":
        _load_staff_schools(cur, district_id)
    return counts


def _tables(snapshot: RosterSnapshot) -> dict[str, pl.DataFrame]:
    """The checked files, shaped as the temporary tables the load reads."""
    frames = snapshot.frames
    orgs = frames["orgs.csv"]
    schools = orgs.filter(_ORG_TYPE == "school").select(
        pl.col("sourcedId").alias("sourced_id"),
        "name",
        "identifier",
        is_active().alias("active"),
    )
    district_id = orgs.filter(_ORG_TYPE == "district")["sourcedId"][0]
    classes = frames["classes.csv"].select(
        pl.col("sourcedId").alias("sourced_id"),
        "title",
        pl.col("schoolSourcedId").alias("school_sourced_id"),
        is_active().alias("active"),
    )
    enrollments = (
        frames["enrollments.csv"]
        .filter(pl.col("role").str.to_lowercase().is_in(["student", "teacher"]))
        .select(
            pl.col("sourcedId").alias("sourced_id"),
            pl.col("classSourcedId").alias("class_sourced_id"),
            pl.col("userSourcedId").alias("user_sourced_id"),
            pl.col("role").str.to_lowercase().alias("role"),
            is_active().alias("active"),
        )
    )
    return {
        "schools": schools,
        **_people(frames["users.csv"], schools["sourced_id"].implode(), district_id),
        "classes": classes,
        "enrollments": enrollments,
    }


def _people(
    users: pl.DataFrame, school_ids: pl.Series, district_id: str
) -> dict[str, pl.DataFrame]:
    """users.csv as the students, staff and staff-school tables. A student's school is the
    first of their orgs that is a school; a staff member listing the district is district-wide."""
    users = users.with_columns(
        pl.col("orgSourcedIds")
        .str.split(",")
        .list.eval(pl.element().str.strip_chars())
        .alias("_orgs"),
        pl.col("role").str.to_lowercase().alias("_role"),
    )
    first_school = pl.col("_orgs").list.eval(
        pl.element().filter(pl.element().is_in(school_ids.first()))
    )
    students = users.filter(pl.col("_role") == "student").select(
        pl.col("sourcedId").alias("sourced_id"),
        pl.col("identifier").alias("ssid"),
        "email",
        pl.col("givenName").alias("given_name"),
        pl.col("familyName").alias("family_name"),
        first_school.list.first().alias("school_sourced_id"),
        is_active().alias("active"),
    )
    staff_rows = users.filter(pl.col("_role").is_in(STAFF_ROLES))
    staff = staff_rows.select(
        pl.col("sourcedId").alias("sourced_id"),
        pl.col("_role").alias("role"),
        "email",
        pl.col("givenName").alias("given_name"),
        pl.col("familyName").alias("family_name"),
        "identifier",
        pl.col("_orgs").list.contains(district_id).alias("district_wide"),
        (pl.col("enabledUser").str.to_lowercase().fill_null("true") == "true").alias("enabled"),
        is_active().alias("active"),
    )
    staff_schools = (
        staff_rows.select(pl.col("sourcedId").alias("sourced_id"), first_school.alias("school"))
        .explode("school")
        .drop_nulls("school")
        .unique()
    )
    return {"students": students, "staff": staff, "staff_schools": staff_schools}


_TEMP_TABLES = """
CREATE TEMP TABLE r_schools (sourced_id text, name text, identifier text, active boolean)
    ON COMMIT DROP;
CREATE TEMP TABLE r_students (sourced_id text, ssid text, email text, given_name text,
    family_name text, school_sourced_id text, active boolean) ON COMMIT DROP;
CREATE TEMP TABLE r_staff (sourced_id text, role text, email text, given_name text,
    family_name text, identifier text, district_wide boolean, enabled boolean, active boolean)
    ON COMMIT DROP;
CREATE TEMP TABLE r_staff_schools (sourced_id text, school text) ON COMMIT DROP;
CREATE TEMP TABLE r_classes (sourced_id text, title text, school_sourced_id text,
    active boolean) ON COMMIT DROP;
CREATE TEMP TABLE r_enrollments (sourced_id text, class_sourced_id text,
    user_sourced_id text, role text, active boolean) ON COMMIT DROP;
"""

# Each entity: its columns besides district_id and sourced_id, and the query that gives them
# (by sourced_id) from its temporary table, with the roster's references resolved to ids.
_COLUMNS = {
    "schools": ("name", "identifier", "active"),
    "students": ("ssid", "email", "given_name", "family_name", "school_id", "active"),
    "staff": (
        "role",
        "email",
        "given_name",
        "family_name",
        "identifier",
        "district_wide",
        "enabled",
        "active",
    ),
    "classes": ("title", "school_id", "active"),
    "enrollments": ("class_id", "role", "student_id", "staff_id", "active"),
}
_SOURCES = {
    "schools": "SELECT r.sourced_id, r.name, r.identifier, r.active FROM r_schools r",
    "students": """
        SELECT r.sourced_id, r.ssid, r.email, r.given_name, r.family_name, s.school_id, r.active
        FROM r_students r
        LEFT JOIN core.schools s
               ON s.district_id = %(d)s AND s.sourced_id = r.school_sourced_id""",
    "staff": """
        SELECT r.sourced_id, r.role, r.email, r.given_name, r.family_name, r.identifier,
               r.district_wide, r.enabled, r.active
        FROM r_staff r""",
    "classes": """
        SELECT r.sourced_id, r.title, s.school_id, r.active
        FROM r_classes r
        JOIN core.schools s ON s.district_id = %(d)s AND s.sourced_id = r.school_sourced_id""",
    "enrollments": """
        SELECT r.sourced_id, c.class_id, r.role,
               CASE WHEN r.role = 'student' THEN st.student_id END AS student_id,
               CASE WHEN r.role = 'teacher' THEN sf.staff_id END AS staff_id, r.active
        FROM r_enrollments r
        JOIN core.classes c ON c.district_id = %(d)s AND c.sourced_id = r.class_sourced_id
        LEFT JOIN core.students st
               ON st.district_id = %(d)s AND st.sourced_id = r.user_sourced_id
        LEFT JOIN core.staff sf ON sf.district_id = %(d)s AND sf.sourced_id = r.user_sourced_id""",
}


_KEYS = {
    "schools": "school_id",
    "students": "student_id",
    "staff": "staff_id",
    "classes": "class_id",
    "enrollments": "enrollment_id",
}


def _statements(entity: str) -> dict[str, sql.Composed]:
    """The load of one entity in four set-based statements, by name.

    `diff` joins the snapshot to the district's records once (a hash join, linear) and keeps
    only what must be written: records gone (still active), new, or whose values differ. The
    others then work on that small table by primary key, so an unchanged record is neither
    rewritten nor locked, and a snapshot that is almost yesterday's writes almost nothing.
    New records are inserted in sourced_id order: the unique index on (district_id,
    sourced_id) then grows at its end rather than at random pages, which keeps a first load
    of millions linear once that index outgrows the server's buffers.
    """
    names = {
        "target": sql.Identifier("core", entity),
        "diff": sql.Identifier(f"d_{entity}"),
        "key": sql.Identifier(_KEYS[entity]),
        "source": sql.SQL(_SOURCES[entity]),
        "columns": sql.SQL(", ").join(map(sql.Identifier, _COLUMNS[entity])),
        "mine": sql.SQL(", ").join(
            sql.SQL("t.{}").format(sql.Identifier(c)) for c in _COLUMNS[entity]
        ),
        "theirs": sql.SQL(", ").join(
            sql.SQL("r.{}").format(sql.Identifier(c)) for c in _COLUMNS[entity]
        ),
        "new": sql.SQL(", ").join(
            sql.SQL("d.{}").format(sql.Identifier(c)) for c in _COLUMNS[entity]
        ),
    }
    text = {
        "diff": """CREATE TEMP TABLE {diff} ON COMMIT DROP AS
            SELECT t.{key} AS _id, r.*
            FROM ({source}) r
            FULL JOIN (SELECT * FROM {target} WHERE district_id = %(d)s) t
                   ON t.sourced_id = r.sourced_id
            WHERE CASE WHEN r.sourced_id IS NULL THEN t.active
                       WHEN t.sourced_id IS NULL THEN true
                       ELSE ({mine}) IS DISTINCT FROM ({theirs}) END""",
        "deactivate": """UPDATE {target} t SET active = false, updated_at = now()
            FROM {diff} d WHERE d.sourced_id IS NULL AND t.{key} = d._id""",
        "update": """UPDATE {target} t SET ({columns}) = ({new}), updated_at = now()
            FROM {diff} d
            WHERE d._id IS NOT NULL AND d.sourced_id IS NOT NULL AND t.{key} = d._id""",
        "insert": """INSERT INTO {target} (district_id, sourced_id, {columns})
            SELECT %(d)s, d.sourced_id, {new} FROM {diff} d
            WHERE d._id IS NULL ORDER BY d.sourced_id""",
    }
    return {name: sql.SQL(statement).format(**names) for name, statement in text.items()}


def _load_staff_schools(cur: psycopg.Cursor, district_id: int) -> None:
    cur.execute(
        """DELETE FROM core.staff_schools ss USING core.staff sf
           WHERE ss.staff_id = sf.staff_id AND sf.district_id = %(d)s
             AND NOT EXISTS (
                 SELECT 1 FROM r_staff_schools r JOIN core.schools s
                   ON s.district_id = %(d)s AND s.sourced_id = r.school
                 WHERE r.sourced_id = sf.sourced_id AND s.school_id = ss.school_id)""",
        {"d": district_id},
    )
    cur.execute(
        """INSERT INTO core.staff_schools (staff_id, school_id)
           SELECT sf.staff_id, s.school_id
           FROM r_staff_schools r
           JOIN core.staff sf ON sf.district_id = %(d)s AND sf.sourced_id = r.sourced_id
           JOIN core.schools s ON s.district_id = %(d)s AND s.sourced_id = r.school
           ON CONFLICT DO NOTHING""",
        {"d": district_id},
    )

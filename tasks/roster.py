"""Read, check and load a district's OneRoster 1.1 CSV roster (a full snapshot).

A snapshot replaces what the district had: records in it are added or updated, records gone
from it become inactive (never deleted: their history stays), and `status=tobedeleted` also
means inactive. A roster with any error loads nothing: a half-loaded snapshot would deactivate
people who are still there. Messages never quote a value; the row and column say where.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import psycopg

from schemas.issues import Severity
from schemas.roster import (
    BOOLEANS,
    ENROLLMENT_ROLES,
    ORG_TYPES,
    REQUIRED_VALUES,
    ROSTER_FILES,
    STAFF_ROLES,
    STATUSES,
    USER_ROLES,
    RosterCounts,
    RosterIssue,
    RosterResult,
)
from tasks.db import copy_frame
from tasks.errors import DemographicsError
from tasks.read import FIELDS, ROW, column_key, read_demographics
from tasks.store import lock_district

SSID_PATTERN = r"^[0-9]{10}$"


class RosterRefused(DemographicsError):
    """The roster cannot be loaded for this district; the message is safe to print."""


@dataclass
class RosterSnapshot:
    """The four files, checked: one frame per file with OneRoster column names and `__row`."""

    frames: dict[str, pl.DataFrame] = field(default_factory=dict)
    issues: list[RosterIssue] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(1 for i in self.issues if i.severity == "error")


def read_roster(directory: Path) -> RosterSnapshot:
    """Read and check the four files of a roster folder. Never raises for any content."""
    snapshot = RosterSnapshot()
    for name in ROSTER_FILES:
        frame = _read_file(directory / name, name, snapshot.issues)
        if frame is not None:
            snapshot.frames[name] = frame
    if len(snapshot.frames) == len(ROSTER_FILES):
        _check(snapshot)
    return snapshot


def _read_file(path: Path, name: str, issues: list[RosterIssue]) -> pl.DataFrame | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        issues.append(
            RosterIssue(name, "error", "missing_file", f"{name} is missing from the roster folder")
        )
        return None
    except OSError as exc:
        issues.append(
            RosterIssue(name, "error", "unreadable_file", f"cannot read {name}: {exc.strerror}")
        )
        return None
    parsed = read_demographics(data, name)
    for issue in parsed.issues:
        issues.append(
            RosterIssue(
                name,
                "error" if issue.severity is Severity.ERROR else "warning",
                issue.code.value,
                issue.message,
                row=issue.row,
            )
        )
    if parsed.stopped:
        return None
    required, optional = ROSTER_FILES[name]
    wanted = {c.casefold(): c for c in (*required, *optional)}
    positions: dict[str, int] = {}
    for index, raw in enumerate(parsed.header):
        canonical = wanted.get(raw.strip().casefold())
        if canonical is None:
            continue
        if canonical in positions:
            issues.append(
                RosterIssue(
                    name,
                    "error",
                    "duplicate_column",
                    f"the column {canonical} appears twice "
                    f"(columns {positions[canonical] + 1} and {index + 1})",
                    column=canonical,
                )
            )
            return None
        positions[canonical] = index
    missing = [c for c in required if c not in positions]
    if missing:
        issues.append(
            RosterIssue(
                name,
                "error",
                "missing_column",
                f"{name} has no {', '.join(missing)} column; a OneRoster 1.1 {name} needs "
                f"{', '.join(required)}",
            )
        )
        return None
    records = parsed.records
    frame = records.select(
        ROW,
        FIELDS,
        *(
            pl.col(column_key(positions[c])).alias(c)
            if c in positions
            else pl.lit(None, dtype=pl.String).alias(c)
            for c in (*required, *optional)
        ),
    )
    width = len(parsed.header)
    bad = frame.filter(pl.col(FIELDS) != width)
    for row, count in bad.select(ROW, FIELDS).iter_rows():
        issues.append(
            RosterIssue(
                name,
                "error",
                "wrong_field_count",
                f"this row has {count} fields but the header has {width}",
                row=row,
            )
        )
    return frame.filter(pl.col(FIELDS) == width).drop(FIELDS)


def _add(
    issues: list[RosterIssue],
    frame: pl.DataFrame,
    mask: pl.Expr,
    file: str,
    code: str,
    message: str,
    column: str | None = None,
    severity: str = "error",
) -> None:
    for row in frame.filter(mask)[ROW].to_list():
        issues.append(RosterIssue(file, severity, code, message, row=row, column=column))  # type: ignore[arg-type]


def _check(snapshot: RosterSnapshot) -> None:
    issues = snapshot.issues
    status = pl.col("status").str.to_lowercase()
    for name, frame in snapshot.frames.items():
        for column in REQUIRED_VALUES[name]:
            _add(
                issues,
                frame,
                pl.col(column).is_null(),
                name,
                "missing_value",
                f"{column} is empty",
                column,
            )
        _add(
            issues,
            frame,
            pl.col("sourcedId").is_not_null()
            & pl.col("sourcedId").is_duplicated()
            & (pl.col(ROW) != pl.col(ROW).min().over("sourcedId")),
            name,
            "duplicate_id",
            "this sourcedId is already used by an earlier row of the file",
            "sourcedId",
        )
        _add(
            issues,
            frame,
            pl.col("status").is_not_null() & ~status.is_in(STATUSES),
            name,
            "invalid_value",
            "status must be empty, active or tobedeleted",
            "status",
        )

    orgs = snapshot.frames["orgs.csv"]
    org_type = pl.col("type").str.to_lowercase()
    _add(
        issues,
        orgs,
        pl.col("type").is_not_null() & ~org_type.is_in(ORG_TYPES),
        "orgs.csv",
        "invalid_value",
        f"type must be one of {', '.join(ORG_TYPES)}",
        "type",
    )
    districts = orgs.filter(org_type == "district")
    if districts.height != 1:
        issues.append(
            RosterIssue(
                "orgs.csv",
                "error",
                "one_district",
                "orgs.csv must hold exactly one org of type district (the district being "
                f"loaded); it holds {districts.height}",
                column="type",
            )
        )
    schools = set(orgs.filter(org_type == "school")["sourcedId"].drop_nulls().to_list())
    org_ids = set(orgs["sourcedId"].drop_nulls().to_list())

    users = snapshot.frames["users.csv"]
    role = pl.col("role").str.to_lowercase()
    _add(
        issues,
        users,
        pl.col("role").is_not_null() & ~role.is_in(USER_ROLES),
        "users.csv",
        "invalid_value",
        f"role must be one of {', '.join(USER_ROLES)}",
        "role",
    )
    _add(
        issues,
        users,
        pl.col("enabledUser").is_not_null()
        & ~pl.col("enabledUser").str.to_lowercase().is_in(BOOLEANS),
        "users.csv",
        "invalid_value",
        "enabledUser must be true or false",
        "enabledUser",
    )
    org_lists = users.select(
        ROW, pl.col("orgSourcedIds").str.split(",").list.eval(pl.element().str.strip_chars())
    ).explode("orgSourcedIds")
    unknown = org_lists.filter(
        pl.col("orgSourcedIds").is_not_null() & ~pl.col("orgSourcedIds").is_in(list(org_ids))
    )[ROW].unique(maintain_order=True)
    _add(
        issues,
        users,
        pl.col(ROW).is_in(unknown.implode()),
        "users.csv",
        "unknown_reference",
        "orgSourcedIds names an org that is not in orgs.csv",
        "orgSourcedIds",
    )
    students = users.filter(role == "student")
    active = _active()
    _add(
        issues,
        students,
        pl.col("identifier").is_null(),
        "users.csv",
        "no_ssid",
        "this student has no identifier (SSID): a demographics row can match them only by email",
        "identifier",
        "warning",
    )
    _add(
        issues,
        students,
        pl.col("identifier").is_not_null() & ~pl.col("identifier").str.contains(SSID_PATTERN),
        "users.csv",
        "invalid_ssid",
        "this student's identifier is not a 10-digit SSID: a demographics row can match them "
        "only by email",
        "identifier",
        "warning",
    )
    ssid_rows = students.filter(active & pl.col("identifier").is_not_null())
    _add(
        issues,
        ssid_rows,
        pl.col("identifier").is_duplicated(),
        "users.csv",
        "duplicate_ssid",
        "two active students have the same identifier (SSID); each SSID must belong to one student",
        "identifier",
    )

    classes = snapshot.frames["classes.csv"]
    _add(
        issues,
        classes,
        pl.col("schoolSourcedId").is_not_null() & ~pl.col("schoolSourcedId").is_in(list(schools)),
        "classes.csv",
        "unknown_reference",
        "schoolSourcedId is not a school in orgs.csv",
        "schoolSourcedId",
    )

    enrollments = snapshot.frames["enrollments.csv"]
    enrollment_role = pl.col("role").str.to_lowercase()
    _add(
        issues,
        enrollments,
        pl.col("role").is_not_null() & ~enrollment_role.is_in(ENROLLMENT_ROLES),
        "enrollments.csv",
        "invalid_value",
        f"role must be one of {', '.join(ENROLLMENT_ROLES)}",
        "role",
    )
    _add(
        issues,
        enrollments,
        pl.col("classSourcedId").is_not_null()
        & ~pl.col("classSourcedId").is_in(classes["sourcedId"].drop_nulls().implode()),
        "enrollments.csv",
        "unknown_reference",
        "classSourcedId is not a class in classes.csv",
        "classSourcedId",
    )
    user_roles = users.select(
        pl.col("sourcedId").alias("userSourcedId"), role.alias("_user_role")
    ).unique("userSourcedId", keep="first")
    joined = enrollments.join(user_roles, on="userSourcedId", how="left")
    _add(
        issues,
        joined,
        pl.col("userSourcedId").is_not_null() & pl.col("_user_role").is_null(),
        "enrollments.csv",
        "unknown_reference",
        "userSourcedId is not a user in users.csv",
        "userSourcedId",
    )
    _add(
        issues,
        joined,
        (enrollment_role == "student")
        & pl.col("_user_role").is_not_null()
        & (pl.col("_user_role") != "student"),
        "enrollments.csv",
        "role_mismatch",
        "enrolled as a student, but the user's role in users.csv is not student",
        "role",
    )
    _add(
        issues,
        joined,
        (enrollment_role == "teacher")
        & pl.col("_user_role").is_not_null()
        & ~pl.col("_user_role").is_in(STAFF_ROLES),
        "enrollments.csv",
        "role_mismatch",
        "enrolled as a teacher, but the user's role in users.csv is not a staff role",
        "role",
    )
    issues.sort(key=lambda i: (list(ROSTER_FILES).index(i.file), i.row or 0, i.column or ""))


# --- loading -----------------------------------------------------------------------------

ENTITIES = ("schools", "students", "staff", "classes", "enrollments")


def _active() -> pl.Expr:
    return pl.col("status").is_null() | (pl.col("status").str.to_lowercase() != "tobedeleted")


def _tables(snapshot: RosterSnapshot) -> dict[str, pl.DataFrame]:
    """The checked files, shaped as the temporary tables the load reads."""
    orgs = snapshot.frames["orgs.csv"]
    org_type = pl.col("type").str.to_lowercase()
    schools = orgs.filter(org_type == "school").select(
        pl.col("sourcedId").alias("sourced_id"),
        "name",
        "identifier",
        _active().alias("active"),
    )
    school_ids = schools["sourced_id"].implode()
    district_id = orgs.filter(org_type == "district")["sourcedId"][0]
    users = snapshot.frames["users.csv"].with_columns(
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
        _active().alias("active"),
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
        _active().alias("active"),
    )
    staff_schools = (
        staff_rows.select(pl.col("sourcedId").alias("sourced_id"), first_school.alias("school"))
        .explode("school")
        .drop_nulls("school")
        .unique()
    )
    classes_file = snapshot.frames["classes.csv"]
    classes = classes_file.select(
        pl.col("sourcedId").alias("sourced_id"),
        "title",
        pl.col("schoolSourcedId").alias("school_sourced_id"),
        _active().alias("active"),
    )
    enrollments_file = snapshot.frames["enrollments.csv"]
    enrollments = enrollments_file.filter(
        pl.col("role").str.to_lowercase().is_in(["student", "teacher"])
    ).select(
        pl.col("sourcedId").alias("sourced_id"),
        pl.col("classSourcedId").alias("class_sourced_id"),
        pl.col("userSourcedId").alias("user_sourced_id"),
        pl.col("role").str.to_lowercase().alias("role"),
        _active().alias("active"),
    )
    return {
        "schools": schools,
        "students": students,
        "staff": staff,
        "staff_schools": staff_schools,
        "classes": classes,
        "enrollments": enrollments,
    }


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

# Each upsert: (entity, INSERT ... ON CONFLICT statement selecting from the temp table).
# Only rows whose values differ are rewritten, so reloading the same snapshot writes nothing.
_UPSERTS = {
    "schools": """
        INSERT INTO core.schools AS t (district_id, sourced_id, name, identifier, active)
        SELECT %(d)s, r.sourced_id, r.name, r.identifier, r.active FROM r_schools r
        ON CONFLICT (district_id, sourced_id) DO UPDATE
        SET name = excluded.name, identifier = excluded.identifier, active = excluded.active,
            updated_at = now()
        WHERE (t.name, t.identifier, t.active)
              IS DISTINCT FROM (excluded.name, excluded.identifier, excluded.active)
        RETURNING (xmax = 0) AS added""",
    "students": """
        INSERT INTO core.students AS t (district_id, sourced_id, ssid, email, given_name,
                                        family_name, school_id, active)
        SELECT %(d)s, r.sourced_id, r.ssid, r.email, r.given_name, r.family_name,
               s.school_id, r.active
        FROM r_students r
        LEFT JOIN core.schools s ON s.district_id = %(d)s AND s.sourced_id = r.school_sourced_id
        ON CONFLICT (district_id, sourced_id) DO UPDATE
        SET ssid = excluded.ssid, email = excluded.email, given_name = excluded.given_name,
            family_name = excluded.family_name, school_id = excluded.school_id,
            active = excluded.active, updated_at = now()
        WHERE (t.ssid, t.email, t.given_name, t.family_name, t.school_id, t.active)
              IS DISTINCT FROM (excluded.ssid, excluded.email, excluded.given_name,
                                excluded.family_name, excluded.school_id, excluded.active)
        RETURNING (xmax = 0) AS added""",
    "staff": """
        INSERT INTO core.staff AS t (district_id, sourced_id, role, email, given_name,
                                     family_name, identifier, district_wide, enabled, active)
        SELECT %(d)s, r.sourced_id, r.role, r.email, r.given_name, r.family_name,
               r.identifier, r.district_wide, r.enabled, r.active
        FROM r_staff r
        ON CONFLICT (district_id, sourced_id) DO UPDATE
        SET role = excluded.role, email = excluded.email, given_name = excluded.given_name,
            family_name = excluded.family_name, identifier = excluded.identifier,
            district_wide = excluded.district_wide, enabled = excluded.enabled,
            active = excluded.active, updated_at = now()
        WHERE (t.role, t.email, t.given_name, t.family_name, t.identifier, t.district_wide,
               t.enabled, t.active)
              IS DISTINCT FROM (excluded.role, excluded.email, excluded.given_name,
                                excluded.family_name, excluded.identifier,
                                excluded.district_wide, excluded.enabled, excluded.active)
        RETURNING (xmax = 0) AS added""",
    "classes": """
        INSERT INTO core.classes AS t (district_id, sourced_id, title, school_id, active)
        SELECT %(d)s, r.sourced_id, r.title, s.school_id, r.active
        FROM r_classes r
        JOIN core.schools s ON s.district_id = %(d)s AND s.sourced_id = r.school_sourced_id
        ON CONFLICT (district_id, sourced_id) DO UPDATE
        SET title = excluded.title, school_id = excluded.school_id, active = excluded.active,
            updated_at = now()
        WHERE (t.title, t.school_id, t.active)
              IS DISTINCT FROM (excluded.title, excluded.school_id, excluded.active)
        RETURNING (xmax = 0) AS added""",
    "enrollments": """
        INSERT INTO core.enrollments AS t (district_id, sourced_id, class_id, role, student_id,
                                           staff_id, active)
        SELECT %(d)s, r.sourced_id, c.class_id, r.role,
               CASE WHEN r.role = 'student' THEN st.student_id END,
               CASE WHEN r.role = 'teacher' THEN sf.staff_id END, r.active
        FROM r_enrollments r
        JOIN core.classes c ON c.district_id = %(d)s AND c.sourced_id = r.class_sourced_id
        LEFT JOIN core.students st
               ON st.district_id = %(d)s AND st.sourced_id = r.user_sourced_id
        LEFT JOIN core.staff sf ON sf.district_id = %(d)s AND sf.sourced_id = r.user_sourced_id
        ON CONFLICT (district_id, sourced_id) DO UPDATE
        SET class_id = excluded.class_id, role = excluded.role,
            student_id = excluded.student_id, staff_id = excluded.staff_id,
            active = excluded.active, updated_at = now()
        WHERE (t.class_id, t.role, t.student_id, t.staff_id, t.active)
              IS DISTINCT FROM (excluded.class_id, excluded.role, excluded.student_id,
                                excluded.staff_id, excluded.active)
        RETURNING (xmax = 0) AS added""",
}
_TABLE = {
    "schools": "core.schools",
    "students": "core.students",
    "staff": "core.staff",
    "classes": "core.classes",
    "enrollments": "core.enrollments",
}


def load_roster(
    conn: psycopg.Connection,
    district_code: str,
    snapshot: RosterSnapshot,
    lock_wait_seconds: float = 60.0,
) -> RosterResult:
    """Load a checked snapshot as the district's roster, in one transaction."""
    counts = {name: RosterCounts() for name in ENTITIES}
    if snapshot.errors:
        return RosterResult(district_code, snapshot.issues, counts, loaded=False)
    tables = _tables(snapshot)
    district_row = snapshot.frames["orgs.csv"].filter(
        pl.col("type").str.to_lowercase() == "district"
    )
    sourced_id, name = district_row["sourcedId"][0], district_row["name"][0]
    with conn.transaction(), conn.cursor() as cur:
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
        if known_source != sourced_id:
            raise RosterRefused(
                f"district {district_code} was loaded from a roster whose district org has "
                "another sourcedId; this roster belongs to a different district, so nothing "
                "was loaded"
            )
        lock_district(cur, district_id, district_code, lock_wait_seconds)
        cur.execute(
            "UPDATE core.districts SET name = %s, active = true, roster_loaded_at = now() "
            "WHERE district_id = %s",
            (name, district_id),
        )
        cur.execute(_TEMP_TABLES)
        for table, frame in tables.items():
            copy_frame(cur, f"r_{table}", frame)
        for entity in ENTITIES:
            target = _TABLE[entity]
            # Gone from the snapshot: inactive (never deleted).
            result = cur.execute(
                f"""WITH gone AS (
                        UPDATE {target} t SET active = false, updated_at = now()
                        WHERE t.district_id = %(d)s AND t.active
                          AND NOT EXISTS (SELECT 1 FROM r_{entity} r
                                          WHERE r.sourced_id = t.sourced_id)
                        RETURNING 1)
                    SELECT count(*) FROM gone""",
                {"d": district_id},
            ).fetchone()
            counts[entity].deactivated = result[0] if result else 0
            result = cur.execute(
                f"""WITH up AS ({_UPSERTS[entity]})
                    SELECT count(*) FILTER (WHERE added), count(*) FILTER (WHERE NOT added)
                    FROM up""",
                {"d": district_id},
            ).fetchone()
            assert result is not None
            counts[entity].added, counts[entity].updated = result
            if entity == "staff":
                _load_staff_schools(cur, district_id)
            active = cur.execute(
                f"SELECT count(*) FROM {target} WHERE district_id = %s AND active",
                (district_id,),
            ).fetchone()
            counts[entity].active = active[0] if active else 0
    return RosterResult(district_code, snapshot.issues, counts, loaded=True)


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

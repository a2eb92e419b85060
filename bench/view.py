"""Benchmark: querying the reporting view for a large district, per caller, against the floor.

    .venv/bin/python bench/view.py [--students 1000000] [--runs 5] [--fresh]

Why: `reporting.student_demographics` (sql/900_reporting_always.sql) must not let a caller's
condition tell anything of rows out of their scope (EXPLAIN ANALYZE). A school admin's and a
teacher's scoped, masked rows are a MATERIALIZED CTE no condition of theirs reaches: each of
their queries first reads their whole scope. A district admin's rows are read from the base
tables with their conditions pushed down (the district fixed first, every column NULL out of
scope, an expression no index or statistic has), so their lookup of one SSID need not read the
district.
This measures what each kind of caller pays against the base tables.

Set-up: the bench district of bench/sync.py (its cached database and folder, same --fresh;
the schema is upgraded), then the district admin is made a data manager, teachers are given
two fields (gender, race), and SQL logins are created for a district admin, a school admin and
a teacher. At the end the logins are revoked, and the teacher fields and the manager grant are
put back as they were, so a re-run starts clean (the access acts stay, as history).

Each caller connects as its own login (a fresh connection, autocommit) and runs, 1 warm-up
then --runs timed, each of: `count(*)`; the row of one SSID in its scope; a count per school
and gender (GROUP BY); and a full export (`COPY (SELECT * ...) TO STDOUT`, read and discarded).
The floor: the same four queries as the application's (super)user, straight on the base tables
(core.students JOIN core.student_demographics, with core.schools for the school), restricted to
the same students by a plain join (the district; the admin's schools; the teacher's classes).
Prints, per caller and query: rows in scope, the view's and the floor's median (min-max) over
--runs (at least 3), and the ratio of the medians. On a shared machine the figures are noisy:
compare the ranges, not one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import psycopg  # noqa: E402
from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: E402
from sync import DISTRICT, setup  # noqa: E402

from schemas.columns import DEMOGRAPHIC_COLUMNS  # noqa: E402
from tasks.access import (  # noqa: E402
    create_sql_login,
    grant_manager,
    revoke_manager,
    revoke_sql_login,
    set_teacher_fields,
    teacher_fields,
)
from tasks.db import connect  # noqa: E402

BY = "bench-view"
TEACHER_FIELDS = ("gender", "race")
QUERIES = ("count", "ssid", "group", "export")

VIEW = {
    "count": "SELECT count(*) FROM reporting.student_demographics",
    "ssid": "SELECT * FROM reporting.student_demographics WHERE ssid = %(ssid)s",
    "group": """SELECT school_sourced_id, gender, count(*)
                FROM reporting.student_demographics GROUP BY 1, 2""",
    "export": "COPY (SELECT * FROM reporting.student_demographics) TO STDOUT",
}

# The floor: the same rows straight from the base tables; {scope} restricts st (students).
SCOPES = {
    "district admin": "TRUE",
    "school admin": """st.school_id IN (SELECT school_id FROM core.staff_schools
                                        WHERE staff_id = %(staff)s)""",
    "teacher": """st.student_id IN (
        SELECT se.student_id FROM core.enrollments te
        JOIN core.enrollments se ON se.class_id = te.class_id AND se.role = 'student' AND se.active
        WHERE te.staff_id = %(staff)s AND te.role = 'teacher' AND te.active)""",
}
BASE = """FROM core.students st JOIN core.student_demographics v USING (student_id)
          WHERE st.district_id = %(district)s AND st.active AND {scope}"""
BASE_SCHOOL = """FROM core.students st JOIN core.student_demographics v USING (student_id)
                 LEFT JOIN core.schools sc ON sc.school_id = st.school_id
                 WHERE st.district_id = %(district)s AND st.active AND {scope}"""
EXPORT_COLUMNS = ", ".join(
    [
        "%(code)s::text",
        "sc.sourced_id",
        "st.sourced_id",
        "st.ssid",
        "st.email",
        "st.given_name",
        "st.family_name",
        *(f"v.{c}" for c in DEMOGRAPHIC_COLUMNS),
        "v.updated_at",
    ]
)
FLOOR = {
    "count": "SELECT count(*) " + BASE,
    "ssid": "SELECT st.ssid, v.* " + BASE + " AND st.ssid = %(ssid)s",
    "group": "SELECT sc.sourced_id, v.gender, count(*) " + BASE_SCHOOL + " GROUP BY 1, 2",
    "export": f"COPY (SELECT {EXPORT_COLUMNS} {BASE_SCHOOL}) TO STDOUT",
}
FIRST_SSID = "SELECT min(st.ssid) " + BASE


@dataclass(frozen=True)
class Caller:
    label: str
    email: str
    role: str
    password: str
    staff_id: int


@dataclass(frozen=True)
class Timing:
    median: float
    low: float
    high: float
    result: int  # count; rows returned; groups; bytes exported


def timed(conn: psycopg.Connection, query: str, params: dict[str, object]) -> tuple[float, int]:
    """Seconds for one query, its rows fetched (or its COPY read), and what it returned."""
    started = time.perf_counter()
    with conn.cursor() as cur:
        if query.startswith("COPY"):
            size = 0
            with cur.copy(query, params) as copy:
                for block in copy:
                    size += len(block)
            result = size
        else:
            cur.execute(query, params)
            rows = cur.fetchall()
            result = int(rows[0][0]) if query.startswith("SELECT count(*)") else len(rows)
    return time.perf_counter() - started, result


def measure(
    url: str, queries: dict[str, str], params: dict[str, object], runs: int
) -> dict[str, Timing]:
    """A fresh connection; per query 1 warm-up, then the median (and range) of `runs`."""
    out: dict[str, Timing] = {}
    with connect(url, autocommit=True) as conn:
        for name in QUERIES:
            timed(conn, queries[name], params)
            samples = [timed(conn, queries[name], params) for _ in range(runs)]
            seconds = [s for s, _ in samples]
            results = {r for _, r in samples}
            assert len(results) == 1, (name, results)
            out[name] = Timing(statistics.median(seconds), min(seconds), max(seconds), *results)
    return out


def login_url(url: str, role: str, password: str) -> str:
    info = conninfo_to_dict(url)
    info.update(user=role, password=password)
    return make_conninfo(**info)


def pick_staff(conn: psycopg.Connection, district_id: int) -> dict[str, str]:
    """The email of the first district admin, school admin and teacher of the roster."""
    picked = {}
    for label, role, wide in (
        ("district admin", "administrator", True),
        ("school admin", "administrator", False),
        ("teacher", "teacher", False),
    ):
        row = conn.execute(
            """SELECT email FROM core.staff
               WHERE district_id = %s AND role = %s AND district_wide = %s
                 AND active AND enabled AND email IS NOT NULL
               ORDER BY staff_id LIMIT 1""",
            (district_id, role, wide),
        ).fetchone()
        assert row is not None, f"no {label} in the bench roster"
        picked[label] = str(row[0])
    return picked


def vacuum(url: str) -> None:
    """Visibility map and statistics up to date (the sync bench's undo leaves dead rows)."""
    with psycopg.connect(url, autocommit=True) as conn:
        for table in ("students", "student_demographics", "enrollments", "schools"):
            conn.execute(f"VACUUM (ANALYZE) core.{table}")


def size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def ratio(x: float) -> str:
    return f"{x:.1f}x" if x < 100 else f"{x:,.0f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--students", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per query (at least 3)")
    parser.add_argument("--fresh", action="store_true", help="rebuild the bench database")
    args = parser.parse_args()
    if args.runs < 3:
        parser.error("--runs: at least 3 (min, median and max of one run say nothing)")

    folder = Path(tempfile.gettempdir()) / f"demographics-bench-sync-{args.students}"
    url, _changed = setup(folder, args.students, 0.3, 11, args.fresh)  # bench/sync.py defaults
    vacuum(url)
    with connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT district_id FROM core.districts WHERE code = %s", (DISTRICT,)
        ).fetchone()
        assert row is not None
        district_id = int(row[0])
        emails = pick_staff(conn, district_id)
        manager = emails["district admin"]
        granted = grant_manager(conn, DISTRICT, manager, BY)
        before = teacher_fields(conn, DISTRICT).fields
        set_teacher_fields(conn, DISTRICT, TEACHER_FIELDS, manager)
        callers: list[Caller] = []
        try:
            for label, email in emails.items():
                login = create_sql_login(conn, DISTRICT, email, BY)
                assert login.password is not None
                callers.append(
                    Caller(label, email, login.role, login.password, login.person.staff_id)
                )
            print(
                f"district {DISTRICT}: {args.students:,} students; callers: "
                + ", ".join(f"{c.label} {c.email}" for c in callers)
                + f"; teacher fields: {', '.join(TEACHER_FIELDS)}; "
                f"median of {args.runs} after 1 warm-up"
            )
            results = []
            for caller in callers:
                params: dict[str, object] = {
                    "district": district_id,
                    "staff": caller.staff_id,
                    "code": DISTRICT,
                }
                scope = SCOPES[caller.label]
                first = conn.execute(FIRST_SSID.format(scope=scope), params).fetchone()
                assert first is not None and first[0] is not None, caller.label
                params["ssid"] = first[0]
                floor = {k: q.format(scope=scope) for k, q in FLOOR.items()}
                base = measure(url, floor, params, args.runs)
                view = measure(
                    login_url(url, caller.role, caller.password), VIEW, params, args.runs
                )
                assert view["count"].result == base["count"].result, (caller.label, "count")
                assert view["ssid"].result == 1, (caller.label, "ssid")
                assert view["group"].result == base["group"].result, (caller.label, "group")
                results.append((caller, view, base))
                print(f"  {caller.label}: done ({view['count'].result:,} rows in scope)")
        finally:
            for caller in callers:
                revoke_sql_login(conn, DISTRICT, caller.email, BY)
            set_teacher_fields(conn, DISTRICT, before, manager)
            if granted:
                revoke_manager(conn, DISTRICT, manager, BY)

    print()
    print(f"seconds, median (min-max) of {args.runs} runs; ratio: view/floor of the medians")
    header = f"{'caller':<15} {'rows in scope':>13}  {'query':<7} {'view s':>24}"
    print(header + f"  {'floor s':>24}  {'ratio':>7}  returned")
    for caller, view, base in results:
        for name in QUERIES:
            v, f = view[name], base[name]
            spread = f"{v.median:.4f} ({v.low:.4f}-{v.high:.4f})"
            floor = f"{f.median:.4f} ({f.low:.4f}-{f.high:.4f})"
            shown = {
                "count": f"{v.result:,}",
                "ssid": f"{v.result} row",
                "group": f"{v.result:,} group{'' if v.result == 1 else 's'}",
                "export": f"{size(v.result)} (floor {size(f.result)})",
            }[name]
            print(
                f"{caller.label:<15} {view['count'].result:>13,}  {name:<7} {spread:>24}  "
                f"{floor:>24}  {ratio(v.median / f.median):>7}  {shown}"
            )


if __name__ == "__main__":
    main()

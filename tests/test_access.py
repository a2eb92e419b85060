"""Access (access-model.md): data managers, teacher fields, SQL logins and the reporting view.

Every view test connects as a real login role made by the product's own command, over a real
connection, and asks the view itself. Login roles are server-wide, so every role a test makes
is dropped when it ends (their names carry a hash of the test database's name, too).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from accesshelp import (
    STUDENTS,
    drop_roles,
    email,
    load_and_sync,
    login_url,
    ssid,
    visible,
    write_access_roster,
)
from psycopg import errors, sql
from storehelp import load
from typer.testing import CliRunner

from flows.cli.access import access_app
from tasks.access import (
    FIELDS,
    GROUP_ROLE,
    LOGIN_CONNECTION_LIMIT,
    AccessRefused,
    AccessViewsBusy,
    InvalidField,
    InvalidPassword,
    NotAManager,
    UnknownPerson,
    apply_access_views,
    create_sql_login,
    grant_manager,
    manager_emails,
    owner_steps,
    record_manager_act,
    require_manager,
    revoke_sql_login,
    role_name,
    scram_sha256_verifier,
    set_teacher_fields,
    view_summary,
)
from tasks.db import MigrationBusy, pending, upgrade

A, B = "acc-a", "acc-b"  # district codes
VIEW_FILES = ("900_reporting_always.sql",)
ROLE = re.compile(r"ds_[0-9a-f]{16}")
OA, OB = "da", "db"  # their district orgs
ALL = set(FIELDS)
COLUMNS = [
    "district_code",
    "school_sourced_id",
    "student_sourced_id",
    "ssid",
    "email",
    "given_name",
    "family_name",
    "gender",
    "ethnicity",
    "race",
    "english_learner",
    "migrant",
    "gifted_learner",
    "special_ed",
    "sed",
    "homeless",
    "foster",
    "demographics_updated_at",
]


def ids(org: str, *who: str) -> set[str]:
    return {f"{org}-{w}" for w in who}


def shown(rows: dict[str, dict[str, Any]]) -> set[str]:
    """The demographic fields that hold a value in any row."""
    return {f for r in rows.values() for f in FIELDS if r[f] is not None}


@dataclass
class World:
    """Districts A and B rostered and synced; adm of A is a data manager."""

    url: str
    folder: Path
    extra_roles: list[str] = field(default_factory=list)

    def login(self, who: str, org: str = OA, code: str = A) -> str:
        with psycopg.connect(self.url) as conn:
            return create_sql_login(conn, code, email(org, who), "test").role

    def connect(self, role: str, **kwargs: Any) -> psycopg.Connection:
        return psycopg.connect(login_url(self.url, role), autocommit=True, **kwargs)

    def rows(self, role: str) -> dict[str, dict[str, Any]]:
        with self.connect(role) as conn:
            return visible(conn)

    def teacher_fields(self, *fields: str, code: str = A, org: str = OA) -> None:
        with psycopg.connect(self.url) as conn:
            set_teacher_fields(conn, code, fields, email(org, "adm"))

    def reload(self, **roster: Any) -> None:
        load(self.url, A, write_access_roster(self.folder / "a2", OA, **roster))


@pytest.fixture
def world(db: str, tmp_path: Path) -> Iterator[World]:
    load_and_sync(db, A, OA, tmp_path / "a")
    load_and_sync(db, B, OB, tmp_path / "b")
    with psycopg.connect(db) as conn:
        grant_manager(conn, A, email(OA, "adm"), "test")
        grant_manager(conn, B, email(OB, "adm"), "test")
    w = World(db, tmp_path)
    try:
        yield w
    finally:
        with psycopg.connect(db) as conn:
            made = [r[0] for r in conn.execute("SELECT role_name FROM core.sql_logins")]
        drop_roles(db, [*made, *w.extra_roles])


# --- the view: who sees what ---------------------------------------------------------------


def test_the_view_has_exactly_the_columns_of_the_spec_and_is_a_security_barrier(db: str) -> None:
    with psycopg.connect(db) as conn:
        cols = conn.execute(
            """SELECT column_name, data_type FROM information_schema.columns
               WHERE table_schema = 'reporting' AND table_name = 'student_demographics'
               ORDER BY ordinal_position"""
        ).fetchall()
        options = conn.execute(
            "SELECT reloptions FROM pg_class WHERE oid = 'reporting.student_demographics'::regclass"
        ).fetchone()
    assert [c for c, _t in cols] == COLUMNS
    types = dict(cols)
    assert {types[f] for f in FIELDS[3:]} == {"boolean"}
    assert types["demographics_updated_at"] == "timestamp with time zone"
    assert options is not None
    assert set(options[0]) == {"security_barrier=true", "security_invoker=false"}


def test_each_person_sees_their_scope_and_only_the_fields_they_may(world: World) -> None:
    roles = {who: world.login(who) for who in ("adm", "sadm", "t1", "t2", "t3", "aide")}
    b_admin = world.login("adm", OB, B)

    district = world.rows(roles["adm"])
    assert set(district) == ids(OA, "st1", "st2", "st3", "st4", "st5")  # not inactive st6
    assert shown(district) == ALL
    st2 = district[f"{OA}-st2"]
    assert st2["district_code"] == A and st2["school_sourced_id"] == f"{OA}-s1"
    assert (st2["ssid"], st2["email"]) == (ssid(OA, "st2"), email(OA, "st2"))
    assert (st2["race"], st2["english_learner"], st2["migrant"]) == (f"R-{OA}-st2", True, False)

    school = world.rows(roles["sadm"])
    assert set(school) == ids(OA, "st1", "st2", "st3") and shown(school) == ALL

    # Teachers: nothing while no field is enabled (the default), then their classes only.
    assert all(world.rows(roles[t]) == {} for t in ("t1", "t2", "t3"))
    world.teacher_fields("gender", "english_learner")
    t1, t2, t3 = (world.rows(roles[t]) for t in ("t1", "t2", "t3"))
    assert set(t1) == ids(OA, "st1", "st2")
    assert set(t2) == ids(OA, "st2", "st3")
    assert set(t3) == ids(OA, "st4", "st5")
    assert shown(t1) == shown(t2) == shown(t3) == {"gender", "english_learner"}
    assert t1[f"{OA}-st1"]["race"] is None and t1[f"{OA}-st1"]["ssid"] == ssid(OA, "st1")

    assert world.rows(roles["aide"]) == {}  # a staff role with no scope in the model
    other = world.rows(b_admin)
    assert set(other) == ids(OB, "st1", "st2", "st3", "st4", "st5")
    assert all(r["district_code"] == B for r in other.values())

    with psycopg.connect(world.url) as conn:
        assert view_summary(conn, roles["adm"]) == (5, list(FIELDS))
        assert view_summary(conn, roles["t1"]) == (2, ["gender", "english_learner"])
        assert view_summary(conn, roles["aide"]) == (0, [])
        with pytest.raises(UnknownPerson):
            view_summary(conn, "postgres")
        assert conn.execute("SELECT current_user").fetchone() != (roles["adm"],)


def test_a_teacher_field_change_applies_to_the_next_query_on_the_same_connection(
    world: World,
) -> None:
    role = world.login("t1")
    with world.connect(role) as conn:
        assert visible(conn) == {}
        world.teacher_fields("race")
        rows = visible(conn)
        assert set(rows) == ids(OA, "st1", "st2") and shown(rows) == {"race"}
        world.teacher_fields(*FIELDS)
        assert shown(visible(conn)) == ALL
        world.teacher_fields("sed")
        assert shown(visible(conn)) == {"sed"}
        world.teacher_fields()
        assert visible(conn) == {}


def test_roster_changes_apply_at_once(world: World) -> None:
    world.teacher_fields("gender")
    t1, sadm, adm = world.login("t1"), world.login("sadm"), world.login("adm")
    with world.connect(t1) as teacher, world.connect(sadm) as school:
        assert set(visible(teacher)) == ids(OA, "st1", "st2")
        world.reload(without_enrollments=[("t1", "c1")])  # t1 no longer teaches c1
        assert visible(teacher) == {}
        world.reload(inactive=["sadm", "st3"])  # the school admin left; st3 left
        assert visible(school) == {}
    assert set(world.rows(adm)) == ids(OA, "st1", "st2", "st4", "st5")
    with psycopg.connect(world.url) as conn:
        with pytest.raises(UnknownPerson):  # no login for someone who is not active staff
            create_sql_login(conn, A, email(OA, "sadm"), "test")
        with pytest.raises(UnknownPerson):
            create_sql_login(conn, A, email(OA, "off"), "test")  # enabledUser=false


def test_a_revoked_login_sees_nothing_and_cannot_connect(world: World) -> None:
    role = world.login("adm")
    survivor = world.connect(role)
    assert len(visible(survivor)) == 5
    with psycopg.connect(world.url) as conn:
        gone = revoke_sql_login(conn, A, email(OA, "adm"), "test")
        assert (gone.role, gone.dropped) == (role, True)
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None
    try:  # its session was ended; had it survived, it would see nothing
        assert visible(survivor) == {}
    except psycopg.OperationalError:
        pass
    finally:
        survivor.close()
    with pytest.raises(psycopg.OperationalError):
        world.connect(role)
    assert world.login("adm") == role  # a new login gets the same name back
    assert len(world.rows(role)) == 5


def test_a_login_whose_roster_user_is_disabled_later_sees_nothing(world: World) -> None:
    world.teacher_fields("gender")
    teacher, school = world.login("t2"), world.login("sadm")
    assert set(world.rows(teacher)) == ids(OA, "st2", "st3")
    assert set(world.rows(school)) == ids(OA, "st1", "st2", "st3")
    world.reload(disabled=["t2", "sadm"])  # still active in the roster, enabledUser=false
    assert world.rows(teacher) == {} and world.rows(school) == {}


def test_a_school_admin_of_two_schools_sees_both(world: World) -> None:
    both = world.login("sadm2")
    assert set(world.rows(both)) == ids(OA, "st1", "st2", "st3", "st4", "st5")
    assert shown(world.rows(both)) == ALL


def test_a_class_at_an_inactive_school_counts_for_nobody(world: World) -> None:
    world.teacher_fields("gender")
    t1, t3, both, adm = (world.login(w) for w in ("t1", "t3", "sadm2", "adm"))
    assert set(world.rows(t3)) == ids(OA, "st4", "st5")
    world.reload(inactive_schools=["s2"])  # its class c3 and its students are still active
    assert world.rows(t3) == {}
    assert set(world.rows(t1)) == ids(OA, "st1", "st2")
    assert set(world.rows(both)) == ids(OA, "st1", "st2", "st3")
    assert set(world.rows(adm)) == ids(OA, "st1", "st2", "st3", "st4", "st5")


def test_when_values_changed_is_shown_only_to_those_who_see_every_field(world: World) -> None:
    """A change date next to a hidden field would say that the hidden value changed."""
    teacher, adm = world.login("t1"), world.login("adm")
    for fields in (("gender",), FIELDS[:-1]):
        world.teacher_fields(*fields)
        rows = world.rows(teacher)
        assert rows and all(r["demographics_updated_at"] is None for r in rows.values())
    world.teacher_fields(*FIELDS)
    for role in (teacher, adm):
        rows = world.rows(role)
        assert rows and all(r["demographics_updated_at"] is not None for r in rows.values())


# --- the view: attacks ---------------------------------------------------------------------


def test_base_tables_other_schemas_and_revealing_functions_are_closed(world: World) -> None:
    role = world.login("t1")
    with psycopg.connect(world.url, autocommit=True) as owner:
        owner.execute("ANALYZE core.students")
        owner.execute(  # a function of the application's that would reveal data
            "CREATE FUNCTION reporting.peek() RETURNS SETOF text LANGUAGE sql SECURITY DEFINER "
            "AS 'SELECT ssid FROM core.students'"
        )
    try:
        with world.connect(role) as conn:
            tables = conn.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'core'"
            ).fetchone()
            assert tables is not None and tables[0] >= 10
            for statement in (
                "SELECT * FROM core.students",
                "SELECT * FROM core.student_demographics",
                "SELECT * FROM core.demographic_changes",
                "SELECT * FROM core.staff",
                "SELECT * FROM core.sql_logins",
                "SELECT * FROM core.teacher_access",
                "SELECT * FROM core.access_acts",
                "INSERT INTO core.teacher_access (district_id, fields, changed_by) "
                "VALUES (1, '{gender}', 'me')",
                "SELECT reporting.peek()",
                "SELECT core.access_acts_append_only()",
            ):
                with pytest.raises(errors.InsufficientPrivilege):
                    conn.execute(statement)
            writes = conn.execute(
                "SELECT has_table_privilege('reporting.student_demographics', "
                "'INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')"
            ).fetchone()
            assert writes == (False,)
            stats = conn.execute(
                "SELECT count(*) FROM pg_stats WHERE schemaname = 'core'"
            ).fetchone()
            assert stats == (0,)  # the planner's statistics (sample values) are not theirs either
        # Not a privilege in core for the login, the group or PUBLIC: not on a table, a
        # sequence, a function or the schema itself.
        with psycopg.connect(world.url) as owner:
            for who in (role, GROUP_ROLE, "public"):
                held = owner.execute(
                    """SELECT c.relname FROM pg_class c
                       WHERE c.relnamespace = 'core'::regnamespace AND c.relkind <> 'i'
                         AND CASE WHEN c.relkind = 'S'
                                  THEN has_sequence_privilege(%(w)s, c.oid, 'USAGE, SELECT, UPDATE')
                                  ELSE has_table_privilege(%(w)s, c.oid, 'SELECT, INSERT,
                                      UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
                             END
                       UNION ALL
                       SELECT p.proname FROM pg_proc p
                       WHERE p.pronamespace IN ('core'::regnamespace, 'reporting'::regnamespace)
                         AND has_function_privilege(%(w)s, p.oid, 'EXECUTE')
                       UNION ALL
                       SELECT 'schema core'
                       WHERE has_schema_privilege(%(w)s, 'core', 'USAGE, CREATE')
                       UNION ALL
                       SELECT 'schema reporting: CREATE'
                       WHERE has_schema_privilege(%(w)s, 'reporting', 'CREATE')""",
                    {"w": who},
                ).fetchall()
                assert held == [], who
    finally:
        with psycopg.connect(world.url, autocommit=True) as owner:
            owner.execute("DROP FUNCTION reporting.peek()")


def test_no_setting_lets_a_caller_pose_as_someone_else(world: World) -> None:
    world.teacher_fields("gender")
    teacher, admin = world.login("t1"), world.login("adm")
    with world.connect(teacher) as conn:
        mine = set(visible(conn))
        for statement in (
            f"SET app.\"user\" = '{admin}'",
            f"SET app.role = '{admin}'",
            f"SET app.email = '{email(OA, 'adm')}'",
            "SET app.staff_id = '1'",
            f"SELECT set_config('app.user', '{admin}', false)",
            f"SET application_name = '{admin}'",
            'SET request.jwt.claims = \'{"role": "administrator"}\'',
        ):
            conn.execute(statement)
            assert set(visible(conn)) == mine == ids(OA, "st1", "st2")


def test_set_role_and_session_authorization_are_refused(world: World) -> None:
    world.teacher_fields("gender")
    teacher, admin = world.login("t1"), world.login("adm")
    with world.connect(teacher) as conn:
        for statement in (
            sql.SQL("SET ROLE {}").format(sql.Identifier(admin)),
            sql.SQL("SET ROLE demographics_reporting"),
            sql.SQL("SET SESSION AUTHORIZATION {}").format(sql.Identifier(admin)),
            sql.SQL("SET ROLE postgres"),
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)
        assert conn.execute("SELECT current_user, session_user").fetchone() == (teacher, teacher)
        assert set(visible(conn)) == ids(OA, "st1", "st2")
    with psycopg.connect(world.url) as owner:
        member = owner.execute(
            """SELECT r.rolname, m.inherit_option, m.set_option, m.admin_option
               FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid
               WHERE m.member = %s::regrole""",
            (teacher,),
        ).fetchall()
        assert member == [("demographics_reporting", True, False, False)]
        attributes = owner.execute(
            """SELECT rolcanlogin, rolinherit, rolsuper, rolcreaterole, rolcreatedb,
                      rolreplication, rolbypassrls, rolconnlimit
               FROM pg_roles WHERE rolname = %s""",
            (teacher,),
        ).fetchone()
        assert attributes == (True, False, False, False, False, False, False, 10)
        # Were the group role reached anyway, it is nobody: it sees no rows.
        owner.execute("SET ROLE demographics_reporting")
        assert visible(owner) == {}


def test_no_caller_can_create_anything_anywhere_not_even_in_pg_temp(world: World) -> None:
    role = world.login("adm")
    with world.connect(role) as conn:
        for statement in (
            "CREATE TABLE public.t (x int)",
            "CREATE TABLE core.t (x int)",
            "CREATE TABLE reporting.t (x int)",
            "CREATE VIEW reporting.v AS SELECT 1 AS x",
            "CREATE FUNCTION reporting.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "CREATE SCHEMA mine",
            "CREATE TEMP TABLE t (x int)",
            "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "CREATE TEMP VIEW v AS SELECT 1 AS x",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)


LEAK = """
CREATE FUNCTION pg_temp.leak(VARIADIC v text[]) RETURNS boolean
LANGUAGE plpgsql COST 0.0000001 AS $$
BEGIN
    RAISE NOTICE 'seen: %', array_to_string(v, '|', '<null>');
    RETURN true;
END
$$
"""


def test_a_callers_own_function_in_where_sees_only_their_rows(world: World) -> None:
    """The barrier, proven with TEMP granted to the caller (the schema revokes it from all)."""
    world.teacher_fields("gender")
    teacher, school, district = world.login("t1"), world.login("sadm"), world.login("adm")
    database = psycopg.conninfo.conninfo_to_dict(world.url)["dbname"]
    with psycopg.connect(world.url, autocommit=True) as owner:
        for role in (teacher, school, district):
            owner.execute(
                sql.SQL("GRANT TEMPORARY ON DATABASE {} TO {}").format(
                    sql.Identifier(str(database)), sql.Identifier(role)
                )
            )
    every = " , ".join(
        f"{c}::text" for c in COLUMNS if c not in ("district_code", "demographics_updated_at")
    )
    queries = (
        f"SELECT * FROM reporting.student_demographics WHERE pg_temp.leak({every})",
        f"SELECT count(*) FROM reporting.student_demographics WHERE pg_temp.leak({every}) "
        f"AND student_sourced_id = '{OA}-st4'",
        "SELECT * FROM reporting.student_demographics s "
        f"WHERE pg_temp.leak({every}) AND s.race IS NULL ORDER BY pg_temp.leak(ssid)",
        f"SELECT ssid FROM reporting.student_demographics WHERE NOT pg_temp.leak({every}) "
        "OR ssid IN (SELECT ssid FROM reporting.student_demographics WHERE pg_temp.leak(email))",
    )
    cases = (
        (teacher, ids(OA, "st1", "st2"), {"gender"}),
        (school, ids(OA, "st1", "st2", "st3"), ALL),
        # The district admin's rows come from the base tables, with their leakproof
        # conditions pushed down: this function is not leakproof, so it stays above the view.
        (district, ids(OA, "st1", "st2", "st3", "st4", "st5"), ALL),
    )
    everyone = {f"{org}-{s}" for org in (OA, OB) for s in STUDENTS}
    for role, scope, fields in cases:
        notices: list[str] = []
        with world.connect(role) as conn:
            conn.add_notice_handler(lambda d, n=notices: n.append(d.message_primary or ""))
            conn.execute(LEAK)
            for query in queries:
                conn.execute(query).fetchall()
        assert notices, "the function ran"
        text = "\n".join(notices)
        for student in everyone - scope:  # no identity, no value of anyone else
            org, who = student.split("-", 1)
            for value in (student, ssid(org, who), email(org, who), f"R-{student}"):
                assert value not in text
        if "race" not in fields:
            assert "R-" not in text and "true" not in text and "false" not in text
        assert {n.split("|")[1] for n in notices if n.startswith("seen: ") and "|" in n} <= scope


def _plan_nodes(conn: psycopg.Connection, where: str, literal: str) -> list[dict[str, Any]]:
    """The nodes of EXPLAIN (ANALYZE, FORMAT JSON) of the view with `where` (one `{}`, the
    literal), without timings, and with the literal blanked: what two runs may differ in.
    BUFFERS OFF: PostgreSQL 18 counts buffers by default, and the hits say what earlier
    queries left in the cache, not which rows there are."""
    query = sql.SQL(
        "EXPLAIN (ANALYZE, BUFFERS OFF, FORMAT JSON) "
        "SELECT * FROM reporting.student_demographics WHERE "
    ) + sql.SQL(where).format(sql.Literal(literal))
    found = conn.execute(query).fetchone()
    assert found is not None
    text = found[0] if isinstance(found[0], str) else json.dumps(found[0])
    plan = json.loads(text.replace(f"'{literal}'", "'?'"))[0]["Plan"]
    nodes: list[dict[str, Any]] = []

    def walk(node: dict[str, Any]) -> None:
        nodes.append({k: v for k, v in node.items() if k != "Plans" and "Time" not in k})
        for child in node.get("Plans", ()):
            walk(child)

    walk(plan)
    return nodes


def test_explain_analyze_tells_nothing_of_a_student_out_of_scope(world: World) -> None:
    """Text and timestamp comparisons are LEAKPROOF: were they pushed down to the base tables,
    the row counts (or the estimates) of the plan would say whether a student of any district
    has, say, an SSID >= some bound, and so the SSID itself, by halving. For a row out of
    scope, a condition that holds and one that does not must give the same plan."""
    world.teacher_fields("gender")
    teacher, admin, school = world.login("t1"), world.login("adm"), world.login("sadm")
    with psycopg.connect(world.url, autocommit=True) as owner:  # statistics, as in production
        owner.execute("ANALYZE core.students, core.student_demographics, core.staff")
    cases = (  # (who asks, whose row, column, a bound that holds for it, one that does not)
        (teacher, f"{OA}-st4", "ssid", ssid(OA, "st4"), ssid(OA, "st4") + "0"),
        (teacher, f"{OB}-st1", "email", email(OB, "st1"), email(OB, "st1") + "~"),
        (admin, f"{OB}-st2", "family_name", "st2", "st2~"),
        (teacher, f"{OA}-st4", "demographics_updated_at", "-infinity", "infinity"),
        (admin, f"{OB}-st3", "demographics_updated_at", "-infinity", "infinity"),
        # The district admin's conditions reach the base tables (the view's second part):
        # a column of every table it reads, another district's row and their own district's
        # inactive student (st6, out of scope too).
        (admin, f"{OB}-st1", "ssid", ssid(OB, "st1"), ssid(OB, "st1") + "0"),
        (admin, f"{OA}-st6", "ssid", ssid(OA, "st6"), ssid(OA, "st6") + "0"),
        (admin, f"{OA}-st6", "email", email(OA, "st6"), email(OA, "st6") + "~"),
        (admin, f"{OB}-st1", "school_sourced_id", f"{OB}-s1", f"{OB}-s1~"),
        (admin, f"{OB}-st1", "race", f"R-{OB}-st1", f"R-{OB}-st1~"),
        (admin, f"{OB}-st1", "district_code", B, B + "~"),
        (school, f"{OA}-st4", "ssid", ssid(OA, "st4"), ssid(OA, "st4") + "0"),
        (school, f"{OA}-st6", "family_name", "st6", "st6~"),
        (school, f"{OB}-st2", "race", f"R-{OB}-st2", f"R-{OB}-st2~"),
    )
    for role, student, column, holds, fails in cases:
        where = f"student_sourced_id = '{student}' AND {column} >= {{}}"
        with world.connect(role) as conn:
            plans = [_plan_nodes(conn, where, bound) for bound in (holds, fails)]
            for bound in (holds, fails):
                query = sql.SQL("SELECT * FROM reporting.student_demographics WHERE ")
                assert conn.execute(query + sql.SQL(where).format(bound)).fetchall() == []
        assert plans[0] == plans[1], (column, student)
    # The comparison can see a difference: for a row in scope, the two plans differ.
    for role in (teacher, admin, school):
        with world.connect(role) as conn:
            where = f"student_sourced_id = '{OA}-st1' AND ssid >= {{}}"
            bounds = (ssid(OA, "st1"), ssid(OA, "st1") + "0")
            mine = [_plan_nodes(conn, where, b) for b in bounds]
            assert mine[0] != mine[1], role


def test_the_planners_estimates_come_from_no_statistics_of_the_base_tables(
    world: World,
) -> None:
    """The base tables' histograms hold real SSIDs, emails and names of every district: were
    a caller's condition estimated with them, EXPLAIN's row estimates over ranges would give
    those values away. District B is made big enough for estimates to tell."""
    admin = world.login("adm", OB, B)
    with psycopg.connect(world.url, autocommit=True) as owner:
        owner.execute(
            """INSERT INTO core.students (district_id, sourced_id, ssid, email, family_name)
               SELECT d.district_id, 'bulk-' || i, lpad(i::text, 10, '0'),
                      'bulk' || i || '@x.example.org', 'name' || i
               FROM core.districts d, generate_series(1, 3000) i WHERE d.code = %s""",
            (B,),
        )
        owner.execute("ANALYZE core.students, core.student_demographics, core.staff")
    with world.connect(admin) as conn:
        assert len(visible(conn)) == 3005
        for column, bounds in (
            ("ssid", ("0", "0000001500", ssid(OA, "st3"), "9")),
            ("email", ("a", "bulk2", email(OA, "st3"), "z")),
            ("family_name", ("a", "name2", "st3", "z")),
        ):
            estimates = {
                json.dumps([n["Plan Rows"] for n in _plan_nodes(conn, f"{column} >= {{}}", b)])
                for b in bounds
            }
            assert len(estimates) == 1, (column, estimates)


def test_a_district_admins_conditions_reach_the_base_tables_and_tell_nothing_out_of_scope(
    world: World,
) -> None:
    """A district admin's rows are read from the base tables with their conditions pushed down
    (a lookup reads one student row, not the district), yet rows out of scope change nothing
    in the plan: 3,000 inactive students of their own district and 3,000 active ones of
    another, with sourcedIds an index of core.students ((district_id, sourced_id)) holds."""
    admin = world.login("adm")
    with psycopg.connect(world.url, autocommit=True) as owner:
        owner.execute(
            """INSERT INTO core.students
                   (district_id, sourced_id, ssid, email, family_name, active)
               SELECT d.district_id, 'bulk-' || i, 'B' || lpad(i::text, 9, '0'),
                      'bulk' || i || '@x.example.org', 'name' || i, d.code = %s
               FROM core.districts d, generate_series(1, 3000) i""",
            (B,),
        )
        owner.execute("ANALYZE core.students, core.student_demographics, core.staff")
    mine = ids(OA, "st1", "st2", "st3", "st4", "st5")
    cases = (  # (condition, a bound that holds for bulk rows, one that holds for none, seen)
        ("student_sourced_id >= {}", "bulk-", "bulk.", mine),
        ("student_sourced_id = {}", "bulk-1500", "bulk-15000", set()),
        ("ssid = {}", "B000001500", "B00000150x", set()),
        ("email >= {} AND email < 'c'", "bulk1", "bulk~", set()),
        ("family_name < {}", "name2", "name", set()),
    )
    with world.connect(admin) as conn:
        assert set(visible(conn)) == mine
        for where, holds, fails, seen in cases:
            plans = [_plan_nodes(conn, where, bound) for bound in (holds, fails)]
            assert plans[0] == plans[1], where
            for bound in (holds, fails):
                query = sql.SQL("SELECT student_sourced_id FROM reporting.student_demographics ")
                rows = conn.execute(query + sql.SQL("WHERE " + where).format(bound)).fetchall()
                assert {r[0] for r in rows} == seen, (where, bound)
        # The lookup reaches core.students: its scan returns the one student, not the district.
        nodes = _plan_nodes(conn, "ssid = {}", ssid(OA, "st3"))
        students = [n for n in nodes if n.get("Relation Name") == "students" and n["Actual Loops"]]
        assert students and all(n["Actual Rows"] == 1 for n in students), students


# Settings any login may change, each moving where, or in what order, the planner evaluates a
# caller's condition: no index or bitmap scan (core.students read whole, every district's
# rows through one Filter); every condition costing the same (cpu_operator_cost = 0: the order
# is then the order of the list) or operators dear against tuples; index scans only (the
# district's index: the caller's condition then meets their district's inactive students);
# each kind of join; a parallel plan (the Filter evaluated in workers); JIT-compiled
# expressions.
PLANNER_SETTINGS: tuple[dict[str, str], ...] = (
    {"enable_indexscan": "off", "enable_bitmapscan": "off"},
    {"enable_indexscan": "off", "enable_bitmapscan": "off", "cpu_operator_cost": "0"},
    {
        "enable_indexscan": "off",
        "enable_bitmapscan": "off",
        "cpu_operator_cost": "1000",
        "cpu_tuple_cost": "0",
    },
    {"enable_seqscan": "off", "enable_bitmapscan": "off", "random_page_cost": "0"},
    {
        "enable_indexscan": "off",
        "enable_bitmapscan": "off",
        "enable_hashjoin": "off",
        "enable_mergejoin": "off",
    },
    {
        "enable_indexscan": "off",
        "enable_bitmapscan": "off",
        "enable_hashjoin": "off",
        "enable_nestloop": "off",
    },
    {
        "enable_indexscan": "off",
        "enable_bitmapscan": "off",
        "debug_parallel_query": "on",
        "parallel_setup_cost": "0",
        "parallel_tuple_cost": "0",
        "min_parallel_table_scan_size": "0",
    },
    {"enable_indexscan": "off", "enable_bitmapscan": "off", "jit": "on", "jit_above_cost": "0"},
)
# The probe of the review (a leakproof expression that raises, depending on the data): were
# a condition evaluated on a row out of scope with that row's values, whether the query fails
# would say whether some student out of scope has them (an SSID, or one by prefix).
PROBES = (
    "SELECT count(*) FROM reporting.student_demographics WHERE CASE WHEN {cond} "
    "THEN ARRAY[ARRAY[{col}], ARRAY[{col}, {col}]] IS NULL ELSE false END",
    "SELECT * FROM reporting.student_demographics WHERE CASE WHEN {cond} "
    "THEN ARRAY[ARRAY[{col}], ARRAY[{col}, {col}]] IS NULL ELSE false END",
)
FLAGS = COLUMNS[10:17]


def _probe(conn: psycopg.Connection, column: str, cond: str) -> list[list[Any]]:
    return [
        conn.execute(sql.SQL(p.format(cond=cond, col=column))).fetchall()  # type: ignore[arg-type]
        for p in PROBES
    ]


def test_no_setting_lets_a_condition_see_a_value_out_of_scope(world: World) -> None:
    """The review's attack: `CASE WHEN ssid = '...' THEN ARRAY[ARRAY[ssid], ARRAY[ssid, ssid]]
    IS NULL ELSE false END` is LEAKPROOF for PostgreSQL (no function in it) and so is pushed
    down to a district admin's base tables, yet it raises when evaluated on a matching row.
    Under every planner setting a login may change, for every kind of caller, a condition on
    any column that matches only a row out of scope (another district's active student, their
    own district's inactive one, for a teacher or school admin a student of the district not
    theirs) raises nothing and returns what a condition matching no row at all returns; the
    same probe on a row in scope does raise, so this test can fail."""
    world.teacher_fields(*FIELDS)  # the teacher sees every column: every column is probed
    roles = {"district": world.login("adm"), "school": world.login("sadm"), "t": world.login("t1")}
    stamp = "2001-02-03 04:05:06+00"
    with psycopg.connect(world.url, autocommit=True) as owner:
        # Values no row in anyone's scope has (flags the other way round, a time of their own).
        owner.execute(
            """UPDATE core.students
               SET given_name = 'Given-' || sourced_id, family_name = 'Family-' || sourced_id
               WHERE sourced_id IN (%s, %s)""",
            (f"{OB}-st1", f"{OA}-st6"),
        )
        owner.execute(
            """UPDATE core.student_demographics v
               SET gender = 'G-B', ethnicity = 'E-B', english_learner = NOT english_learner,
                   migrant = NOT migrant, gifted_learner = NOT gifted_learner,
                   special_ed = NOT special_ed, sed = NOT sed, homeless = NOT homeless,
                   foster = NOT foster, updated_at = %s
               FROM core.students st
               WHERE st.student_id = v.student_id AND st.sourced_id = %s""",
            (stamp, f"{OB}-st1"),
        )
        flags_b = owner.execute(
            sql.SQL(
                "SELECT {} FROM core.student_demographics v JOIN core.students st "
                "USING (student_id) WHERE st.sourced_id = %s"
            ).format(sql.SQL(", ").join(map(sql.Identifier, FLAGS))),
            (f"{OB}-st1",),
        ).fetchone()
        owner.execute("ANALYZE core.students, core.student_demographics")
    assert flags_b is not None

    def text(column: str, value: str) -> tuple[str, str, str]:
        return (column, f"{column} = {sql.quote(value)}", f"{column} = {sql.quote(value + '~')}")

    def identity(org: str, who: str) -> list[tuple[str, str, str]]:
        return [
            text("student_sourced_id", f"{org}-{who}"),
            text("ssid", ssid(org, who)),
            text("email", email(org, who)),
            text("family_name", f"Family-{org}-{who}"),
            text("given_name", f"Given-{org}-{who}"),
        ]

    # (column, a condition that holds only for the row out of scope, one that holds for none)
    other_district = [
        *identity(OB, "st1"),
        text("district_code", B),
        text("school_sourced_id", f"{OB}-s1"),
        text("gender", "G-B"),
        text("ethnicity", "E-B"),
        text("race", f"R-{OB}-st1"),
        # No operator at all (IS TRUE / IS FALSE cost nothing): first in any Filter.
        *(
            (f, f"{f} IS {bool(v)}", f"{f} IS {bool(v)} AND {f} IS {not v}")
            for f, v in zip(FLAGS, flags_b, strict=True)
        ),
        (
            "demographics_updated_at",
            f"demographics_updated_at = '{stamp}'::timestamptz",
            f"demographics_updated_at = '{stamp}'::timestamptz + interval '1 second'",
        ),
    ]
    inactive = identity(OA, "st6")
    not_theirs = [
        text("ssid", ssid(OA, "st4")),
        text("race", f"R-{OA}-st4"),
        text("email", email(OA, "st4")),
    ]
    mine = [  # st1: in the scope of all three
        ("ssid", f"ssid = '{ssid(OA, 'st1')}'"),
        ("student_sourced_id", f"student_sourced_id = '{OA}-st1'"),
        ("email", f"email = '{email(OA, 'st1')}'"),
        ("race", f"race = 'R-{OA}-st1'"),
        ("district_code", f"district_code = '{A}'"),
        ("school_sourced_id", f"school_sourced_id = '{OA}-s1'"),
        *((f, f"{f} IS {not v}") for f, v in zip(FLAGS, flags_b, strict=True)),
    ]
    for kind, role in roles.items():
        out = other_district + inactive + (not_theirs if kind != "district" else [])
        with world.connect(role) as conn:
            for settings in PLANNER_SETTINGS:
                conn.execute("RESET ALL")
                for name, value in settings.items():
                    conn.execute(
                        sql.SQL("SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
                    )
                for column, holds, none in out:
                    found = _probe(conn, column, holds)
                    assert found == _probe(conn, column, none), (kind, settings, holds)
                    assert found[0] == [(0,)] and found[1] == [], (kind, settings, holds)
                for column, cond in mine:
                    with pytest.raises(errors.ArraySubscriptError):
                        conn.execute(sql.SQL(PROBES[0].format(cond=cond, col=column)))  # type: ignore[arg-type]


def test_a_teacher_or_school_admin_reads_their_scope_not_the_whole_district(
    world: World,
) -> None:
    """The view starts from the caller's scope (the teacher's classes, the admin's schools),
    not from every student of the district tested one by one: with thousands of students in
    the district, the plan reads a handful of student rows, as many as in scope."""
    world.teacher_fields("gender")
    teacher, school = world.login("t1"), world.login("sadm")
    with psycopg.connect(world.url, autocommit=True) as owner:
        owner.execute(  # active students of the same district, in none of their schools
            """INSERT INTO core.students (district_id, sourced_id, ssid)
               SELECT d.district_id, 'bulk-' || i, lpad(i::text, 10, '0')
               FROM core.districts d, generate_series(1, 3000) i WHERE d.code = %s""",
            (A,),
        )
        owner.execute("ANALYZE core.students, core.student_demographics, core.enrollments")
    for role, scope in ((teacher, ids(OA, "st1", "st2")), (school, ids(OA, "st1", "st2", "st3"))):
        with world.connect(role) as conn:
            assert set(visible(conn)) == scope
            nodes = _plan_nodes(conn, "student_sourced_id <> {}", "none")
        students = [n for n in nodes if n.get("Relation Name") == "students"]
        assert students, role
        read = sum(
            (n["Actual Rows"] + n.get("Rows Removed by Filter", 0)) * n["Actual Loops"]
            for n in students
        )
        assert read <= 2 * len(scope), (role, read)


def test_a_logins_advisory_locks_hold_up_nothing_and_it_can_lock_no_row(world: World) -> None:
    """pg_advisory_lock is PUBLIC's: a login could hold the keys the application once used and
    stall upgrades and access changes. The application's locks are now ones no login can take."""
    role = world.login("t1")
    with psycopg.connect(world.url) as conn:
        did = conn.execute("SELECT district_id FROM core.districts WHERE code = %s", (A,))
        district_id = did.fetchone()[0]  # type: ignore[index]
        staff = conn.execute(
            "SELECT staff_id FROM core.staff WHERE sourced_id = %s", (f"{OA}-t2",)
        ).fetchone()[0]  # type: ignore[index]
    old_keys = (  # migrations, teacher fields, a person's login, the store's district lock
        (0x44454D4F,),
        (0x54464C44, district_id),
        (0x41434353, staff),
        (0x53594E43, district_id),
    )
    with world.connect(role) as login:
        for key in old_keys:
            login.execute(
                f"SELECT pg_advisory_lock({', '.join(['%s::int'] * len(key))})"
                if len(key) == 2
                else "SELECT pg_advisory_lock(%s)",
                tuple(key),
            )
        held = login.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        assert held.fetchone() == (len(old_keys),)
        with psycopg.connect(world.url, options="-c statement_timeout=5000") as conn:
            conn.execute("UPDATE core.schema_migrations SET checksum = 'x' WHERE version = '900'")
            conn.commit()
            assert upgrade(conn) == list(VIEW_FILES)
            assert apply_access_views(conn).applied == VIEW_FILES
            set_teacher_fields(conn, A, ["gender"], email(OA, "adm"))
            assert create_sql_login(conn, A, email(OA, "t2"), "test").created
            assert revoke_sql_login(conn, A, email(OA, "t2"), "test").dropped
        for statement in (  # nor can it take the locks the application takes now
            "SELECT 1 FROM core.districts FOR NO KEY UPDATE",
            "SELECT 1 FROM core.districts FOR KEY SHARE",
            "SELECT 1 FROM core.staff FOR UPDATE",
            "SELECT 1 FROM core.teacher_access FOR UPDATE",
            "SELECT 1 FROM core.sql_logins FOR UPDATE",
            "LOCK TABLE core.schema_migrations IN ACCESS SHARE MODE",
            "SELECT 1 FROM reporting.student_demographics FOR KEY SHARE",
            "LOCK TABLE reporting.student_demographics IN SHARE MODE",
        ):
            with pytest.raises(errors.InsufficientPrivilege), login.transaction():
                login.execute(statement)
    with psycopg.connect(world.url) as owner:
        limit = owner.execute("SELECT rolconnlimit FROM pg_roles WHERE rolname = %s", (role,))
        assert limit.fetchone() == (LOGIN_CONNECTION_LIMIT,)


def _superuser(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        return bool(row.fetchone()[0])  # type: ignore[index]


def test_a_login_cannot_create_a_large_object_and_revoke_drops_one_that_did(
    world: World,
) -> None:
    if not _superuser(world.url):
        pytest.skip("only a superuser revokes large objects from PUBLIC (owner_steps says so)")
    role = world.login("t1")
    with world.connect(role) as conn:
        for statement in (
            "SELECT lo_create(0)",
            "SELECT lo_creat(-1)",
            "SELECT lo_from_bytea(0, 'x')",
            "SELECT lo_import('/etc/hostname')",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)
    # One made anyway (where the server lets PUBLIC, or before the revoke) does not keep the
    # role alive: revoking drops the role and what it owns here.
    function = sql.SQL("FUNCTION lo_create(oid)")
    with psycopg.connect(world.url, autocommit=True) as owner:
        owner.execute(sql.SQL("GRANT EXECUTE ON {} TO {}").format(function, sql.Identifier(role)))
        with world.connect(role) as conn:
            made = conn.execute("SELECT lo_create(0)").fetchone()[0]  # type: ignore[index]
        owner.execute(
            sql.SQL("REVOKE EXECUTE ON {} FROM {}").format(function, sql.Identifier(role))
        )
        assert revoke_sql_login(owner, A, email(OA, "t1"), "test").dropped
        assert (
            owner.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None
        )
        gone = owner.execute("SELECT 1 FROM pg_largeobject_metadata WHERE oid = %s", (made,))
        assert gone.fetchone() is None


def test_a_revoked_login_that_owns_a_database_is_kept_powerless_and_said_so(
    world: World,
) -> None:
    if not _superuser(world.url):
        pytest.skip("the test makes the login own a database")
    world.teacher_fields("gender")
    role = world.login("t1")
    database = psycopg.conninfo.conninfo_to_dict(world.url)["dbname"]
    other = sql.Identifier(f"{database}_owned")
    with psycopg.connect(world.url, autocommit=True) as owner:
        owner.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(other, sql.Identifier(role)))
    try:
        revoked = run("sql-login", "-d", A, email(OA, "t1"), "--revoke")
        assert revoked.exit_code == 0, revoked.output
        assert revoked.output.strip() == (
            f"revoked: role {role} can no longer log in or read the view; it was not dropped, "
            "because it still owns objects or holds privileges in another database of this "
            "server (what it had in this one is gone). To drop it: as a superuser, run DROP "
            f"OWNED BY {role}; in each database where it has any, then DROP ROLE {role};"
        )
        with pytest.raises(psycopg.OperationalError):
            world.connect(role)
        with psycopg.connect(world.url) as owner:
            kept = owner.execute(
                "SELECT rolcanlogin, (SELECT count(*) FROM pg_auth_members WHERE member = r.oid) "
                "FROM pg_roles r WHERE rolname = %s",
                (role,),
            ).fetchone()
            assert kept == (False, 0)
            again = create_sql_login(owner, A, email(OA, "t1"), "test")  # the same role reopened
            assert (again.role, again.created) == (role, True)
        assert set(world.rows(role)) == ids(OA, "st1", "st2")
    finally:
        with psycopg.connect(world.url, autocommit=True) as owner:
            owner.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(other))


# --- data managers and teacher fields (the CLI) -------------------------------------------


def run(*args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(access_app, list(args), input=input, catch_exceptions=False)


def test_data_managers_are_granted_and_revoked_by_the_operator_with_history(
    world: World,
) -> None:
    t1 = email(OA, "t1")
    granted = run("grant-manager", "--district", A, t1)
    assert granted.exit_code == 0, granted.output
    assert granted.output.strip() == f"{t1} (teacher) is now a data manager of district {A}"
    again = run("grant-manager", "--district", A, t1.upper())
    assert again.exit_code == 0 and "was already a data manager" in again.output
    listed = run("managers", "--district", A)
    assert email(OA, "adm") in listed.output and f"{t1}  ({OA}-t1, teacher)" in listed.output

    for who, code in ((email(OA, "st1"), A), (email(OB, "t1"), A), ("x@nowhere", A)):
        refused = run("grant-manager", "--district", code, who)
        assert refused.exit_code == 2
        assert refused.output.strip() == (
            f"error: no active staff member of district {A} has that email "
            "(students and people of other districts cannot be given access)"
        )
    unknown = run("grant-manager", "--district", "nope", t1)
    assert unknown.exit_code == 2 and unknown.output.startswith("error: district nope is not")

    with psycopg.connect(world.url) as conn:
        district_id = conn.execute("SELECT district_id FROM core.districts WHERE code = %s", (A,))
        did = district_id.fetchone()[0]  # type: ignore[index]
        assert manager_emails(conn, did) == (email(OA, "adm"), t1)
        require_manager(conn, A, t1.upper())
        with pytest.raises(NotAManager):
            require_manager(conn, B, t1)

    revoked = run("revoke-manager", "--district", A, t1)
    assert revoked.exit_code == 0
    assert revoked.output.strip() == f"{t1} is no longer a data manager of district {A}"
    twice = run("revoke-manager", "--district", A, t1)
    assert twice.exit_code == 2 and twice.output.startswith("error: that person is not a data")

    world.reload(inactive=["adm"])  # a manager who left the roster loses the role at once
    with psycopg.connect(world.url) as conn:
        assert manager_emails(conn, did) == ()
        with pytest.raises(NotAManager):
            require_manager(conn, A, email(OA, "adm"))
        history = conn.execute(
            """SELECT sf.sourced_id, m.granted_by LIKE 'cli%%', m.revoked_by LIKE 'cli%%'
               FROM core.data_managers m JOIN core.staff sf USING (staff_id)
               WHERE m.district_id = %s ORDER BY m.grant_id""",
            (did,),
        ).fetchall()
        assert history == [(f"{OA}-adm", False, None), (f"{OA}-t1", True, True)]
        acts = conn.execute(
            "SELECT act, actor = 'test' OR actor LIKE 'cli%%' FROM core.access_acts "
            "WHERE district_id = %s ORDER BY act_id",
            (did,),
        ).fetchall()
        assert acts == [("grant_manager", True)] * 2 + [("revoke_manager", True)]
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("DELETE FROM core.access_acts")


def test_a_managers_act_is_checked_and_recorded_with_the_act_itself(world: World) -> None:
    """For the approve/discard flows: a refusal leaves no record, and undoes their act."""
    with psycopg.connect(world.url) as conn:
        who = record_manager_act(
            conn, A, email(OA, "adm").upper(), "approve_held_sync", {"run_id": 7}
        )
        assert who == email(OA, "adm")
        with pytest.raises(NotAManager), conn.transaction():
            conn.execute("UPDATE core.district_settings SET hold_limit = 0.5")
            record_manager_act(conn, A, email(OA, "t1"), "discard_held_sync", {"run_id": 7})
        acts = conn.execute(
            "SELECT act, actor, actor_staff_id IS NOT NULL, detail FROM core.access_acts "
            "WHERE act LIKE '%%held_sync'"
        ).fetchall()
        limits = conn.execute("SELECT DISTINCT hold_limit FROM core.district_settings")
        assert [float(x) for (x,) in limits.fetchall()] == [0.25]
    assert acts == [("approve_held_sync", email(OA, "adm"), True, {"run_id": 7})]


def _acts(conn: psycopg.Connection) -> list[Any]:
    return conn.execute("SELECT * FROM core.access_acts ORDER BY act_id").fetchall()


def test_the_record_of_access_acts_is_append_only_even_for_its_owner(world: World) -> None:
    """The application's own user owns the table, so privileges cannot stop it: the triggers
    do, for an UPDATE, a DELETE, a TRUNCATE, and a TRUNCATE ... CASCADE that would reach it."""
    with psycopg.connect(world.url, autocommit=True) as conn:
        owner = conn.execute(
            "SELECT tableowner = current_user FROM pg_tables "
            "WHERE schemaname = 'core' AND tablename = 'access_acts'"
        ).fetchone()
        assert owner == (True,)
        before = _acts(conn)
        assert len(before) == 2  # the world's two grants
        for statement in (
            "UPDATE core.access_acts SET actor = 'someone else'",
            "DELETE FROM core.access_acts",
            "TRUNCATE core.access_acts",
            "TRUNCATE core.access_acts RESTART IDENTITY CASCADE",
        ):
            with pytest.raises(errors.InsufficientPrivilege, match="append-only"):
                conn.execute(statement)
        # A reset script's way to reach it: refused (by the first guard the cascade meets, the
        # roster's own since sql/009, or this one).
        with pytest.raises((errors.InsufficientPrivilege, errors.RestrictViolation)):
            conn.execute("TRUNCATE core.districts CASCADE")
        assert _acts(conn) == before
        assert conn.execute("SELECT count(*) FROM core.districts").fetchone() == (2,)


def test_db_upgrade_adds_the_truncate_refusal_to_an_existing_database(world: World, cli) -> None:  # type: ignore[no-untyped-def]
    """A database upgraded before sql/006 existed, with acts on record: `db upgrade` applies
    the file, and the acts are kept and can no longer be truncated."""
    with psycopg.connect(world.url) as conn:
        conn.execute("DROP TRIGGER access_acts_no_truncate ON core.access_acts")
        conn.execute("DELETE FROM core.schema_migrations WHERE version = '006'")
        conn.commit()
        before = _acts(conn)
    try:
        result = cli("db", "upgrade")
        assert result.exit_code == 0, result.output
        assert result.output.splitlines()[0] == "applied 006_access_acts_no_truncate.sql"
    finally:
        with psycopg.connect(world.url) as conn:
            upgrade(conn)  # whatever happened, later tests get the full schema back
    with psycopg.connect(world.url, autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege, match="append-only"):
            conn.execute("TRUNCATE core.access_acts")
        assert _acts(conn) == before and len(before) == 2
        assert pending(conn) == []


def test_teacher_fields_are_shown_and_set_by_a_data_manager_only(world: World) -> None:
    manager = email(OA, "adm")
    shown_now = run("teacher-fields", "--district", A, "--show")
    assert shown_now.exit_code == 0
    assert shown_now.output.strip() == (
        f"teachers of district {A} see: no demographic field (and so no rows)"
    )
    changed = run("teacher-fields", "-d", A, "--as", manager, "--set", "English_Learner, gender")
    assert changed.exit_code == 0, changed.output
    lines = changed.output.splitlines()
    assert lines[0] == f"teachers of district {A} see: gender, english_learner"
    assert lines[1].endswith(f"by {manager}")

    refusals = {
        ("--set", "gender,shoe_size", "--as", manager): "error: not a demographic field: "
        "shoe_size; the fields are " + ", ".join(FIELDS),
        ("--all",): "error: --as EMAIL is required: only a data manager of the district "
        "changes this",
        ("--all", "--none", "--as", manager): "error: give exactly one of --set FIELDS, "
        "--none, --all or --show",
        ("--all", "--as", email(OA, "t1")): f"error: that person is not a data manager of "
        f"district {A}; only a data manager may do this (the operator grants it: demographics "
        "access grant-manager)",
        ("--all", "--as", email(OB, "adm")): f"error: that person is not a data manager of "
        f"district {A}; only a data manager may do this (the operator grants it: demographics "
        "access grant-manager)",
        ("--set", " , ", "--as", manager): "error: --set needs at least one field name "
        "(or use --none)",
    }
    for args, message in refusals.items():
        result = run("teacher-fields", "--district", A, *args)
        assert (result.exit_code, result.output.strip()) == (2, message), args
    assert run("teacher-fields", "-d", A, "--show").output.startswith(
        f"teachers of district {A} see: gender, english_learner\n"
    )
    assert (
        "see: " + ", ".join(FIELDS)
        in run("teacher-fields", "-d", A, "--as", manager, "--all").output
    )
    assert (
        "no demographic field" in run("teacher-fields", "-d", A, "--as", manager, "--none").output
    )
    with psycopg.connect(world.url) as conn:
        acts = conn.execute(
            "SELECT actor, detail FROM core.access_acts WHERE act = 'teacher_fields' "
            "ORDER BY act_id"
        ).fetchall()
        with pytest.raises(InvalidField):
            set_teacher_fields(conn, A, ["gender", "ssid"], manager)
    assert acts == [
        (manager, {"from": [], "to": ["gender", "english_learner"]}),
        (manager, {"from": ["gender", "english_learner"], "to": list(FIELDS)}),
        (manager, {"from": list(FIELDS), "to": []}),
    ]


def test_a_managers_act_names_who_carried_it_and_joins_the_callers_transaction(
    world: World,
) -> None:
    """For the sync, which records the approval inside its own transaction."""
    adm, t1 = email(OA, "adm"), email(OA, "t1")
    acts = "SELECT actor, detail FROM core.access_acts WHERE act = 'approve_held_sync'"
    with psycopg.connect(world.url) as conn:  # not autocommit: the caller's transaction
        for outcome in ("rollback", "commit"):
            conn.execute("UPDATE core.district_settings SET hold_limit = 0.5")
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
            who = record_manager_act(
                conn, A, adm, "approve_held_sync", {"run_id": 9}, via="flow-run:xyz"
            )
            assert who == adm
            with pytest.raises(NotAManager):  # undoes its own savepoint only
                record_manager_act(conn, A, t1, "approve_held_sync", {"run_id": 9}, via="x")
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
            assert conn.execute(acts).fetchall() == [(adm, {"run_id": 9, "via": "flow-run:xyz"})]
            getattr(conn, outcome)()  # the caller decides for both
            if outcome == "rollback":
                assert conn.execute(acts).fetchall() == []
                conn.rollback()
        limits = conn.execute("SELECT DISTINCT hold_limit FROM core.district_settings")
        assert [float(x) for (x,) in limits.fetchall()] == [0.5]
        assert conn.execute(acts).fetchall() == [(adm, {"run_id": 9, "via": "flow-run:xyz"})]
        record_manager_act(conn, A, adm, "discard_held_sync")  # `via` is optional
        conn.commit()


def test_a_refused_approval_or_teacher_field_change_writes_no_act(world: World) -> None:
    with psycopg.connect(world.url, autocommit=True) as conn:
        grant_manager(conn, A, email(OA, "sadm"), "test")
        run("revoke-manager", "--district", A, email(OA, "sadm"))
        for who in (email(OA, "t1"), email(OB, "adm"), email(OA, "sadm"), "x@nowhere"):
            with pytest.raises(NotAManager):
                record_manager_act(conn, A, who, "approve_held_sync", {"run_id": 1}, via="t")
            with pytest.raises(NotAManager):
                set_teacher_fields(conn, A, ["gender"], who)
        written = conn.execute(
            "SELECT count(*) FROM core.access_acts "
            "WHERE act IN ('approve_held_sync', 'teacher_fields')"
        ).fetchone()
        assert written == (0,)
        assert conn.execute("SELECT count(*) FROM core.teacher_access").fetchone() == (0,)


# --- SQL logins (the CLI) ------------------------------------------------------------------


def _verifier(url: str, role: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,))
        found = row.fetchone()
    assert found is not None
    return str(found[0])


def test_sql_login_creates_rotates_and_revokes_a_login(world: World) -> None:
    t1 = email(OA, "t1")
    made = run("sql-login", "--district", A, t1, "--format", "json")
    assert made.exit_code == 0, made.output
    doc = json.loads(made.output)
    assert set(doc) == {"role", "password"} and len(doc["password"]) >= 32
    role = doc["role"]
    database = psycopg.conninfo.conninfo_to_dict(world.url)["dbname"]
    assert ROLE.fullmatch(role) and role == role_name(str(database), A, f"{OA}-t1")
    first = _verifier(world.url, role)
    assert first.startswith("SCRAM-SHA-256$4096:")

    rotated = run("sql-login", "--district", A, t1)
    assert rotated.exit_code == 0
    text = rotated.output.splitlines()
    assert text[0] == f"new password for login {role} ({t1}, teacher, district {A})"
    password = text[1].removeprefix("password (shown once, stored nowhere): ")
    assert len(password) >= 32 and password != doc["password"]
    assert _verifier(world.url, role) != first

    piped = run("sql-login", "-d", A, t1, "--password-stdin", "-f", "json", input="a" * 20 + "\n")
    assert json.loads(piped.output) == {"role": role, "password": None}
    salt = _verifier(world.url, role).split("$")[1].split(":")[1]
    assert _verifier(world.url, role) == scram_sha256_verifier("a" * 20, base64.b64decode(salt))
    short = run("sql-login", "-d", A, t1, "--password-stdin", input="short\n")
    assert short.exit_code == 2
    assert short.output.strip() == "error: a password has 16 to 1000 characters"
    student = run("sql-login", "-d", A, email(OA, "st1"))
    assert student.exit_code == 2 and "no active staff member" in student.output

    with psycopg.connect(world.url) as conn:
        stored = conn.execute("SELECT string_agg(t::text, ' ') FROM core.access_acts t").fetchone()[
            0
        ]  # type: ignore[index]
        stored += str(conn.execute("SELECT * FROM core.sql_logins").fetchall())
        acts = conn.execute(
            "SELECT act FROM core.access_acts WHERE act LIKE 'sql_login%%' ORDER BY act_id"
        ).fetchall()
    assert doc["password"] not in stored and password not in stored and "a" * 20 not in stored
    assert [a for (a,) in acts] == ["sql_login_create", "sql_login_rotate", "sql_login_rotate"]

    revoked = run("sql-login", "-d", A, t1, "--revoke", "--format", "json")
    assert json.loads(revoked.output) == {"role": role, "revoked": True, "dropped": True}
    again = run("sql-login", "-d", A, t1, "--revoke")
    assert again.exit_code == 2
    assert again.output.strip() == f"error: no SQL login of district {A} belongs to that email"
    with psycopg.connect(world.url) as conn:
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None
        history = conn.execute(
            "SELECT rotated_at IS NOT NULL, revoked_at IS NOT NULL FROM core.sql_logins"
        ).fetchall()
    assert history == [(True, True)]


def test_a_role_of_the_same_name_that_is_not_ours_is_never_taken_over(world: World) -> None:
    with psycopg.connect(world.url, autocommit=True) as conn:
        database = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
        name = role_name(database, A, f"{OA}-t2")
        world.extra_roles.append(name)
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))
        with pytest.raises(Exception, match="already exists and is not a login"):
            create_sql_login(conn, A, email(OA, "t2"), "test")
        assert conn.execute("SELECT count(*) FROM core.sql_logins").fetchone() == (0,)


def test_role_names_are_safe_short_and_distinct() -> None:
    assert role_name("db", "maple-valley", "tch-01") == role_name("db", "maple-valley", "tch-01")
    names = {
        role_name("db", "maple-valley", "tch-01"),
        role_name("db", "maple-valley", "tch_01"),
        role_name("db", "maple-valley", "TCH-01"),
        role_name("other", "maple-valley", "tch-01"),
        role_name("db", "maple-valley", "x" * 300),
        role_name("db", "M" * 64, "é€✓"),
    }
    assert len(names) == 6
    for name in names:  # opaque: every login can list every role's name (pg_roles)
        assert ROLE.fullmatch(name), name


def test_our_scram_verifier_is_the_one_libpq_computes(db: str) -> None:
    with psycopg.connect(db) as conn:
        for password in ("correct horse battery staple", "x" * 16, "~!@#$%^&*()_+`{}|"):
            theirs = conn.pgconn.encrypt_password(password.encode(), b"u", b"scram-sha-256")
            head, keys = theirs.decode().rsplit("$", 1)
            iterations, salt = head.split("$")[1].split(":")
            ours = scram_sha256_verifier(password, base64.b64decode(salt), int(iterations))
            assert ours == theirs.decode() and keys in ours
    for bad in ("short", "é" * 20, "tab\there-and-long-enough"):
        with pytest.raises(InvalidPassword), psycopg.connect(db) as conn:
            create_sql_login(conn, A, "x@y", "test", bad)


def test_the_password_authenticates_over_scram(
    world: World, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The test server trusts its socket; for this one role, require SCRAM for a while.
    Only on the server the tests started themselves: never edit a real server's pg_hba.conf."""
    with psycopg.connect(world.url) as conn:
        login = create_sql_login(conn, A, email(OA, "adm"), "test")
        hba = conn.execute("SHOW hba_file").fetchone()[0]  # type: ignore[index]
    path = Path(hba)
    if not (path.is_file() and path.resolve().is_relative_to(tmp_path_factory.getbasetemp())):
        pytest.skip("the database server is not one the tests started")
    original = path.read_text(encoding="utf-8")
    path.write_text(f"local all {login.role} scram-sha-256\n" + original, encoding="utf-8")
    try:
        with psycopg.connect(world.url, autocommit=True) as owner:
            owner.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 10
        while True:  # the reload takes effect for new connections a moment later
            try:
                psycopg.connect(login_url(world.url, login.role, "wrong password!!")).close()
            except psycopg.OperationalError as exc:
                assert "password authentication failed" in str(exc)
                break
            assert time.monotonic() < deadline, "the reload never took effect"
            time.sleep(0.05)
        assert login.password is not None
        with psycopg.connect(login_url(world.url, login.role, login.password)) as conn:
            assert len(visible(conn)) == 5
    finally:
        path.write_text(original, encoding="utf-8")
        with psycopg.connect(world.url, autocommit=True) as owner:
            owner.execute("SELECT pg_reload_conf()")


def _attributes(url: str, role: str) -> tuple[Any, ...]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            """SELECT rolcanlogin, rolinherit, rolcreatedb, rolcreaterole, rolconnlimit,
                      rolvaliduntil IS NULL OR rolvaliduntil = 'infinity'
               FROM pg_roles WHERE rolname = %s""",
            (role,),
        ).fetchone()
    assert row is not None
    return tuple(row)


def test_a_rotation_restates_the_login_and_never_hands_out_a_role_not_ours(
    world: World,
) -> None:
    ours = (True, False, False, False, LOGIN_CONNECTION_LIMIT, True)
    role = world.login("t1")
    ident = sql.Identifier(role)
    owner = psycopg.connect(world.url, autocommit=True)
    world.extra_roles.append("ds_test_other")
    try:
        owner.execute(
            sql.SQL(
                "ALTER ROLE {} NOLOGIN INHERIT CREATEDB CONNECTION LIMIT 500 "
                "VALID UNTIL '2001-01-01'"
            ).format(ident)
        )
        create_sql_login(owner, A, email(OA, "t1"), "test")
        assert _attributes(world.url, role) == ours

        def refused(setup: str, undo: str) -> None:
            before = _verifier(world.url, role)
            owner.execute(sql.SQL(setup).format(ident))
            try:
                with pytest.raises(AccessRefused, match="not as this tool makes its logins"):
                    create_sql_login(owner, A, email(OA, "t1"), "test")
            finally:
                owner.execute(sql.SQL(undo).format(ident))
            assert _verifier(world.url, role) == before  # nothing changed

        refused("GRANT pg_read_all_data TO {}", "REVOKE pg_read_all_data FROM {}")
        refused(
            "GRANT demographics_reporting TO {} WITH SET TRUE",
            "GRANT demographics_reporting TO {} WITH SET FALSE",
        )
        refused(
            "CREATE ROLE ds_test_other; GRANT {} TO ds_test_other",
            "DROP ROLE ds_test_other",
        )
        refused("ALTER ROLE {} SUPERUSER", "ALTER ROLE {} NOSUPERUSER")
        rotations = "SELECT count(*) FROM core.access_acts WHERE act = 'sql_login_rotate'"
        assert owner.execute(rotations).fetchone() == (1,)
        # Dropped and made again by hand, memberships and all: not the role this database made.
        owner.execute(
            sql.SQL(
                "DROP ROLE {0}; CREATE ROLE {0} LOGIN NOINHERIT; "
                "GRANT demographics_reporting TO {0} WITH INHERIT TRUE, SET FALSE"
            ).format(ident)
        )
        with pytest.raises(AccessRefused, match="not as this tool makes its logins"):
            create_sql_login(owner, A, email(OA, "t1"), "test")
    finally:
        owner.close()


# --- applying the view ---------------------------------------------------------------------


def test_apply_access_views_is_idempotent_and_safe_while_people_query(world: World) -> None:
    role = world.login("sadm")
    seen: list[int] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def query() -> None:
        try:
            with world.connect(role) as conn:
                while not stop.is_set():
                    seen.append(len(visible(conn)))
        except BaseException as exc:  # reported below
            failures.append(exc)

    def queried_since(count: int) -> None:
        """Wait until the reader has run another query (or failed)."""
        deadline = time.monotonic() + 20
        while len(seen) <= count and not failures:
            assert time.monotonic() < deadline, "the reader ran no query"
            time.sleep(0.01)

    worker = threading.Thread(target=query)
    worker.start()
    try:
        queried_since(0)
        # autocommit, as the flow and `db upgrade` run it: each apply is its own transaction
        with psycopg.connect(world.url, autocommit=True) as conn:
            for _ in range(3):
                before = len(seen)
                assert apply_access_views(conn).applied == VIEW_FILES
                queried_since(before)  # the reader goes on between the applies
            assert pending(conn) == []
    finally:
        stop.set()
        worker.join()
    assert not failures and set(seen) == {3}


def test_apply_access_views_gives_up_rather_than_queue_behind_a_long_query(world: World) -> None:
    role = world.login("adm")
    with psycopg.connect(login_url(world.url, role)) as reader:  # a transaction left open
        assert len(visible(reader)) == 5
        with psycopg.connect(world.url) as conn:
            with pytest.raises(AccessViewsBusy):
                apply_access_views(conn, lock_timeout_seconds=0.2)
            assert len(visible(reader)) == 5
        reader.rollback()
    with psycopg.connect(world.url) as conn:
        assert apply_access_views(conn).applied == VIEW_FILES
    assert len(world.rows(role)) == 5


def test_an_application_user_with_createrole_but_not_superuser_manages_logins(
    world: World,
) -> None:
    """Production's case: the app's user has CREATEROLE (and ADMIN on the group), no more."""
    with psycopg.connect(world.url, autocommit=True) as owner:
        database = owner.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
        app = role_name(database, "app", "user")
        world.extra_roles.append(app)
        ident = sql.Identifier(app)
        owner.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE").format(ident))
        owner.execute(sql.SQL("GRANT USAGE ON SCHEMA core TO {}").format(ident))
        owner.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA core TO {}").format(ident)
        )
        owner.execute(
            sql.SQL(
                "GRANT demographics_reporting TO {} WITH ADMIN TRUE, INHERIT FALSE, SET FALSE"
            ).format(ident)
        )
    world.teacher_fields("gender")
    with psycopg.connect(login_url(world.url, app)) as conn:
        login = create_sql_login(conn, A, email(OA, "t1"), "test")
        # A rotation restates what a CREATEROLE user may, and its own ADMIN on the role (given
        # by PostgreSQL to a role's creator) is not taken for someone else's membership.
        rotated = create_sql_login(conn, A, email(OA, "t1"), "test")
        assert (rotated.role, rotated.created) == (login.role, False)
        assert view_summary(conn, login.role) == (2, ["gender"])
        after = conn.execute("SELECT current_user, pg_has_role(%s, 'SET')", (login.role,))
        assert after.fetchone() == (app, False)  # the SET it lent itself was rolled back
        assert len(world.rows(login.role)) == 2
        with pytest.raises(errors.InsufficientPrivilege):  # the app's user cannot read it...
            conn.execute("SELECT * FROM reporting.student_demographics")
        conn.rollback()
        assert revoke_sql_login(conn, A, email(OA, "t1"), "test").dropped
    with pytest.raises(psycopg.OperationalError):
        world.connect(login.role)


def test_db_upgrade_gives_up_on_the_view_rather_than_queue_readers_behind_it(
    world: World,
) -> None:
    role = world.login("adm")
    with psycopg.connect(world.url, options="-c statement_timeout=10000") as conn:
        conn.execute("UPDATE core.schema_migrations SET checksum = 'x' WHERE version = '900'")
        conn.commit()
        with psycopg.connect(login_url(world.url, role)) as reader:  # a transaction left open
            assert len(visible(reader)) == 5
            started = time.monotonic()
            with pytest.raises(MigrationBusy) as busy:
                upgrade(conn, lock_timeout_seconds=0.2)
            assert time.monotonic() - started < 5
            assert str(busy.value).startswith(
                "sql/900_reporting_always.sql waited 0.2 s for a lock held by a long query"
            )
            assert pending(conn) == list(VIEW_FILES)
            assert len(visible(reader)) == 5
        conn.rollback()
        assert upgrade(conn) == list(VIEW_FILES)
        assert pending(conn) == []


def test_what_a_non_owner_could_not_close_is_returned_for_the_owner(world: World) -> None:
    """A non-owner's upgrade skips the database-wide revokes (a NOTICE no client shows):
    apply_access_views checks the privileges themselves and returns what is left."""
    if not _superuser(world.url):
        pytest.skip("the test hands the schema to another role and back")
    with psycopg.connect(world.url, autocommit=True) as owner:
        me, database = owner.execute("SELECT current_user, current_database()").fetchone()  # type: ignore[misc]
        app = role_name(database, "app", "not the owner")
        world.extra_roles.append(app)
        ident, db = sql.Identifier(app), sql.Identifier(database)
        owner.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE").format(ident))
        owner.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(db, ident))
        owned = owner.execute(
            """SELECT format('ALTER %%s %%s OWNER TO %%I',
                             CASE c.relkind WHEN 'v' THEN 'VIEW' ELSE 'TABLE' END,
                             c.oid::regclass, %s::text)
               FROM pg_class c
               WHERE c.relnamespace IN ('core'::regnamespace, 'reporting'::regnamespace)
                 AND c.relkind IN ('r', 'v')
               UNION ALL
               SELECT format('ALTER FUNCTION %%s OWNER TO %%I', p.oid::regprocedure, %s::text)
               FROM pg_proc p WHERE p.pronamespace = 'core'::regnamespace""",
            (app, app),
        ).fetchall()
        for (statement,) in owned:
            owner.execute(statement)
        owner.execute(sql.SQL("ALTER SCHEMA core OWNER TO {}").format(ident))
        owner.execute(sql.SQL("ALTER SCHEMA reporting OWNER TO {}").format(ident))
        owner.execute(sql.SQL("GRANT TEMPORARY ON DATABASE {} TO PUBLIC").format(db))
        owner.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
        owner.execute("GRANT EXECUTE ON FUNCTION lo_create(oid) TO PUBLIC")
        try:
            with psycopg.connect(login_url(world.url, app)) as conn:
                done = apply_access_views(conn)
            assert done.applied == VIEW_FILES and list(done) == list(VIEW_FILES)
            quoted = db.as_string(owner)
            assert {(s.run_as, s.statement) for s in done.owner_steps} == {
                (
                    f"the owner of database {database}",
                    f"REVOKE TEMPORARY ON DATABASE {quoted} FROM PUBLIC, demographics_reporting;",
                ),
                (f"the owner of database {database}", "REVOKE ALL ON SCHEMA public FROM PUBLIC;"),
                ("a superuser", "REVOKE EXECUTE ON FUNCTION lo_create(oid) FROM PUBLIC;"),
            }
            assert str(done.owner_steps[-1]) == (
                "logins can create large objects: run as a superuser: "
                "REVOKE EXECUTE ON FUNCTION lo_create(oid) FROM PUBLIC;"
            )
            for step in done.owner_steps:  # what the owner runs closes it all
                owner.execute(step.statement)
            assert owner_steps(owner) == []
        finally:
            owner.execute(sql.SQL("REASSIGN OWNED BY {} TO {}").format(ident, sql.Identifier(me)))
            owner.execute(sql.SQL("DROP OWNED BY {}").format(ident))
            assert apply_access_views(owner).owner_steps == ()

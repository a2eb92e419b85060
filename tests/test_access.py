"""Access (access-model.md): data managers, teacher fields, SQL logins and the reporting view.

Every view test connects as a real login role made by the product's own command, over a real
connection, and asks the view itself. Login roles are server-wide, so every role a test makes
is dropped when it ends (their names carry a hash of the test database's name, too).
"""

from __future__ import annotations

import base64
import json
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

from flows.access_cli import access_app
from tasks.access import (
    FIELDS,
    AccessViewsBusy,
    InvalidField,
    InvalidPassword,
    NotAManager,
    UnknownPerson,
    apply_access_views,
    create_sql_login,
    grant_manager,
    manager_emails,
    record_manager_act,
    require_manager,
    revoke_sql_login,
    role_name,
    scram_sha256_verifier,
    set_teacher_fields,
    view_summary,
)
from tasks.db import pending

A, B = "acc-a", "acc-b"  # district codes
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
                "SELECT pg_read_file('postmaster.pid')",
                "SELECT reporting.peek()",
                "SELECT core.access_acts_append_only()",
                "SELECT * FROM pg_authid",
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
                      rolreplication, rolbypassrls
               FROM pg_roles WHERE rolname = %s""",
            (teacher,),
        ).fetchone()
        assert attributes == (True, False, False, False, False, False, False)
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
    teacher, school = world.login("t1"), world.login("sadm")
    database = psycopg.conninfo.conninfo_to_dict(world.url)["dbname"]
    with psycopg.connect(world.url, autocommit=True) as owner:
        for role in (teacher, school):
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
    assert role.startswith(f"ds_acc_a_{OA}_t1_") and len(role) <= 63
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
    for name in names:
        assert name.startswith("ds_") and len(name) <= 63
        assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789_")
    assert role_name("db", "maple-valley", "tch-01").startswith("ds_maple_valley_tch_01_")


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

    worker = threading.Thread(target=query)
    worker.start()
    try:
        with psycopg.connect(world.url) as conn:
            for _ in range(3):
                assert apply_access_views(conn) == ["900_reporting_always.sql"]
                time.sleep(0.05)
            assert pending(conn) == []
    finally:
        stop.set()
        worker.join()
    assert not failures and seen and set(seen) == {3}


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
        assert apply_access_views(conn) == ["900_reporting_always.sql"]
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

"""Roster load: a OneRoster 1.1 snapshot per district; bad files get file, row and column."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import psycopg
import pytest
from conftest import as_oneroster_12, write_roster
from storehelp import STUDENTS, load

from tasks.roster import RosterRefused, load_roster, read_roster
from tasks.roster.drop import unpack

SAMPLE = Path(__file__).resolve().parent.parent / "schemas" / "samples" / "roster"


def _active(url: str, table: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {
            r[0]
            for r in conn.execute(f"SELECT sourced_id FROM core.{table} WHERE active").fetchall()
        }


def test_the_sample_roster_loads_and_reloading_it_changes_nothing(db: str) -> None:
    first = load(db, "mv", SAMPLE)
    counts = {k: (c.active, c.added) for k, c in first.counts.items()}
    assert counts == {
        "schools": (2, 2),
        "students": (200, 200),
        "staff": (13, 13),
        "classes": (12, 12),
        "enrollments": (411, 411),
    }
    again = load(db, "mv", SAMPLE)
    assert all((c.added, c.updated, c.deactivated) == (0, 0, 0) for c in again.counts.values())
    with psycopg.connect(db) as conn:
        admins = conn.execute(
            "SELECT sourced_id, district_wide FROM core.staff WHERE role = 'administrator' "
            "ORDER BY sourced_id"
        ).fetchall()
        school_admins = conn.execute("SELECT count(*) FROM core.staff_schools").fetchone()
    assert admins == [("adm-01", True), ("adm-02", False), ("adm-03", False)]
    assert school_admins is not None and school_admins[0] >= 12  # teachers and school admins


def _versions(url: str, table: str) -> dict[str, tuple[str, object]]:
    """sourcedId -> (xmin, updated_at): both change when, and only when, a row is rewritten."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            f"SELECT sourced_id, xmin::text, updated_at FROM core.{table}"
        ).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def test_a_reload_rewrites_only_the_records_that_changed(db: str, tmp_path: Path) -> None:
    load(db, "d", write_roster(tmp_path / "r1", STUDENTS))
    before = {t: _versions(db, t) for t in ("students", "staff", "classes", "enrollments")}
    changed = [*STUDENTS[:3], ("s4", "0000000004", "dee.new@students.example.org")]
    result = load(db, "d", write_roster(tmp_path / "r2", changed))
    students = result.counts["students"]
    assert (students.added, students.updated, students.deactivated, students.active) == (
        0,
        1,
        0,
        4,
    )
    others = [c for k, c in result.counts.items() if k != "students"]
    assert all((c.added, c.updated, c.deactivated) == (0, 0, 0) for c in others)
    after = {t: _versions(db, t) for t in before}
    rewritten = {t: {k for k in after[t] if after[t][k] != before[t][k]} for t in after}
    assert rewritten == {"students": {"s4"}, "staff": set(), "classes": set(), "enrollments": set()}


def test_what_is_gone_from_the_snapshot_becomes_inactive_never_deleted(
    db: str, tmp_path: Path
) -> None:
    load(db, "d", write_roster(tmp_path / "r1", STUDENTS))
    result = load(
        db,
        "d",
        write_roster(
            tmp_path / "r2",
            [*STUDENTS[:2], STUDENTS[2], ("s9", "0000000009", "new@example.org")],
            status={"s3": "tobedeleted"},
        ),
    )
    students = result.counts["students"]
    assert (students.added, students.deactivated, students.active) == (1, 1, 3)
    assert _active(db, "students") == {"s1", "s2", "s9"}
    assert _active(db, "enrollments") == {
        "org-d-e-t1",
        "org-d-e-s1",
        "org-d-e-s2",
        "org-d-e-s3",
        "org-d-e-s9",
    }
    with psycopg.connect(db) as conn:
        total = conn.execute("SELECT count(*) FROM core.students").fetchone()
    assert total == (5,)  # s3 (tobedeleted) and s4 (gone) are kept, inactive
    # The counts are told by the snapshot, not counted in the district: they must agree.
    assert {k: c.active for k, c in result.counts.items()} == _active_counts(db, "d")
    again = load(db, "d", write_roster(tmp_path / "r3", STUDENTS))
    assert _active(db, "students") == {"s1", "s2", "s3", "s4"}
    assert {k: c.active for k, c in again.counts.items()} == _active_counts(db, "d")


def _active_counts(url: str, code: str) -> dict[str, int]:
    """Each kind of record's active rows of the district, counted in the database."""
    tables = ("schools", "students", "staff", "classes", "enrollments")
    with psycopg.connect(url) as conn:
        return {
            table: conn.execute(
                f"SELECT count(*) FROM core.{table} t JOIN core.districts d USING (district_id) "
                "WHERE d.code = %s AND t.active",
                (code,),
            ).fetchone()[0]
            for table in tables
        }


def test_a_school_class_or_student_of_another_district_is_refused_by_the_database(
    db: str, tmp_path: Path
) -> None:
    """The roster's references are of the same district (sql/009): no write, the load's or
    anyone's, can give a student another district's school or enroll it in another district's
    class, and what those checks rely on (ids and districts that never change, records never
    deleted) is held too."""
    load(db, "d", write_roster(tmp_path / "d", STUDENTS))
    load(db, "e", write_roster(tmp_path / "e", STUDENTS, district="org-e"))
    of_e = (
        "(SELECT {0} FROM core.{1} JOIN core.districts USING (district_id)"
        " WHERE code = 'e' LIMIT 1)"
    )
    of_d = "FROM core.districts x WHERE x.district_id = {0}.district_id AND x.code = 'd'"
    refused = {
        psycopg.errors.ForeignKeyViolation: [
            f"UPDATE core.students SET school_id = {of_e.format('school_id', 'schools')} "
            + of_d.format("students"),
            f"UPDATE core.classes SET school_id = {of_e.format('school_id', 'schools')} "
            + of_d.format("classes"),
            f"UPDATE core.enrollments SET class_id = {of_e.format('class_id', 'classes')} "
            + of_d.format("enrollments"),
            f"UPDATE core.enrollments SET student_id = {of_e.format('student_id', 'students')} "
            + of_d.format("enrollments")
            + " AND student_id IS NOT NULL",
            "INSERT INTO core.students (district_id, sourced_id) VALUES (999999, 'nowhere')",
        ],
        psycopg.errors.RestrictViolation: [
            "DELETE FROM core.students",
            "DELETE FROM core.classes",
            "DELETE FROM core.schools",
            "TRUNCATE core.classes",
            "TRUNCATE core.students CASCADE",
            "UPDATE core.students SET district_id = district_id + 1",
            "UPDATE core.classes SET class_id = DEFAULT",
        ],
    }
    with psycopg.connect(db) as conn:
        for error, statements in refused.items():
            for statement in statements:
                with pytest.raises(error), conn.transaction():
                    conn.execute(statement)
    # What the load itself writes passes the same checks: a reload that changes a student.
    changed = [*STUDENTS[:3], ("s4", "0000000004", "dee.new@students.example.org")]
    assert load(db, "d", write_roster(tmp_path / "d2", changed)).counts["students"].updated == 1


def test_a_roster_with_errors_loads_nothing_and_says_where(db: str, tmp_path: Path) -> None:
    folder = write_roster(
        tmp_path / "bad",
        [*STUDENTS, ("s5", "0000000001", "dup@example.org"), ("s6", "12345", "short@example.org")],
    )
    users = folder / "users.csv"
    users.write_text(
        users.read_text().replace("org-d-sch,student,s2,", "org-nowhere,student,s2,")
        + "s7,,,true,org-d-sch,wizard,s7,,A,B,,0000000007,w@example.org,,,,,\n"
    )
    (folder / "classes.csv").write_text(
        (folder / "classes.csv").read_text() + "c2,,,Orphan,09,crs,X,scheduled,,org-x,t,,,\n"
    )
    snapshot = read_roster(folder)
    found = {(i.file, i.row, i.column, i.code, i.severity) for i in snapshot.issues}
    assert ("users.csv", 4, "orgSourcedIds", "unknown_reference", "error") in found
    assert ("users.csv", 3, "identifier", "duplicate_ssid", "error") in found
    assert ("users.csv", 7, "identifier", "duplicate_ssid", "error") in found
    assert ("users.csv", 8, "identifier", "invalid_ssid", "warning") in found
    assert ("users.csv", 9, "role", "invalid_value", "error") in found
    assert ("classes.csv", 3, "schoolSourcedId", "unknown_reference", "error") in found
    for issue in snapshot.issues:  # messages say what is wrong without quoting values
        assert "0000000001" not in issue.message and "org-nowhere" not in issue.message
    with psycopg.connect(db) as conn:
        result = load_roster(conn, "d", snapshot)
    assert not result.loaded
    assert _active(db, "students") == set()


def test_a_repeated_sourced_id_is_an_error_on_every_row_but_its_first(tmp_path: Path) -> None:
    folder = write_roster(tmp_path / "dup", STUDENTS)
    users = folder / "users.csv"
    lines = users.read_text().splitlines()
    repeat = lines[2].replace("ana@", "again@")  # s1 again (rows 7 and 8), then s2 again (9)
    users.write_text("\n".join([*lines, repeat, repeat, lines[3]]) + "\n")
    found = [
        (i.row, i.column)
        for i in read_roster(folder).issues
        if (i.file, i.code) == ("users.csv", "duplicate_id")
    ]
    assert found == [(7, "sourcedId"), (8, "sourcedId"), (9, "sourcedId")]


def test_missing_files_and_columns_are_named(tmp_path: Path) -> None:
    shutil.copytree(SAMPLE, tmp_path / "r")
    (tmp_path / "r" / "classes.csv").unlink()
    orgs = tmp_path / "r" / "orgs.csv"
    orgs.write_text(orgs.read_text().replace("sourcedId,", "id,", 1))
    issues = {(i.file, i.code) for i in read_roster(tmp_path / "r").issues}
    assert issues == {("classes.csv", "missing_file"), ("orgs.csv", "missing_column")}


def test_a_roster_of_another_district_is_refused(db: str, tmp_path: Path) -> None:
    load(db, "d", write_roster(tmp_path / "a", STUDENTS, district="org-a"))
    with (
        psycopg.connect(db) as conn,
        pytest.raises(RosterRefused, match="belongs to a different district"),
    ):
        load_roster(
            conn, "d", read_roster(write_roster(tmp_path / "b", STUDENTS, district="org-b"))
        )
    assert _active(db, "students") == {"s1", "s2", "s3", "s4"}


def test_the_cli_loads_a_roster_and_reports_errors(db: str, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("roster", "load", SAMPLE, "--district", "mv")
    assert result.exit_code == 0, result.output
    assert "students          200 active" in result.output
    bad = write_roster(tmp_path / "bad", [("s1", "0000000001", "a@x.org")])
    (bad / "enrollments.csv").write_text(
        (bad / "enrollments.csv").read_text() + "e9,,,nope,org-d-sch,s1,student,false,,\n"
    )
    result = cli("roster", "load", bad, "--district", "other")
    assert result.exit_code == 1
    assert "NOT loaded" in result.output
    assert "enrollments.csv row 4, column classSourcedId" in result.output
    doc = json.loads(cli("roster", "load", bad, "--district", "other", "--format", "json").output)
    assert doc["loaded"] is False
    assert doc["issues"] == [
        {
            "file": "enrollments.csv",
            "severity": "error",
            "code": "unknown_reference",
            "message": "classSourcedId is not a class in classes.csv",
            "row": 4,
            "column": "classSourcedId",
        }
    ]


def test_a_district_added_first_takes_its_roster_and_its_first_data_manager(
    db: str, tmp_path: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    added = cli("district", "add", "new-d", "--name", "New District", "--manager", "T1@example.org")
    assert added.exit_code == 0, added.output
    assert "district new-d (New District) added" in added.output
    again = cli("district", "add", "new-d", "--name", "Again", "--manager", "x@example.org")
    assert (again.exit_code, again.output.strip()) == (
        2,
        "error: district new-d already exists; nothing was changed",
    )
    bad = cli("district", "add", "new d", "--name", "N", "--manager", "x@example.org")
    assert bad.exit_code == 2 and "a district code is 1 to 64 letters" in bad.output
    not_email = cli("district", "add", "d2", "--name", "N", "--manager", "0000000001")
    assert not_email.exit_code == 2 and "0000000001" not in not_email.output
    # Before any roster, the district's mail goes to the manager named when it was added.
    from tasks.access import manager_emails, pending_manager_emails
    from tasks.store import get_district

    with psycopg.connect(db) as conn:
        district = get_district(conn, "new-d")
        assert pending_manager_emails(conn, district.district_id) == ("T1@example.org",)
        assert manager_emails(conn, district.district_id) == ()
    result = load(db, "new-d", write_roster(tmp_path / "r", STUDENTS, district="org-n"))
    assert result.granted == ["T1@example.org"]
    with psycopg.connect(db) as conn:
        assert pending_manager_emails(conn, district.district_id) == ()
        assert manager_emails(conn, district.district_id) == ("t1@example.org",)
        act = conn.execute(
            "SELECT act, actor FROM core.access_acts WHERE district_id = %s",
            (district.district_id,),
        ).fetchall()
    assert act == [("grant_manager", act[0][1])] and act[0][1]
    # The first roster fixed which district org it is: another one is refused.
    with (
        psycopg.connect(db) as conn,
        pytest.raises(RosterRefused, match="belongs to a different district"),
    ):
        load_roster(conn, "new-d", read_roster(write_roster(tmp_path / "o", STUDENTS)))


def test_a_oneroster_12_roster_loads_as_its_11_twin(db: str, tmp_path: Path) -> None:
    twin = load(db, "d11", write_roster(tmp_path / "a", STUDENTS, district="org-a"))
    folder = as_oneroster_12(write_roster(tmp_path / "b", STUDENTS, district="org-b"))
    assert "role" not in (folder / "users.csv").read_text().splitlines()[0].split(",")
    loaded = load(db, "d12", folder)
    counts = {k: (c.active, c.added) for k, c in loaded.counts.items()}
    assert counts == {k: (c.active, c.added) for k, c in twin.counts.items()}
    assert loaded.issues == twin.issues == []


def test_oneroster_12_roles_become_the_11_roles_and_orgs(db: str, tmp_path: Path) -> None:
    folder = write_roster(tmp_path / "r", STUDENTS, district="org-d")
    users = (folder / "users.csv").read_text()
    users += "adm,,,true,org-d,administrator,adm,,Ada,Admin,,A1,ada@example.org,,,,,\n"
    users += "csl,,,true,org-d-sch,counselor,csl,,Cy,Counsel,,C1,cy@example.org,,,,,\n"
    (folder / "users.csv").write_text(users)
    as_oneroster_12(folder, roles={"adm": "districtAdministrator"})
    # A second, secondary role of the teacher at the district org: their orgs are both.
    with (folder / "roles.csv").open("a") as roles:
        roles.write("role-extra,,,org-d-t1,secondary,siteAdministrator,,,org-d,\n")
    load(db, "d", folder)
    with psycopg.connect(db) as conn:
        staff = conn.execute(
            "SELECT sourced_id, role, district_wide FROM core.staff ORDER BY sourced_id"
        ).fetchall()
    # The counselor has no place in the access model and is not loaded.
    assert staff == [("adm", "administrator", True), ("org-d-t1", "teacher", True)]


def test_oneroster_12_errors_say_file_row_column_and_code(tmp_path: Path) -> None:
    folder = as_oneroster_12(write_roster(tmp_path / "r", STUDENTS[:2]))
    roles = (folder / "roles.csv").read_text().splitlines()
    roles[1] = roles[1].replace(",primary,", ",main,")  # row 2
    roles[2] = roles[2].replace(",s1,", ",nobody,")  # row 3: s1 then has no role
    roles.append("r9,,,s2,primary,ext:mentor,,,no-such-org,")  # row 5
    (folder / "roles.csv").write_text("\n".join(roles) + "\n")

    found = [(i.file, i.row, i.column, i.code) for i in read_roster(folder).issues]

    assert found == [
        ("users.csv", 3, "sourcedId", "no_role"),
        ("roles.csv", 2, "roleType", "invalid_value"),
        ("roles.csv", 3, "userSourcedId", "unknown_reference"),
        ("roles.csv", 5, "orgSourcedId", "unknown_reference"),
        ("enrollments.csv", 3, "userSourcedId", "unknown_reference"),  # s1, without a role
    ]
    (folder / "manifest.csv").write_text("propertyName,value\noneroster.version,2.0\n")
    (issue,) = read_roster(folder).issues
    assert (issue.file, issue.code, issue.message) == (
        "manifest.csv",
        "unsupported_version",
        "oneroster.version must be 1.1 or 1.2",
    )
    (folder / "manifest.csv").write_text(
        "propertyName,value\noneroster.version,1.2\nfile.users,delta\nfile.orgs,bulk\n"
    )
    (issue,) = read_roster(folder).issues
    assert issue.message == "users is a delta export; export the roster in bulk (a full snapshot)"
    (folder / "manifest.csv").write_text("propertyName,value\noneroster.version,1.2\n")
    (folder / "roles.csv").unlink()
    assert [(i.file, i.code) for i in read_roster(folder).issues] == [("roles.csv", "missing_file")]


def test_a_oneroster_12_user_whose_roles_are_all_to_be_deleted_becomes_inactive(
    db: str, tmp_path: Path
) -> None:
    load(db, "d", write_roster(tmp_path / "a", STUDENTS))
    folder = as_oneroster_12(write_roster(tmp_path / "b", STUDENTS))
    roles = (
        (folder / "roles.csv")
        .read_text()
        .replace("role-s4-org-d-sch,,", "role-s4-org-d-sch,tobedeleted,")
    )
    (folder / "roles.csv").write_text(roles)

    result = load(db, "d", folder)

    assert result.issues == [] and result.counts["students"].active == 3
    assert _active(db, "students") == {"s1", "s2", "s3"}


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w", compression=method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return packed.getvalue()


def test_a_zipped_roster_is_unpacked_within_the_limit_counted_as_it_unpacks() -> None:
    files, issues = unpack(
        "x.zip", _zip({"export/users.csv": b"u", "__MACOSX/._users.csv": b""}), 10
    )
    assert (files, issues) == ({"users.csv": b"u"}, [])
    bomb = _zip({"users.csv": b"0" * 2_000_000})  # a few KB that unpack to 2 MB
    assert len(bomb) < 10_000
    (issue,) = unpack("bomb.zip", bomb, 1_000_000)[1]
    assert (issue.code, issue.message) == (
        "too_large",
        "bomb.zip unpacks to more than 0.954 MB, over the limit (max_file_mb)",
    )
    (issue,) = unpack("b.zip", _zip({"users.csv": b"u"}, zipfile.ZIP_BZIP2), 10)[1]
    assert issue.code == "not_a_zip" and "Deflate" in issue.message
    (issue,) = unpack("n.zip", b"not a zip", 10)[1]
    assert issue.code == "not_a_zip"

"""Sync against a real PostgreSQL: matching, values, duplicates, safeguards, re-sync."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from conftest import write_roster
from storehelp import HEADER, STUDENTS, codes_at, line, load, set_limits, snapshot, sync, values

from tasks.access import NotAManager, grant_manager
from tasks.sync import run_file

D = "d1"


@pytest.fixture
def district(db: str, tmp_path: Path) -> str:
    load(db, D, write_roster(tmp_path / "roster", STUDENTS))
    return db


# --- matching ------------------------------------------------------------------------------


def test_ssid_match_applies_values_and_history(district: str) -> None:
    out = sync(district, D, [line("0000000001", gender="F", race="Asian", flags="Y,N,,,,,")])
    assert out.status == "succeeded"
    block = out.report.sync
    assert block is not None and block.run_id is not None
    assert (block.matched, block.updated, block.unchanged, block.unmatched) == (1, 1, 0, 0)
    assert values(district, D)["s1"] == {
        "gender": "F",
        "ethnicity": None,
        "race": "Asian",
        "english_learner": True,
        "migrant": False,
        "gifted_learner": None,
        "special_ed": None,
        "sed": None,
        "homeless": None,
        "foster": None,
    }
    with psycopg.connect(district) as conn:
        history = conn.execute(
            "SELECT run_id, field, old_value, new_value FROM core.demographic_changes "
            "ORDER BY field"
        ).fetchall()
    run = int(block.run_id)
    assert history == [
        (run, "english_learner", None, "Y"),
        (run, "gender", None, "F"),
        (run, "migrant", None, "N"),
        (run, "race", None, "Asian"),
    ]


def test_email_match_ignores_case_when_there_is_no_ssid(district: str) -> None:
    out = sync(district, D, [line("", "BEN@Students.Example.org", gender="M")])
    assert out.report.sync is not None and out.report.sync.matched == 1
    assert values(district, D)["s2"]["gender"] == "M"


def test_ssid_wins_and_a_differing_email_is_a_warning(district: str) -> None:
    out = sync(district, D, [line("0000000003", "cy.nickname@students.example.org", gender="F")])
    assert codes_at(out, "email_mismatch") == [2]
    assert values(district, D)["s3"]["gender"] == "F"
    with psycopg.connect(district) as conn:
        email = conn.execute("SELECT email FROM core.students WHERE sourced_id = 's3'").fetchone()
    assert email == ("cy@students.example.org",)


def test_ssid_and_email_of_two_students_is_an_identifier_conflict(district: str) -> None:
    set_limits(district, D, error=1)
    out = sync(
        district,
        D,
        [
            line("0000000001", "ben@students.example.org", gender="F"),
            line("0000000004", gender="M"),
        ],
    )
    assert codes_at(out, "identifier_conflict") == [2]
    assert out.report.summary.error_rows == 1
    stored = values(district, D)
    assert "s1" not in stored and "s2" not in stored  # the conflicting row changed nothing
    assert stored["s4"]["gender"] == "M"


def test_unknown_ssid_unknown_email_and_shared_email_are_not_matched(
    db: str, tmp_path: Path
) -> None:
    shared = "family@example.org"
    load(
        db,
        D,
        write_roster(
            tmp_path / "r",
            [*STUDENTS, ("s5", "0000000005", shared), ("s6", "0000000006", shared)],
        ),
    )
    out = sync(
        db,
        D,
        [
            line("0999999999", gender="F"),
            line("", "nobody@example.org", gender="F"),
            line("", shared, gender="F"),
            line("0999999998", "ana@students.example.org", gender="F"),
        ],
    )
    assert codes_at(out, "no_matching_student") == [2, 3, 4, 5]
    messages = out.report.issues["message"].to_list()
    assert any("2 active students share this email" in m for m in messages)
    assert any("belongs to a student with a different SSID" in m for m in messages)
    assert out.report.sync is not None
    assert (out.report.sync.matched, out.report.sync.unmatched) == (0, 4)
    assert values(db, D) == {}


def test_inactive_students_are_not_matched(db: str, tmp_path: Path) -> None:
    load(db, D, write_roster(tmp_path / "r1", STUDENTS))
    load(db, D, write_roster(tmp_path / "r2", STUDENTS[:3]))  # s4 left the district
    load(
        db,
        "d2",
        write_roster(tmp_path / "r3", STUDENTS, district="org-x", status={"s1": "tobedeleted"}),
    )
    out = sync(db, D, [line("0000000004", gender="F")])
    assert codes_at(out, "no_matching_student") == [2]
    out = sync(db, "d2", [line("0000000001", gender="F")])
    assert codes_at(out, "no_matching_student") == [2]


def test_a_file_never_touches_another_district(db: str, tmp_path: Path) -> None:
    load(db, "a", write_roster(tmp_path / "a", STUDENTS, district="org-a"))
    load(db, "b", write_roster(tmp_path / "b", STUDENTS, district="org-b"))
    sync(db, "b", [line("0000000001", gender="M", race="White")])
    before_b = values(db, "b")
    out = sync(
        db,
        "a",
        [line("0000000001", gender="F"), line("", "ben@students.example.org", race="Asian")],
    )
    assert out.report.sync is not None and out.report.sync.updated == 2
    assert values(db, "b") == before_b
    assert values(db, "a")["s1"]["gender"] == "F"


# --- values --------------------------------------------------------------------------------


def test_an_empty_cell_changes_nothing_and_an_absent_column_neither(district: str) -> None:
    set_limits(district, D, hold=1)
    sync(district, D, [line("0000000001", gender="F", race="Asian", flags="Y,N,N,N,N,N,N")])
    before = values(district, D)["s1"]
    out = sync(district, D, [line("0000000001", gender="", race="", flags=",,,,,,Y")])
    assert values(district, D)["s1"] == {**before, "foster": True}
    assert out.report.sync is not None and out.report.sync.updated == 1
    out = sync(district, D, ["0000000001,M"], header="SSID,gender")
    assert values(district, D)["s1"] == {**before, "foster": True, "gender": "M"}


def test_a_row_with_any_error_changes_nothing(district: str) -> None:
    set_limits(district, D, error=1)
    out = sync(
        district,
        D,
        [line("0000000001", gender="F", flags="Yes,,,,,,"), line("0000000002", gender="M")],
    )
    assert out.status == "succeeded" and out.report.summary.error_rows == 1
    assert list(values(district, D)) == ["s2"]


def test_lower_case_codes_are_stored_upper_case(district: str) -> None:
    sync(district, D, [line("0000000001", gender="f", flags="y,n,,,,,")])
    stored = values(district, D)["s1"]
    assert (stored["gender"], stored["english_learner"], stored["migrant"]) == ("F", True, False)


def test_unchanged_values_are_not_rewritten(district: str) -> None:
    set_limits(district, D, hold=1)
    sync(district, D, [line("0000000001", gender="F"), line("0000000002", gender="M")])
    out = sync(district, D, [line("0000000001", gender="F"), line("0000000002", gender="F")])
    block = out.report.sync
    assert block is not None
    assert (block.matched, block.updated, block.unchanged) == (2, 1, 1)
    with psycopg.connect(district) as conn:
        rows = conn.execute(
            "SELECT field, old_value, new_value FROM core.demographic_changes WHERE run_id = %s",
            (int(block.run_id or 0),),
        ).fetchall()
    assert rows == [("gender", "M", "F")]


# --- duplicates, judged after matching -----------------------------------------------------


def test_same_student_by_ssid_and_by_email_with_same_values_is_applied_once(
    district: str,
) -> None:
    out = sync(
        district,
        D,
        [line("0000000002", gender="M"), line("", "ben@students.example.org", gender="M")],
    )
    assert codes_at(out, "duplicate_row") == [3]
    assert codes_at(out, "conflicting_duplicate") == []
    assert values(district, D)["s2"]["gender"] == "M"


def test_same_student_with_different_values_applies_none_of_the_rows(district: str) -> None:
    set_limits(district, D, error=1)
    out = sync(
        district,
        D,
        [
            line("0000000002", gender="M"),
            line("0000000001", gender="F"),
            line("", "ben@students.example.org", gender="F"),
        ],
    )
    assert codes_at(out, "conflicting_duplicate") == [2, 4]
    assert "s2" not in values(district, D)
    assert values(district, D)["s1"]["gender"] == "F"


# --- safeguards ----------------------------------------------------------------------------


def test_too_many_errors_rejects_the_whole_file(district: str) -> None:
    lines = [
        line("0000000001", gender="F"),
        line("0000000002", gender="Male"),
        line("0000000003", gender="F"),
        line("0000000004", gender="F"),
    ]
    out = sync(district, D, lines)  # 1 of 4 rows = 25 % > 20 %
    assert out.status == "rejected"
    assert codes_at(out, "too_many_errors") == [None]
    assert out.report.exit_code == 1
    assert values(district, D) == {}
    with psycopg.connect(district) as conn:
        conn.execute("UPDATE core.district_settings SET error_limit = 0.25")
        conn.commit()
    out = sync(district, D, lines)  # 25 % is not above 25 %
    assert out.status == "succeeded"
    assert len(values(district, D)) == 3


def test_file_level_error_is_rejected_and_recorded(district: str) -> None:
    out = sync(district, D, ["ana,F"], header="name,gender")
    assert out.status == "rejected"
    assert codes_at(out, "no_identifier_column") == [None]
    assert snapshot(district)[2] == [(int(out.report.sync.run_id or 0), "rejected")]  # type: ignore[union-attr]


def test_first_upload_is_never_held_but_a_sweeping_change_is(district: str) -> None:
    first = [line(f"000000000{i}", gender="F", race="Asian") for i in range(1, 5)]
    assert sync(district, D, first).status == "succeeded"  # fills empty values only
    sweeping = [line(f"000000000{i}", gender="M") for i in range(1, 3)]  # 2 of 4 = 50 %
    out = sync(district, D, sweeping, mode="preview")
    assert out.status == "preview" and codes_at(out, "sync_held") == [None]
    out = sync(district, D, sweeping)
    assert out.status == "held"
    assert out.report.sync is not None and out.report.sync.updated == 2  # what would change
    assert {s["gender"] for s in values(district, D).values()} == {"F"}
    held_run = int(out.report.sync.run_id or 0)

    manager = "t1@example.org"  # the roster's teacher, made a data manager
    with pytest.raises(NotAManager):
        sync(district, D, sweeping, approve=True, approved_by=manager)
    with psycopg.connect(district, autocommit=True) as conn:
        grant_manager(conn, D, manager, "test")
    other = [*sweeping, line("0000000003", race="White")]  # a different file: not approved
    assert sync(district, D, other, approve=True, approved_by=manager).status == "held"
    assert acts(district, "approve_held_sync") == []  # nothing was approved

    out = sync(district, D, sweeping, approve=True, approved_by="T1@example.org")
    assert out.status == "succeeded"
    assert codes_at(out, "sync_held") == []
    assert values(district, D)["s1"]["gender"] == "M"
    with psycopg.connect(district) as conn:
        row = conn.execute(
            "SELECT resolution, resolved_by FROM core.sync_runs WHERE run_id = %s", (held_run,)
        ).fetchone()
        approves = conn.execute(
            "SELECT approves_run_id FROM core.sync_runs WHERE run_id = %s",
            (int(out.report.sync.run_id or 0),),  # type: ignore[union-attr]
        ).fetchone()
    assert row == ("approved", manager)
    assert approves == (held_run,)
    assert acts(district, "approve_held_sync") == [(manager, {"run_id": held_run})]


def acts(url: str, act: str) -> list[tuple[str, dict[str, object]]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT actor, detail FROM core.access_acts WHERE act = %s ORDER BY 1", (act,)
        ).fetchall()
    return [(r[0], {k: v for k, v in r[1].items() if k != "via"}) for r in rows]


def test_a_change_below_the_hold_limit_is_applied(district: str) -> None:
    sync(district, D, [line(f"000000000{i}", gender="F") for i in range(1, 5)])
    out = sync(district, D, [line("0000000001", gender="M")])  # 1 of 4 = 25 %, not above
    assert out.status == "succeeded"


def test_the_same_file_again_changes_nothing_and_says_so(district: str) -> None:
    lines = [line("0000000001", gender="F"), line("0000000009", gender="F")]
    first = sync(district, D, lines)
    before = snapshot(district)
    preview = sync(district, D, lines, mode="preview")
    assert preview.message.endswith(f"already applied by run {first.run_id}; nothing would change")
    assert preview.report.sync is not None and preview.report.sync.updated == 0
    again = sync(district, D, lines)
    assert again.status == "succeeded"
    assert f"already applied by run {first.run_id}" in again.message
    block = again.report.sync
    assert block is not None
    assert (block.matched, block.updated, block.unchanged, block.unmatched) == (1, 0, 1, 1)
    after = snapshot(district)
    assert after[0] == before[0] and after[1] == before[1]
    assert after[2][-1] == (again.run_id, "succeeded")


def test_a_file_already_applied_is_told_by_its_digest_and_reported_from_its_run(
    district: str,
) -> None:
    """The same bytes again are not read: the report repeats the applying run's encoding and
    counts (its issues are in that run's report), and the new run records both again."""
    header = HEADER + ",Remarqué"  # an unknown column, in a Windows-1252 file
    rows = [line("0000000001", gender="F") + ",a", line("0000000009", gender="F") + ",b"]
    data = (header + "\n" + "".join(r + "\n" for r in rows)).encode("cp1252")
    first = run_file(district, D, data, "upload.csv", requested_by="test")
    assert first.status == "succeeded" and first.report.file.encoding == "windows-1252"
    assert first.report.issues.height == first.report.summary.warnings == 3
    again = run_file(district, D, data, "upload.csv", requested_by="test")
    assert again.status == "succeeded" and again.same_as_run_id == int(first.run_id or 0)
    assert again.report.file == first.report.file
    assert again.report.summary == first.report.summary
    assert again.report.issues.is_empty()
    block = again.report.sync
    assert block is not None
    assert (block.matched, block.updated, block.unchanged, block.unmatched) == (1, 0, 1, 1)
    with psycopg.connect(district) as conn:
        recorded = conn.execute(
            "SELECT same_as_run_id, file_encoding, warning_rows, rows, matched, values_changed "
            "FROM core.sync_runs WHERE run_id = %s",
            (again.run_id,),
        ).fetchone()
        assert recorded == (first.run_id, "windows-1252", 1, 2, 1, 0)
        # A run recorded before the encoding was kept: the file is read again, same verdict.
        conn.execute("UPDATE core.sync_runs SET file_encoding = NULL")
    legacy = run_file(district, D, data, "upload.csv", requested_by="test")
    assert legacy.same_as_run_id == first.run_id
    assert legacy.report.issues.height == 3


def test_preview_writes_nothing(district: str) -> None:
    out = sync(district, D, [line("0000000001", gender="F")], mode="preview")
    assert out.status == "preview"
    assert out.report.sync is not None
    assert (out.report.sync.run_id, out.report.sync.updated) == (None, 1)
    assert snapshot(district) == ([], [], [])


def test_unknown_district_is_a_clear_error(db: str) -> None:
    from tasks.store import UnknownDistrict

    with pytest.raises(UnknownDistrict, match="an operator adds it first"):
        sync(db, "nowhere", [line("0000000001", gender="F")])

"""The data manager's workflow through the drop (real SFTP drop or local folder, SMTP, database
and Prefect API): a OneRoster export in `<district>/roster/` is loaded by the district's nightly
run before its demographics files, recognised when it comes again, reported when invalid, held
by the guard; a file in `<district>/preview/` is previewed, emailed and deleted."""

from __future__ import annotations

import io
import os
import time
import zipfile
from pathlib import Path

import psycopg
import pytest
from conftest import as_oneroster_12, write_roster
from flowhelp import APPROVER, Product, csv_bytes, district_run, runs
from storehelp import STUDENTS, line, values

from flows.pipeline import approve_held_sync
from tasks.process import Refused
from tasks.process.roster import approve_roster
from tasks.process.steps import discard_held
from tasks.store import add_district, held_run

NEW = ("s5", "0000000005", "eve@students.example.org")
ROSTER_FILES = ("orgs.csv", "users.csv", "classes.csv", "enrollments.csv")


def test_a_preview_by_the_drop_is_emailed_recorded_and_deleted_and_writes_nothing(
    product: Product,
) -> None:
    p = product
    rows = [line(ssid=s[1], gender="F") for s in STUDENTS] + [line(ssid="123", gender="F")]
    p.put("d1", "preview/check.csv", csv_bytes(rows))

    assert district_run("d1").is_completed()

    assert values(p.url, "d1") == {}  # nothing written but the run record
    (run,) = runs(p.url)
    assert (run["kind"], run["status"], run["file_name"]) == ("preview", "succeeded", "check.csv")
    assert (run["matched"], run["updated"], run["error_rows"]) == (4, 4, 1)
    (mail,) = p.mail_to("d1")
    assert mail["Subject"] == "d1: preview — 5 rows, 4 would be updated, 1 with errors"
    text = body(mail)
    assert "this is a preview of what a sync of this file would do" in text
    assert (
        "What would change (field: from -> to, students) - gender: (no value yet) -> F: 4" in text
    )
    assert "deleted from preview/ now that this email is out" in text
    assert f"Run {run['run_id']} (preview)" in text
    assert p.remote("d1") == ["preview"]
    assert not list((p.sftp.drop_dir / "d1" / "preview").iterdir())


def test_a_preview_whose_email_could_not_go_out_is_kept_for_the_next_run(
    product: Product, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = product
    monkeypatch.setenv("DEMOGRAPHICS_SMTP_URL", "smtp://127.0.0.1:9")  # nothing listens there
    p.put("d1", "preview/check.csv", csv_bytes([line(ssid=STUDENTS[0][1], gender="F")]))

    assert district_run("d1").is_completed()

    assert [f.name for f in (p.sftp.drop_dir / "d1" / "preview").iterdir()] == ["check.csv"]
    (run,) = runs(p.url)
    assert run["kind"] == "preview" and run["email_status"] == "failed"


def test_one_night_on_a_local_drop_roster_then_preview_then_the_file(
    product: Product, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = product
    drop = tmp_path / "drop"
    monkeypatch.setenv("DEMOGRAPHICS_DROP_URL", drop.as_uri())
    for name, data in roster_files(tmp_path / "r", [*STUDENTS, NEW]).items():
        (drop / "d1" / "roster").mkdir(parents=True, exist_ok=True)
        (drop / "d1" / "roster" / name).write_bytes(data)
    (drop / "d1" / "preview").mkdir()
    (drop / "d1" / "preview" / "try.csv").write_bytes(csv_bytes([line(ssid=NEW[1], gender="M")]))
    (drop / "d1" / "sync.csv").write_bytes(csv_bytes([line(ssid=NEW[1], gender="F")]))

    assert district_run("d1").is_completed()

    assert [(r["kind"], r["status"]) for r in runs(p.url)] == [
        ("roster", "succeeded"),
        ("preview", "succeeded"),  # the new student is matched in the preview too
        ("sync", "succeeded"),
    ]
    assert runs(p.url)[1]["matched"] == 1
    assert values(p.url, "d1")["s5"]["gender"] == "F"
    assert sorted(p.name for p in (drop / "d1").rglob("*") if p.is_file()) == []
    subjects = [m["Subject"] for m in p.mail_to("d1")]
    assert [s.split(" ")[1] for s in subjects] == ["roster", "preview", "sync"]


def test_a_workbook_in_the_drop_is_told_once_then_deleted_by_retention(product: Product) -> None:
    p = product
    p.put("d1", "students.xlsx", b"PK\x03\x04 a workbook")
    p.put("d1", "roster/users.txt", b"not a roster file")

    assert district_run("d1").is_completed()
    assert district_run("d1").is_completed()  # the next night: not told again

    roster_told, told = p.mail_to("d1")  # one notice per folder, each file named once
    assert told["Subject"] == "d1: 1 file in the drop is not a CSV file"
    text = body(told)
    assert "this folder takes demographics files saved as CSV" in text
    assert 'save it as "CSV UTF-8 (Comma delimited) (*.csv)", then upload the .csv' in text
    assert "students.xlsx" in text and "deleted from the drop after 7 days" in text
    assert "roster/users.txt" in body(roster_told) and "users.txt" not in text
    assert "a OneRoster export: its CSV files, or one .zip of them" in body(roster_told)
    assert p.remote("d1") == ["roster", "students.xlsx"] and runs(p.url) == []

    with psycopg.connect(p.url) as conn:  # a week and more later
        conn.execute("UPDATE core.drop_files SET first_seen = now() - interval '8 days'")
    assert district_run("d1").is_completed()

    assert p.remote("d1") == ["roster"] and roster_folder(p) == []
    deleted = [body(m) for m in p.mail_to("d1")[2:]]
    assert len(deleted) == 2  # one notice per folder
    assert any("students.xlsx" in t for t in deleted)
    assert any("roster/users.txt" in t for t in deleted)


def roster_files(tmp: Path, students: list[tuple[str, str, str]]) -> dict[str, bytes]:
    folder = write_roster(tmp, students, district="d1")
    return {name: (folder / name).read_bytes() for name in ROSTER_FILES}


def put_roster(p: Product, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        p.put("d1", f"roster/{name}", data)


def roster_folder(p: Product) -> list[str]:
    folder = p.sftp.drop_dir / "d1" / "roster"
    return sorted(f.name for f in folder.iterdir()) if folder.exists() else []


def active_students(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            """SELECT s.sourced_id FROM core.students s JOIN core.districts d USING (district_id)
               WHERE d.code = 'd1' AND s.active"""
        ).fetchall()
    return {r[0] for r in rows}


def roster_runs(url: str) -> list[dict]:
    return [r for r in runs(url) if r["kind"] == "roster"]


def body(message) -> str:  # type: ignore[no-untyped-def]
    """The plain text as one line (the mail wraps long lines)."""
    return " ".join(str(message.get_body(("plain",)).get_content()).split())


def test_a_new_student_in_tonights_roster_is_matched_tonight(
    product: Product, tmp_path: Path
) -> None:
    p = product
    put_roster(p, roster_files(tmp_path / "r", [*STUDENTS, NEW]))
    p.put("d1", "demographics.csv", csv_bytes([line(ssid=NEW[1], gender="F")]))

    assert district_run("d1").is_completed()

    assert values(p.url, "d1")["s5"]["gender"] == "F"  # matched the same night
    assert roster_folder(p) == [] and p.remote("d1") == ["roster"]
    (loaded,) = roster_runs(p.url)
    assert loaded["status"] == "succeeded" and loaded["file_name"] == "roster/ (4 files)"
    subjects = [m["Subject"] for m in p.mail_to("d1")]
    assert subjects[0] == "d1: roster loaded (roster/ (4 files))"
    assert "students: 1 added, 0 updated, 0 deactivated, 5 active" in body(p.mail_to("d1")[0])
    assert "sync succeeded" in subjects[1]


def test_the_same_roster_again_changes_nothing_even_zipped(
    product: Product, tmp_path: Path
) -> None:
    p = product
    files = roster_files(tmp_path / "r", [*STUDENTS, NEW])
    put_roster(p, files)
    assert district_run("d1").is_completed()
    mails = len(p.mail_to("d1"))
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as archive:
        for name, data in files.items():
            archive.writestr(f"export/{name}", data)
    p.put("d1", "roster/oneroster.zip", packed.getvalue())

    assert district_run("d1").is_completed()

    first, again = roster_runs(p.url)
    assert again["status"] == "succeeded" and again["same_as_run_id"] == first["run_id"]
    assert again["file_name"] == "roster/oneroster.zip"
    assert len(p.mail_to("d1")) == mails  # nothing to tell
    assert roster_folder(p) == []


def test_an_invalid_roster_loads_nothing_and_says_file_row_column_and_code(
    product: Product, tmp_path: Path
) -> None:
    p = product
    files = roster_files(tmp_path / "r", [*STUDENTS, NEW])
    files["enrollments.csv"] += b"e9,,,no-such-class,d1-sch,s1,student,false,,\n"
    put_roster(p, files)
    p.put("d1", "demographics.csv", csv_bytes([line(ssid=STUDENTS[0][1], gender="M")]))

    assert district_run("d1").is_completed()

    assert "s5" not in active_students(p.url)  # nothing of it was loaded
    assert values(p.url, "d1")["s1"]["gender"] == "M"  # the files go on with the roster in use
    (rejected,) = roster_runs(p.url)
    assert rejected["status"] == "rejected" and rejected["errors"] == 1
    mail = p.mail_to("d1")[0]
    assert mail["Subject"] == "d1: roster not loaded: 1 error (roster/ (4 files))"
    assert (
        "error unknown_reference enrollments.csv row 8, column classSourcedId: "
        "classSourcedId is not a class in classes.csv"
    ) in body(mail)
    assert roster_folder(p) == []  # the district's whole list is not left lying in the drop


def test_a_roster_waits_for_its_last_file(product: Product, tmp_path: Path) -> None:
    p = product
    files = roster_files(tmp_path / "r", [*STUDENTS, NEW])
    users = files.pop("users.csv")
    put_roster(p, files)
    assert district_run("d1").is_completed()
    assert roster_runs(p.url) == [] and roster_folder(p) == sorted(files)
    assert p.mail_to("d1") == []

    p.put("d1", "roster/users.csv", users)
    assert district_run("d1").is_completed()
    assert "s5" in active_students(p.url) and roster_folder(p) == []


def held_roster(p: Product, tmp_path: Path) -> int:
    """A roster with half of d1's students gone: the guard holds it."""
    put_roster(p, roster_files(tmp_path / "r", STUDENTS[:2]))
    assert district_run("d1").is_completed()
    (held,) = roster_runs(p.url)
    assert held["status"] == "held"
    return int(held["run_id"])


def test_a_roster_that_would_deactivate_too_many_is_held_then_approved(
    product: Product, tmp_path: Path
) -> None:
    p = product
    held = held_roster(p, tmp_path)
    assert active_students(p.url) == {"s1", "s2", "s3", "s4"}
    assert roster_folder(p) == sorted(ROSTER_FILES)  # kept while held
    mail = p.mail_to("d1")[0]
    assert mail["Subject"] == f"d1: roster held for a data manager (roster/ (4 files), run {held})"
    text = body(mail)
    assert "it would deactivate 2 of the district's 4 active students (50.0%)" in text
    assert "School of d1: 2 of 4 active students would be deactivated" in text
    assert f"demographics approve {held} --as YOUR_EMAIL" in text

    assert district_run("d1").is_completed()  # the next night: still held, said once
    assert len(roster_runs(p.url)) == 1 and len(p.mail_to("d1")) == 1

    refused = approve_held_sync(held, approved_by="nobody@example.org", return_state=True)
    assert refused.is_failed() and active_students(p.url) == {"s1", "s2", "s3", "s4"}
    result = approve_held_sync(held, approved_by=APPROVER)

    assert result["status"] == "succeeded" and result["file"] == "deleted"
    assert active_students(p.url) == {"s1", "s2"} and roster_folder(p) == []
    recorded = {r["run_id"]: r for r in runs(p.url)}
    assert recorded[held]["resolution"] == "approved"
    assert recorded[result["run_id"]]["requested_by"] == APPROVER
    assert "roster loaded" in p.mail_to("d1")[-1]["Subject"]


def test_a_held_roster_discarded_on_the_command_line_changes_nothing_and_is_deleted(
    product: Product, tmp_path: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    p = product
    held = held_roster(p, tmp_path)
    refused = cli("discard", held, "--as", "stranger@example.org")
    assert refused.exit_code == 2 and roster_folder(p) == sorted(ROSTER_FILES)

    discarded = cli("discard", held, "--as", APPROVER)

    assert discarded.exit_code == 0 and "discard-held-sync: Completed" in discarded.output
    assert roster_folder(p) == []
    assert active_students(p.url) == {"s1", "s2", "s3", "s4"}
    assert {r["run_id"]: r for r in runs(p.url)}[held]["resolution"] == "discarded"


def test_every_student_of_a_school_gone_is_held_whatever_the_limit(
    product: Product, tmp_path: Path
) -> None:
    p = product
    with psycopg.connect(p.url) as conn:
        conn.execute("UPDATE core.district_settings SET roster_limit = 1")
    put_roster(p, roster_files(tmp_path / "r", []))
    assert district_run("d1").is_completed()
    (held,) = roster_runs(p.url)
    assert held["status"] == "held"
    assert "every active student of School of d1" in body(p.mail_to("d1")[0])


def test_a_held_roster_left_past_retention_is_deleted_and_its_hold_discarded(
    product: Product, tmp_path: Path
) -> None:
    p = product
    held = held_roster(p, tmp_path)
    with psycopg.connect(p.url) as conn:
        conn.execute("UPDATE core.drop_files SET first_seen = now() - interval '8 days'")

    assert district_run("d1").is_completed()

    assert roster_folder(p) == [] and active_students(p.url) == {"s1", "s2", "s3", "s4"}
    assert {r["run_id"]: r for r in runs(p.url)}[held]["resolution"] == "discarded"
    assert "old files deleted" in p.mail_to("d1")[-1]["Subject"]


def test_a_oneroster_12_export_by_the_drop_waits_for_roles_then_loads(
    product: Product, tmp_path: Path
) -> None:
    p = product
    folder = as_oneroster_12(write_roster(tmp_path / "r", [*STUDENTS, NEW], district="d1"))
    files = {f.name: f.read_bytes() for f in folder.iterdir()}
    roles = files.pop("roles.csv")
    put_roster(p, files)
    assert district_run("d1").is_completed()
    assert roster_runs(p.url) == [] and "roles.csv" not in roster_folder(p)  # it waits

    p.put("d1", "roster/roles.csv", roles)
    assert district_run("d1").is_completed()

    (loaded,) = roster_runs(p.url)
    assert loaded["status"] == "succeeded" and "s5" in active_students(p.url)
    assert roster_folder(p) == []


def test_a_district_added_by_an_operator_takes_its_first_roster_by_the_drop(
    product: Product, tmp_path: Path
) -> None:
    p = product
    with psycopg.connect(p.url, autocommit=True) as conn:
        add_district(conn, "d3", "District Three", "T1@example.org", "operator")
    folder = write_roster(
        tmp_path / "r", [("n1", "0000000031", "nia@students.example.org")], district="org-3"
    )
    for f in folder.iterdir():
        p.put("d3", f"roster/{f.name}", f.read_bytes())
    p.put("d3", "demographics.csv", csv_bytes([line(ssid="0000000031", gender="F")]))

    assert district_run("d3").is_completed()

    assert values(p.url, "d3")["n1"]["gender"] == "F"
    to_d3 = [m for m in p.smtp.messages() if m["X-Demographics-District"] == "d3"]
    assert [m["Subject"].split(":")[1].split()[0] for m in to_d3] == ["roster", "sync"]
    assert all(m["To"] == "t1@example.org" for m in to_d3)  # granted by the roster: as staff
    with psycopg.connect(p.url) as conn:
        assert conn.execute("SELECT count(*) FROM core.pending_managers").fetchone() == (0,)


def test_a_new_export_replaces_a_held_roster(product: Product, tmp_path: Path) -> None:
    p = product
    held = held_roster(p, tmp_path)
    for name in ROSTER_FILES:
        (p.sftp.drop_dir / "d1" / "roster" / name).unlink()
    put_roster(p, roster_files(tmp_path / "fixed", [*STUDENTS, NEW]))

    assert district_run("d1").is_completed()

    recorded = {r["run_id"]: r for r in runs(p.url)}
    assert recorded[held]["resolution"] == "discarded"
    assert "a newer roster" in recorded[held]["resolved_by"]
    assert "s5" in active_students(p.url) and roster_folder(p) == []
    refused = approve_held_sync(held, approved_by=APPROVER, return_state=True)
    assert refused.is_failed() and "already discarded" in (refused.message or "")


def test_a_held_roster_that_kept_an_old_time_is_still_approved(
    product: Product, tmp_path: Path
) -> None:
    p = product
    put_roster(p, roster_files(tmp_path / "r", STUDENTS[:2]))
    ten_days_ago = time.time() - 10 * 86400  # as WinSCP, `sftp -p` or `rsync -t` keep it
    for name in ROSTER_FILES:
        os.utime(p.sftp.drop_dir / "d1" / "roster" / name, (ten_days_ago, ten_days_ago))
    assert district_run("d1").is_completed()
    (held,) = roster_runs(p.url)
    assert held["status"] == "held"

    result = approve_held_sync(held["run_id"], approved_by=APPROVER)

    assert result["file"] == "deleted" and active_students(p.url) == {"s1", "s2"}


def test_an_approval_that_lost_its_hold_meanwhile_loads_nothing(
    product: Product, tmp_path: Path
) -> None:
    p = product
    held_id = held_roster(p, tmp_path)
    with psycopg.connect(p.url) as conn:
        held = held_run(conn, held_id)  # as the approval flow read it, before ...
    discard_held(held_id, APPROVER, "test")  # ... another data manager discarded it

    refused = approve_roster(held, APPROVER, "test")

    assert isinstance(refused, Refused) and "decided meanwhile" in refused.reason
    assert active_students(p.url) == {"s1", "s2", "s3", "s4"}


def test_the_same_export_after_a_command_line_load_is_loaded_again(
    product: Product, tmp_path: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    p = product
    files = roster_files(tmp_path / "a", [*STUDENTS, NEW])
    put_roster(p, files)
    assert district_run("d1").is_completed()
    other = write_roster(tmp_path / "b", STUDENTS, district="d1")  # s5 gone again
    assert cli("roster", "load", other, "--district", "d1").exit_code == 0
    assert "s5" not in active_students(p.url)

    put_roster(p, files)
    assert district_run("d1").is_completed()

    assert [r["same_as_run_id"] for r in roster_runs(p.url)] == [None, None]
    assert "s5" in active_students(p.url)


def test_a_roster_whose_email_could_not_go_out_is_kept(
    product: Product, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = product
    monkeypatch.setenv("DEMOGRAPHICS_SMTP_URL", "smtp://127.0.0.1:9")  # nothing listens there
    files = roster_files(tmp_path / "r", [*STUDENTS, NEW])
    files["enrollments.csv"] += b"e9,,,no-such-class,d1-sch,s1,student,false,,\n"
    put_roster(p, files)

    assert district_run("d1").is_completed()

    (rejected,) = roster_runs(p.url)
    assert rejected["status"] == "rejected" and rejected["email_status"] == "failed"
    assert roster_folder(p) == sorted(ROSTER_FILES)  # the errors' only copy: kept

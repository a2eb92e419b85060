"""The flows, run for real through a Prefect API (the test harness), against a real database,
a real SFTP server on 127.0.0.1 and a real SMTP server whose messages are parsed back."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncssh
import psycopg
import pytest
from flowhelp import (
    APPROVER,
    D2_STUDENTS,
    MANAGERS,
    Product,
    csv_bytes,
    decoded,
    district_run,
    latest_artifact,
    parts,
    prefect_tables,
    runs,
    stored_files,
    wait_until_prefect_has_stored_everything,
)
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
from prefect.client.schemas.objects import FlowRun
from prefect.states import State
from storehelp import STUDENTS, line, set_limits, values

from flows.pipeline import (
    apply_access_views,
    approve_held_sync,
    change_teacher_fields,
    discard_held_sync,
    nightly_sync,
    process_file,
)
from tasks import process
from tasks.sync import run_file

XSS = "<img src=x onerror=alert(1)>"
FORMULA = '=HYPERLINK("http://x")'


def hold_ready(p: Product) -> int:
    """d1 has values for all four students, then a file that changes all of them is held."""
    first = csv_bytes([line(ssid=s[1], gender="F") for s in STUDENTS])
    assert run_file(p.url, "d1", first, "first.csv", requested_by="test").status == "succeeded"
    p.put("d1", "change.csv", csv_bytes([line(ssid=s[1], gender="M") for s in STUDENTS]))
    assert district_run("d1").is_completed()
    held = [r for r in runs(p.url) if r["status"] == "held"]
    assert len(held) == 1 and held[0]["file_name"] == "change.csv"
    return int(held[0]["run_id"])


# --- the whole product -------------------------------------------------------------------


def test_nightly_syncs_two_districts_emails_their_managers_and_empties_the_drop(
    product: Product, served: Any
) -> None:
    p = product
    first = csv_bytes([line(ssid="0000000001", gender="F", race="Asian")])
    p.put("d1", "b-monday.csv", first, timedelta(minutes=10))
    p.put("d1", "a-tuesday.CSV", csv_bytes([line(ssid="0000000002", gender="M")]), timedelta(0))
    p.put("d2", "d2.csv", csv_bytes([line(email="eve@students.example.org", flags=",Y,,,,,")]))

    state = nightly_sync(return_state=True)

    assert state.is_completed(), state.message
    assert values(p.url, "d1")["s1"]["race"] == "Asian"
    assert values(p.url, "d1")["s2"]["gender"] == "M"
    assert values(p.url, "d2")["s5"]["migrant"] is True
    assert p.remote("d1") == [] and p.remote("d2") == []
    assert list(p.staging.iterdir()) == []
    recorded = runs(p.url)
    assert [r["file_name"] for r in recorded if r["file_name"] != "d2.csv"] == [
        "b-monday.csv",
        "a-tuesday.CSV",
    ]  # oldest first, whatever the names
    assert all(r["status"] == "succeeded" for r in recorded)
    assert all(r["email_status"] == "sent" and r["file_deleted_at"] for r in recorded)
    assert len(p.mail_to("d1")) == 2 and len(p.mail_to("d2")) == 1
    message = p.mail_to("d2")[0]
    assert message["Subject"].startswith("d2: sync succeeded")
    assert "1 rows, 1 updated" in message["Subject"]
    assert message["From"] == "demographics-sync@service.example"
    text, html, attachments = parts(message)
    assert "succeeded" in text and "<table" in html and 'style="' in html
    assert [a.get_filename() for a in attachments] == ["issues.csv"]
    assert all(r.tls for r in p.smtp.received)  # STARTTLS, verified against the test CA
    table = json.loads(latest_artifact("nightly-demographics"))
    assert table == [
        {
            "district": "d1",
            "run": "ok",
            "files": 2,
            "outcomes": "2 Succeeded",
            "matched": 2,
            "updated": 2,
            "unmatched": 0,
            "errors": 0,
        },
        {
            "district": "d2",
            "run": "ok",
            "files": 1,
            "outcomes": "1 Succeeded",
            "matched": 1,
            "updated": 1,
            "unmatched": 0,
            "errors": 0,
        },
    ]


def test_the_results_email_escapes_html_and_neutralises_formulas(product: Product) -> None:
    p = product
    set_limits(p.url, "d1", error=0.9)
    p.put(
        "d1",
        "bad.csv",
        csv_bytes(
            [
                line(ssid="0000000001", gender=XSS),
                line(ssid="0000000002", gender=FORMULA.replace(",", " ")),
                line(ssid="0000000003", gender="F"),
            ]
        ),
    )

    assert process_file("d1", "bad.csv", return_state=True).is_completed()

    (message,) = p.mail_to("d1")
    text, html, (attachment,) = parts(message)
    assert XSS not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert XSS in text  # the plain-text part shows the value as it was
    cells = [c for r in csv.reader(io.StringIO(attachment.get_content())) for c in r]
    formula = FORMULA.replace(",", " ")
    assert "'" + formula in cells and formula not in cells
    assert XSS in cells  # not a formula: left as it is
    assert values(p.url, "d1")["s3"]["gender"] == "F"  # the valid row was applied


def test_preview_emails_the_report_and_keeps_the_file(product: Product) -> None:
    p = product
    p.put("d1", "look.csv", csv_bytes([line(ssid="0000000001", gender="F")]))

    result = process_file("d1", "look.csv", mode="preview")

    assert result["status"] == "preview" and result["file"] == "kept"
    assert p.remote("d1") == ["look.csv"] and runs(p.url) == [] and values(p.url, "d1") == {}
    assert p.mail_to("d1")[0]["Subject"].startswith("d1: preview")


# --- the SFTP drop -------------------------------------------------------------------------


def test_an_unknown_host_key_is_refused_and_nothing_is_taken(product: Product) -> None:
    p = product
    p.put("d1", "a.csv", csv_bytes([line(ssid="0000000001", gender="F")]))
    p.sftp.write_known_hosts(asyncssh.generate_private_key("ssh-ed25519"))

    state = district_run("d1")

    assert state.is_failed()
    assert "host key" in (state.message or "")
    assert p.remote("d1") == ["a.csv"] and runs(p.url) == []


def test_a_changed_host_key_fails_the_nightly_run_naming_the_districts(
    product: Product, served: Any
) -> None:
    p = product
    p.put("d1", "a.csv", csv_bytes([line(ssid="0000000001", gender="F")]))
    p.sftp.restart(new_host_key=True)

    state = nightly_sync(return_state=True)

    assert state.is_failed()
    assert "2 of 2 districts failed: d1, d2" in (state.message or "")
    why = {run.parameters["district"]: run.state.message for run in district_runs_of(state)}
    refused = f"the SFTP drop at 127.0.0.1:{p.sftp.port} presented a host key that"
    assert set(why) == {"d1", "d2"} and all(refused in (m or "") for m in why.values()), why
    assert p.remote("d1") == ["a.csv"] and runs(p.url) == [] and values(p.url, "d1") == {}
    assert p.sftp.connections_so_far() == 2  # one try per district: never retried


def district_runs_of(nightly: State) -> list[FlowRun]:
    """The sync-district-drop runs a nightly run started, as the Prefect API has them."""
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(
                    any_=[nightly.state_details.flow_run_id]
                )
            )
        )


def test_sftp_dropping_mid_transfer_keeps_the_file_and_the_staging_folder_empty(
    product: Product,
) -> None:
    p = product
    p.put("d1", "a.csv", csv_bytes([line(ssid="0000000001", gender="F")]))
    p.sftp.drop_transfers(10)  # every try is cut off after its first chunk

    state = process_file("d1", "a.csv", return_state=True)

    assert state.is_failed()
    assert "could not be reached after 2 tries" in (state.message or "")
    assert p.remote("d1") == ["a.csv"] and list(p.staging.iterdir()) == []
    assert runs(p.url) == []

    p.sftp.drop_transfers(1)  # once: the retry finishes the job
    assert process_file("d1", "a.csv", return_state=True).is_completed()
    assert p.remote("d1") == [] and values(p.url, "d1")["s1"]["gender"] == "F"


def test_a_settling_file_is_left_for_the_next_run(
    product: Product, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = product
    monkeypatch.setenv("DEMOGRAPHICS_SETTLE_SECONDS", "120")
    p.put("d1", "uploading.csv", csv_bytes([line(ssid="0000000001", gender="F")]))
    p.put("d1", "done.csv", csv_bytes([line(ssid="0000000002", gender="M")]), timedelta(minutes=5))

    assert district_run("d1").is_completed()

    assert p.remote("d1") == ["uploading.csv"]
    assert [r["file_name"] for r in runs(p.url)] == ["done.csv"]


def test_files_past_retention_are_deleted_their_hold_discarded_and_managers_told(
    product: Product,
) -> None:
    p = product
    held = hold_ready(p)  # change.csv waits for a decision; the service first saw it now
    p.put("d1", "stale.csv", csv_bytes([line(ssid="0000000001", gender="M")]), timedelta(days=9))
    with psycopg.connect(p.url) as conn:  # as if both were first seen eight days ago
        conn.execute(
            "INSERT INTO core.drop_files (district_id, name, size, modified, first_seen) "
            "SELECT district_id, 'stale.csv', %s, %s, now() - interval '8 days' "
            "FROM core.districts WHERE code = 'd1'",
            (
                (p.sftp.drop_dir / "d1" / "stale.csv").stat().st_size,
                datetime.fromtimestamp(
                    int((p.sftp.drop_dir / "d1" / "stale.csv").stat().st_mtime), UTC
                ),
            ),
        )
        conn.execute(
            "UPDATE core.drop_files SET first_seen = now() - interval '8 days' "
            "WHERE name = 'change.csv'"
        )

    assert district_run("d1").is_completed()

    assert p.remote("d1") == []
    (run,) = [r for r in runs(p.url) if r["run_id"] == held]
    assert run["resolution"] == "discarded" and run["resolved_by"].startswith("prefect:")
    notice = p.mail_to("d1")[-1]
    assert "2 old files deleted" in notice["Subject"]
    body = str(notice.get_body(("plain",)).get_content())  # type: ignore[union-attr]
    assert "stale.csv" in body and "change.csv" in body and "7 days" in body
    assert values(p.url, "d1")["s1"]["gender"] == "F"  # neither file was applied


def test_a_fresh_upload_that_kept_an_old_time_is_synced_not_deleted(product: Product) -> None:
    p = product  # WinSCP, `sftp -p` and `rsync -t` keep the original modification time
    p.put("d1", "kept-time.csv", csv_bytes([line(ssid="0000000001", gender="M")]), timedelta(30))

    assert district_run("d1").is_completed()

    assert values(p.url, "d1")["s1"]["gender"] == "M" and p.remote("d1") == []
    assert all("old files deleted" not in str(m["Subject"]) for m in p.smtp.messages())


def test_a_file_asked_for_by_name_is_refused_while_it_may_still_be_uploading(
    product: Product, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = product
    monkeypatch.setenv("DEMOGRAPHICS_SETTLE_SECONDS", "120")
    p.put("d1", "now.csv", csv_bytes([line(ssid="0000000001", gender="M")]))

    state = process_file("d1", "now.csv", return_state=True)

    assert state.is_failed() and "may still be uploading" in (state.message or "")
    assert p.remote("d1") == ["now.csv"] and runs(p.url) == []
    gone = process_file("d1", "never-there.csv", return_state=True)
    assert gone.name == "Nothing to do" and gone.result() == {"status": "gone", "file": "gone"}


def test_only_the_file_that_was_read_is_deleted(product: Product) -> None:
    p = product
    data = csv_bytes([line(ssid="0000000001", gender="M")])
    path = p.put("d1", "same-name.csv", data, timedelta(minutes=5))
    fetched = process.fetch_file("d1", "same-name.csv")
    assert fetched is not None
    path.write_bytes(data + b"0000000002,,F,,,,,,,,,\n")  # a new upload under the same name

    settled = process.settle_file("d1", process.source_of(fetched), "succeeded", None)

    assert settled.action == "kept" and "replaced" in settled.reason
    assert p.remote("d1") == ["same-name.csv"]


def test_hostile_names_are_refused_and_never_touched(product: Product) -> None:
    p = product
    for name in ("../../etc/passwd.csv", "a/b.csv", "..csv", "-rf.csv", ""):
        state = process_file("d1", name, return_state=True)
        assert state.is_failed() and "refusing the file" in (state.message or ""), name
    assert process_file("../d2", "a.csv", return_state=True).is_failed()
    p.put("d1", "back\\slash.csv", b"x")
    p.put("d1", "-rf.csv", b"x")
    target = p.put("d1", "target.txt", b"x")
    (p.sftp.drop_dir / "d1" / "link.csv").symlink_to(target)

    assert district_run("d1").is_completed()

    assert p.remote("d1") == ["-rf.csv", "back\\slash.csv", "link.csv", "target.txt"]
    assert runs(p.url) == []
    refused, other = p.mail_to("d1")
    assert other["Subject"] == "d1: 1 file in the drop is not a CSV file"  # target.txt
    notice = refused
    assert "3 entries in the drop were not taken" in notice["Subject"]
    body = str(notice.get_body(("plain",)).get_content())  # type: ignore[union-attr]
    assert "link.csv: a link" in body and "-rf.csv: unsafe name" in body
    told = len(p.smtp.received)
    assert district_run("d1").is_completed()
    assert len(p.smtp.received) == told  # told once, not every night


def test_a_file_over_the_size_limit_is_rejected_unread(
    product: Product, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = product
    monkeypatch.setenv("DEMOGRAPHICS_MAX_FILE_MB", "0.0001")  # about 100 bytes
    p.put("d1", "big.csv", csv_bytes([line(ssid=f"00000000{i:02d}", gender="F") for i in range(9)]))

    assert district_run("d1").is_completed()

    (run,) = runs(p.url)
    assert run["status"] == "rejected" and "over the limit" in run["message"]
    assert run["rows"] is None and run["file_deleted_at"] is not None
    assert p.remote("d1") == [] and values(p.url, "d1") == {}
    assert "big.csv rejected: too large" in p.mail_to("d1")[-1]["Subject"]


# --- failures ------------------------------------------------------------------------------


def test_an_unreachable_database_keeps_the_file_and_says_why(
    product: Product, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = product
    p.put("d1", "a.csv", csv_bytes([line(ssid="0000000001", gender="F")]))
    monkeypatch.setenv("DEMOGRAPHICS_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")

    state = process_file("d1", "a.csv", return_state=True)

    assert state.is_failed()
    assert "cannot connect to the database at postgresql://nobody@127.0.0.1:1" in (
        state.message or ""
    )
    assert p.remote("d1") == ["a.csv"] and p.smtp.received == []


def test_smtp_down_still_commits_the_sync_and_records_the_email_failure(
    product: Product,
) -> None:
    p = product
    p.put("d1", "a.csv", csv_bytes([line(ssid="0000000001", gender="F")]))
    p.smtp.stop()

    result = process_file("d1", "a.csv")

    assert result["status"] == "succeeded" and result["file"] == "deleted"
    assert values(p.url, "d1")["s1"]["gender"] == "F"
    (run,) = runs(p.url)
    assert run["email_status"] == "failed" and "127.0.0.1" in run["email_detail"]
    assert p.remote("d1") == []


def test_a_failed_apply_keeps_the_file_and_one_district_never_stops_another(
    product: Product, served: Any
) -> None:
    p = product
    with psycopg.connect(p.url) as conn:  # d2's writes fail inside the transaction
        conn.execute(
            """CREATE FUNCTION pg_temp_fail() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN
                 IF NEW.student_id IN (SELECT student_id FROM core.students s
                     JOIN core.districts d USING (district_id) WHERE d.code = 'd2') THEN
                   RAISE EXCEPTION 'boom';
                 END IF;
                 RETURN NEW;
               END $$;
               CREATE TRIGGER fail_d2 BEFORE INSERT OR UPDATE ON core.student_demographics
               FOR EACH ROW EXECUTE FUNCTION pg_temp_fail();"""
        )
    try:
        p.put("d1", "a.csv", csv_bytes([line(ssid="0000000001", gender="F")]))
        p.put("d2", "first.csv", csv_bytes([line(ssid="0000000005", gender="F")]))
        p.put("d2", "second.csv", csv_bytes([line(ssid="0000000006", gender="F")]))

        state = nightly_sync(return_state=True)
    finally:
        with psycopg.connect(p.url) as conn:
            conn.execute("DROP TRIGGER fail_d2 ON core.student_demographics")
            conn.execute("DROP FUNCTION pg_temp_fail()")

    assert state.is_failed() and "1 of 2 districts failed: d2" in (state.message or "")
    assert values(p.url, "d1")["s1"]["gender"] == "F" and p.remote("d1") == []
    assert values(p.url, "d2") == {}
    assert p.remote("d2") == ["first.csv", "second.csv"]  # the later file waits too
    failed = [r for r in runs(p.url) if r["status"] == "failed"]
    assert [r["file_name"] for r in failed] == ["first.csv"]
    assert failed[0]["email_status"] == "sent"
    assert "sync failed" in p.mail_to("d2")[0]["Subject"]
    table = {r["district"]: r for r in json.loads(latest_artifact("nightly-demographics"))}
    assert table["d2"]["run"].startswith("failed") and table["d1"]["outcomes"] == "1 Succeeded"


# --- held syncs ----------------------------------------------------------------------------


def test_a_held_sync_waits_then_is_applied_when_approved(product: Product) -> None:
    p = product
    held = hold_ready(p)
    assert p.remote("d1") == ["change.csv"]
    hold_mail = p.mail_to("d1")[-1]
    assert "held for approval" in hold_mail["Subject"]
    text = str(hold_mail.get_body(("plain",)).get_content())  # type: ignore[union-attr]
    assert "approve-held-sync" in text and str(held) in text
    # What would change, counted by value: never who.
    assert "What would change (field: from -> to, students)\n- gender: F -> M: 4\n" in text.replace(
        "\r\n", "\n"
    )
    html = str(hold_mail.get_body(("html",)).get_content())  # type: ignore[union-attr]
    assert "What would change" in html and STUDENTS[0][1] not in text + html

    assert district_run("d1").is_completed()  # the next night
    assert [r["status"] for r in runs(p.url)] == ["succeeded", "held"]

    result = approve_held_sync(held, approved_by=APPROVER)

    assert result["status"] == "succeeded" and result["file"] == "deleted"
    assert {v["gender"] for v in values(p.url, "d1").values()} == {"M"}
    recorded = {r["run_id"]: r for r in runs(p.url)}
    assert recorded[held]["resolution"] == "approved"
    assert recorded[held]["resolved_by"] == APPROVER
    assert recorded[result["run_id"]]["requested_by"] == APPROVER
    assert p.remote("d1") == []
    assert "sync succeeded" in p.mail_to("d1")[-1]["Subject"]


def test_a_held_sync_discarded_changes_nothing_and_deletes_the_file(product: Product) -> None:
    p = product
    held = hold_ready(p)

    result = discard_held_sync(held, discarded_by=APPROVER)

    assert result["file"] == "deleted" and p.remote("d1") == []
    assert {v["gender"] for v in values(p.url, "d1").values()} == {"F"}
    run = next(r for r in runs(p.url) if r["run_id"] == held)
    assert run["resolution"] == "discarded" and run["resolved_by"] == APPROVER
    assert f"held sync {held} discarded" in p.mail_to("d1")[-1]["Subject"]
    again = approve_held_sync(held, approved_by=APPROVER, return_state=True)
    assert again.is_failed() and "already discarded" in (again.message or "")


def test_approving_refuses_a_file_replaced_after_the_hold(product: Product) -> None:
    p = product
    held = hold_ready(p)
    p.put("d1", "change.csv", csv_bytes([line(ssid="0000000001", gender="M")]))

    state = approve_held_sync(held, approved_by=APPROVER, return_state=True)

    assert state.is_failed() and "replaced after the hold" in (state.message or "")
    assert {v["gender"] for v in values(p.url, "d1").values()} == {"F"}
    assert next(r for r in runs(p.url) if r["run_id"] == held)["resolution"] is None


def test_only_a_data_manager_of_the_district_approves_or_discards(product: Product) -> None:
    p = product
    held = hold_ready(p)
    for person in ("stranger@students.example.org", "t1@example.org.evil", MANAGERS["d1"]):
        for state in (
            approve_held_sync(held, approved_by=person, return_state=True),
            discard_held_sync(held, discarded_by=person, return_state=True),
        ):
            assert state.is_failed()
            assert "not a data manager of district d1" in (state.message or ""), person
            assert person not in (state.message or "")  # never echo who may be a student
    assert next(r for r in runs(p.url) if r["run_id"] == held)["resolution"] is None
    assert {v["gender"] for v in values(p.url, "d1").values()} == {"F"}
    assert p.remote("d1") == ["change.csv"]


def test_approve_and_discard_on_the_command_line_run_the_flows(product: Product, cli) -> None:  # type: ignore[no-untyped-def]
    p = product
    held = hold_ready(p)
    refused = cli("discard", held, "--as", "stranger@example.org")
    assert refused.exit_code == 2 and refused.stdout == ""
    assert refused.stderr.startswith("error: that person is not a data manager of district d1")
    assert refused.stderr.count("\n") == 1 and "stranger@example.org" not in refused.stderr

    approved = cli("approve", held, "--as", APPROVER)

    assert approved.exit_code == 0 and "approve-held-sync: Completed" in approved.output
    assert {v["gender"] for v in values(p.url, "d1").values()} == {"M"}
    assert p.remote("d1") == []


def test_a_data_manager_changes_teacher_fields_through_the_flow(product: Product) -> None:
    refused = change_teacher_fields("d1", ["gender"], "stranger@example.org", return_state=True)
    assert refused.is_failed() and "not a data manager" in (refused.message or "")

    assert change_teacher_fields("d1", ["sed", "gender"], APPROVER)["fields"] == ["gender", "sed"]
    assert change_teacher_fields("d1", [], APPROVER)["fields"] == []
    wrong = change_teacher_fields("d1", ["ssid"], APPROVER, return_state=True)
    assert wrong.is_failed() and "ssid" in (wrong.message or "")
    with psycopg.connect(product.url) as conn:
        acts = conn.execute(
            "SELECT actor, detail FROM core.access_acts WHERE act = 'teacher_fields' "
            "ORDER BY act_id"
        ).fetchall()
    assert [a[0] for a in acts] == [APPROVER, APPROVER]


def test_results_go_to_the_data_managers_when_the_district_has_no_list(
    product: Product,
) -> None:
    p = product
    with psycopg.connect(p.url) as conn:
        conn.execute("UPDATE core.district_settings SET notification_recipients = '{}'")
    p.put("d1", "a.csv", csv_bytes([line(ssid="0000000001", gender="F")]))

    assert process_file("d1", "a.csv", return_state=True).is_completed()

    (received,) = p.smtp.received
    assert received.rcpt_tos == [APPROVER]


def test_the_apply_access_views_flow_can_run_at_any_time(product: Product) -> None:
    with psycopg.connect(product.url) as conn:
        conn.execute("DROP VIEW reporting.student_demographics")
    for _ in range(2):  # it puts the view back, and again changes nothing
        assert apply_access_views(return_state=True).is_completed()
        with psycopg.connect(product.url) as conn:
            grantees = conn.execute(
                "SELECT grantee FROM information_schema.role_table_grants "
                "WHERE table_schema = 'reporting' AND table_name = 'student_demographics' "
                "AND privilege_type = 'SELECT'"
            ).fetchall()
        assert ("demographics_reporting",) in grantees


# --- the outcome where the run was started ----------------------------------------------


def file_run_logs(state: State, wanted: str) -> list[str]:
    """The log lines of one flow run that start with `wanted`, as its run page shows them.
    Logs reach the API in batches: flush them, then read until the line is there (10 s)."""
    import time

    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
    found: list[str] = []
    for _ in range(50):
        with get_client(sync_client=True) as client:
            found = [e.message for e in client.read_logs(log_filter=run)]
        if any(m.startswith(wanted) for m in found):
            break
        time.sleep(0.2)
    return [m for m in found if m.startswith(wanted)]


def test_each_file_run_ends_named_for_its_outcome_with_its_artifact_and_line(
    product: Product,
) -> None:
    p = product
    set_limits(p.url, "d1", error=0.9)
    good = csv_bytes([line(ssid="0000000001", gender="F"), line(ssid="0000000002", gender="Q")])
    p.put("d1", "good.csv", good)
    p.put("d2", "bad.csv", b"SSID,SSID,email\n0000000005,0000000005,eve@students.example.org\n")

    succeeded = process_file("d1", "good.csv", return_state=True)
    rejected = process_file("d2", "bad.csv", return_state=True)

    assert (succeeded.type.value, succeeded.name) == ("COMPLETED", "Succeeded")
    assert (rejected.type.value, rejected.name) == ("COMPLETED", "Rejected")
    assert succeeded.result()["status"] == "succeeded"  # a parent flow still reads it
    line_of_good = file_run_logs(succeeded, "good.csv: Succeeded")
    assert len(line_of_good) == 1 and "; error rows 3" in line_of_good[0]
    reason = file_run_logs(rejected, "bad.csv: Rejected")
    assert len(reason) == 1 and "not applied" in reason[0] and "duplicate_column 1" in reason[0]

    d1 = latest_artifact("demographics-d1")
    assert d1.startswith("## good.csv: Succeeded\n")
    assert "| 2 | 1 | 0 | 1 | 1 | 0 | 0 |" in d1  # rows, errors, warnings, matched, updated...
    assert "| invalid\\_gender | error | 1 |" in d1  # underscores escaped for markdown
    assert "**What to do next**" in d1 and str(succeeded.state_details.flow_run_id) in d1
    assert not [v for s in STUDENTS for v in s[1:] if v in d1]  # no SSID, no email
    assert latest_artifact("demographics-d2").startswith("## bad.csv: Rejected\n")

    p.put("d1", "again.csv", good)  # the same bytes again
    again = process_file("d1", "again.csv", return_state=True)
    assert again.name == "Already applied"
    p.put("d1", "same-values.csv", csv_bytes([line(ssid="0000000001", gender="F")]))
    assert process_file("d1", "same-values.csv", return_state=True).name == "Nothing to do"
    p.put("d1", "peek.csv", csv_bytes([line(ssid="0000000002", gender="M")]))
    assert process_file("d1", "peek.csv", "preview", return_state=True).name == "Previewed"
    assert latest_artifact("demographics-d1").startswith("## peek.csv: Previewed\n")


# --- privacy -------------------------------------------------------------------------------


def test_nothing_prefect_stores_holds_a_student_value(
    product: Product, served: Any, prefect_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = product
    set_limits(p.url, "d1", error=0.9)
    marker = "Zqxv-ethnicity-marker"
    rows = [
        line(ssid="0000000001", email="ana@students.example.org", gender="F", ethnicity=marker),
        line(ssid="0000000002", gender="Q-invalid-marker"),
        line(email="nobody-known@students.example.org", gender="F"),
        line(ssid="1.23457E+09", gender="M"),
    ]
    p.put("d1", "private.csv", csv_bytes(rows))
    p.put("d2", "d2.csv", csv_bytes([line(ssid="0000000005", email="eve@students.example.org")]))
    assert nightly_sync(return_state=True).is_completed()
    held = hold_ready_again(p)
    assert approve_held_sync(held, approved_by=APPROVER, return_state=True).is_completed()
    with psycopg.connect(p.url) as conn:  # a failed apply: the database refuses a value
        conn.execute(
            "ALTER TABLE core.student_demographics ADD CONSTRAINT no_x CHECK (race <> 'Xrace')"
        )
    try:
        p.put("d2", "fails.csv", csv_bytes([line(ssid="0000000006", race="Xrace")]))
        assert district_run("d2").is_failed()
    finally:
        with psycopg.connect(p.url) as conn:
            conn.execute("ALTER TABLE core.student_demographics DROP CONSTRAINT no_x")
    monkeypatch.setenv("DEMOGRAPHICS_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    p.put("d1", "later.csv", csv_bytes([line(ssid="0000000003", gender="F")]))
    assert process_file("d1", "later.csv", return_state=True).is_failed()
    wait_until_prefect_has_stored_everything(prefect_api.database)

    secrets = [marker, "Q-invalid-marker", "nobody-known@students.example.org", "1.23457E+09"]
    secrets += ["Xrace"] + [
        s for _sid, ssid, email in STUDENTS + D2_STUDENTS for s in (ssid, email)
    ]
    tables = prefect_tables(prefect_api.database)
    # the runs, their logs and parameters, the outcome artifacts and their events are there
    assert all(tables[t] for t in ("flow_run", "log", "artifact", "events", "event_resources"))
    assert latest_artifact("demographics-d1") and latest_artifact("demographics-d2")
    stored = {f"table {name}": data for name, data in tables.items()}
    stored |= {str(f): f.read_bytes() for f in stored_files([prefect_api.home])}
    found = [
        (where, s, data[max(0, data.index(s.encode()) - 80) : data.index(s.encode()) + 40])
        for where, data in stored.items()
        for s in secrets
        if s.encode() in data
    ]
    assert found == []
    # The emails show the offending value, never a valid row's (decoded: parts are encoded).
    mail = [decoded(m) for m in p.smtp.messages()]
    assert not any(marker in text for text in mail)
    assert any("Q-invalid-marker" in text for text in mail)


def hold_ready_again(p: Product) -> int:
    """A held file for d1 after the first files: every stored gender changes."""
    p.put("d1", "flip.csv", csv_bytes([line(ssid=s[1], gender="M") for s in STUDENTS]))
    assert district_run("d1").is_completed()
    return int([r for r in runs(p.url) if r["status"] == "held"][-1]["run_id"])

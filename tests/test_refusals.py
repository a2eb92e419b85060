"""A person's request the service will not carry out (not a data manager, no such held run,
an unknown district, an unsafe name, a file still uploading) is not a failure: the run ends
Failed with the one-line reason as its message, and its logs (its task runs' included, read
back from the Prefect API) hold no traceback and never the email it refused. On the command
line the same refusals are one line on stderr, exit 2, and start no flow run."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from flowhelp import APPROVER, Product, csv_bytes, district_run, runs
from prefect import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import Log
from prefect.logging.handlers import APILogHandler
from prefect.states import State
from storehelp import STUDENTS, line, set_limits, values

from flows.cli import flow_outcome
from flows.pipeline import (
    approve_held_sync,
    change_teacher_fields,
    discard_held_sync,
    process_file,
)
from tasks.drop import FetchedFile
from tasks.process import settling_refusal
from tasks.sync import run_file

STRANGER = "ana.student@students.example.org"  # a refused email: may be a student's
CHANGE = csv_bytes([line(ssid=s[1], gender="M") for s in STUDENTS])


def held_run(p: Product) -> int:
    """d1 has values for its four students; change.csv, in the drop, changes all of them and
    is held (run_file directly: the same record the nightly run makes, without a flow)."""
    first = csv_bytes([line(ssid=s[1], gender="F") for s in STUDENTS])
    assert run_file(p.url, "d1", first, "first.csv", requested_by="test").status == "succeeded"
    set_limits(p.url, "d1", hold=0.25)
    p.put("d1", "change.csv", CHANGE)
    held = run_file(p.url, "d1", CHANGE, "change.csv", requested_by="test")
    assert held.status == "held" and held.run_id is not None
    return held.run_id


def run_logs(state: State) -> list[Log]:
    """Every log line of the state's flow run, its task runs' included, as the API stores
    them (formatted: a logged exception's traceback is part of the message)."""
    APILogHandler().flush()  # the client sends logs in batches; the API writes them at once
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    where = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(log_filter=where, limit=200)
            if any(log.task_run_id is None and "Finished in state" in log.message for log in logs):
                return logs
            assert time.monotonic() < deadline, "the flow run's last log never arrived"
            time.sleep(0.1)
            APILogHandler().flush()


def assert_refused(state: State, reason: str, *hidden: str, tasks_ran: bool = True) -> None:
    """Failed, the message is the one-line reason, and the logs have no traceback and none
    of `hidden` (the email refused). `tasks_ran`: a task refused it (the request's own checks
    are plain calls in the flow, not task runs)."""
    assert state.is_failed() and state.name == "Refused", state
    message = state.message or ""
    assert reason in message and "\n" not in message, message
    logs = run_logs(state)
    assert any(log.task_run_id is not None for log in logs) == tasks_ran  # their logs are read
    text = "\n".join(log.message for log in logs)
    assert "Traceback" not in text, text
    assert any(log.level == logging.WARNING and reason in log.message for log in logs)
    for secret in hidden:
        assert secret not in message and secret not in text


def test_a_refused_approval_ends_failed_with_the_reason_and_no_traceback(
    product: Product,
) -> None:
    p = product
    held = held_run(p)
    succeeded = held - 1

    assert_refused(approve_held_sync(999, APPROVER, return_state=True), "there is no run 999")
    assert_refused(
        approve_held_sync(succeeded, APPROVER, return_state=True),
        f"run {succeeded} was not held (its status is succeeded)",
    )
    assert_refused(
        approve_held_sync(held, STRANGER, return_state=True),
        "that person is not a data manager of district d1",
        STRANGER,
    )
    (p.sftp.drop_dir / "d1" / "change.csv").unlink()
    assert_refused(
        approve_held_sync(held, APPROVER, return_state=True),
        "change.csv is no longer in the drop; upload it again",
    )
    p.put("d1", "change.csv", csv_bytes([line(ssid="0000000001", gender="M")]))
    assert_refused(
        approve_held_sync(held, APPROVER, return_state=True),
        f"change.csv in the drop is not the file held by run {held} (its SHA-256 differs)",
    )
    # Nothing was applied, the hold still waits, nothing was emailed.
    assert {v["gender"] for v in values(p.url, "d1").values()} == {"F"}
    assert next(r for r in runs(p.url) if r["run_id"] == held)["resolution"] is None
    assert p.smtp.received == []

    p.put("d1", "change.csv", CHANGE)
    assert discard_held_sync(held, APPROVER, return_state=True).is_completed()
    assert_refused(
        approve_held_sync(held, APPROVER, return_state=True),
        f"held run {held} was already discarded by {APPROVER}",
    )


def test_a_refused_discard_or_teacher_fields_change_ends_failed_without_a_traceback(
    product: Product,
) -> None:
    p = product
    held = held_run(p)

    assert_refused(discard_held_sync(999, APPROVER, return_state=True), "there is no run 999")
    assert_refused(
        discard_held_sync(held, STRANGER, return_state=True),
        "that person is not a data manager of district d1",
        STRANGER,
    )
    assert p.remote("d1") == ["change.csv"]
    assert next(r for r in runs(p.url) if r["run_id"] == held)["resolution"] is None

    assert_refused(
        change_teacher_fields("d1", ["gender"], STRANGER, return_state=True),
        "that person is not a data manager of district d1",
        STRANGER,
    )
    assert_refused(
        change_teacher_fields("d1", ["gender", "ssid"], APPROVER, return_state=True),
        "not a demographic field: ssid; the fields are gender, ethnicity",
    )
    assert_refused(  # a value typed in a field's place is not repeated: it may be a student's
        change_teacher_fields("d1", ["0099887766", STRANGER], APPROVER, return_state=True),
        "not a demographic field: 2 other values; the fields are gender",
        "0099887766",
        STRANGER,
    )
    assert_refused(
        change_teacher_fields("nowhere", ["gender"], APPROVER, return_state=True),
        "district nowhere is not in the database",
    )
    with psycopg.connect(p.url) as conn:
        acts = conn.execute(
            "SELECT count(*) FROM core.access_acts WHERE act = 'teacher_fields'"
        ).fetchone()
    assert acts == (0,)  # no refused change was recorded as made


def test_a_refused_file_request_ends_failed_and_leaves_the_drop_alone(
    product: Product, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = product
    p.put("d1", "now.csv", csv_bytes([line(ssid="0000000001", gender="M")]))

    assert_refused(
        process_file("nowhere", "now.csv", return_state=True),
        "district nowhere is not in the database; an operator adds it first",
        tasks_ran=False,
    )
    assert_refused(
        process_file("../d1", "now.csv", return_state=True),
        "refusing a district code that is not valid: a district code is 1 to 64",
        tasks_ran=False,
    )
    assert_refused(
        process_file(STRANGER, "now.csv", return_state=True),
        "refusing a district code that is not valid",
        STRANGER,
        tasks_ran=False,
    )
    assert_refused(
        process_file("d1", "../d1/now.csv", return_state=True),
        "refusing the file '../d1/now.csv'",
        tasks_ran=False,
    )
    monkeypatch.setenv("DEMOGRAPHICS_SETTLE_SECONDS", "120")
    assert_refused(process_file("d1", "now.csv", return_state=True), "may still be uploading")

    assert p.remote("d1") == ["now.csv"] and runs(p.url) == [] and p.smtp.received == []


def test_a_file_uploaded_again_during_the_nightly_run_waits_without_failing_the_district(
    product: Product, monkeypatch: pytest.MonkeyPatch
) -> None:
    # b.csv was settled when the drop was listed, then uploaded again while a.csv was read:
    # it may still be uploading, so it and the files after it wait; nothing failed
    p = product
    monkeypatch.setenv("DEMOGRAPHICS_SETTLE_SECONDS", "120")
    hour = timedelta(hours=1)
    p.put("d1", "a.csv", csv_bytes([line(ssid="0000000001", gender="M")]), age=3 * hour)
    again = p.put("d1", "b.csv", csv_bytes([line(ssid="0000000002", gender="M")]), age=2 * hour)
    p.put("d1", "c.csv", csv_bytes([line(ssid="0000000003", gender="M")]), age=hour)
    touched: list[bool] = []

    def upload_b_again() -> None:
        if not touched:
            touched.append(True)
            again.touch()

    p.sftp.on_read = upload_b_again

    state = district_run("d1")

    assert state.is_completed(), state
    assert touched and p.remote("d1") == ["b.csv", "c.csv"]
    assert [r["file_name"] for r in runs(p.url)] == ["a.csv"]
    text = "\n".join(log.message for log in run_logs(state))
    assert "b.csv was not taken" in text and "the 1 files after it wait" in text
    assert "Traceback" not in text


# --- the command line ---------------------------------------------------------------------


def flow_runs(name: str) -> int:
    with get_client(sync_client=True) as client:
        found = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[name])))
    return len(found)


def test_a_refused_decision_on_the_command_line_is_one_line_and_no_flow_run(
    product: Product, cli: Any
) -> None:
    p = product
    held = held_run(p)
    before = (flow_runs("approve-held-sync"), flow_runs("discard-held-sync"))
    cases = [
        (("approve", "999", "--as", APPROVER), "error: there is no run 999"),
        (("discard", held - 1, "--as", APPROVER), f"error: run {held - 1} was not held"),
        (("approve", held, "--as", STRANGER), "error: that person is not a data manager of"),
        (("discard", held, "--as", STRANGER), "error: that person is not a data manager of"),
    ]
    for args, start in cases:
        result = cli(*args)
        assert result.exit_code == 2, result.output
        assert result.stdout == ""
        assert result.stderr.startswith(start) and result.stderr.count("\n") == 1, result.stderr
        assert STRANGER not in result.stderr

    assert (flow_runs("approve-held-sync"), flow_runs("discard-held-sync")) == before
    assert next(r for r in runs(p.url) if r["run_id"] == held)["resolution"] is None


def test_a_refusal_the_flow_finds_ends_the_command_with_its_reason(
    product: Product, cli: Any
) -> None:
    p = product
    held = held_run(p)
    (p.sftp.drop_dir / "d1" / "change.csv").unlink()  # checked only once the file is fetched

    result = cli("approve", held, "--as", APPROVER)

    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == (
        "error: approve-held-sync refused: change.csv is no longer in the drop; upload it "
        "again to be judged afresh"
    )


def test_a_failed_flow_run_on_the_command_line_ends_with_its_reason_and_exit_2(
    product: Product, served: Any, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEMOGRAPHICS_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")

    result = cli("nightly")

    assert result.exit_code == 2 and result.stdout == ""
    last = result.stderr.splitlines()[-1]
    assert last.startswith("error: nightly-sync failed: DatabaseUnavailable: ")
    assert "cannot connect to the database at postgresql://nobody@127.0.0.1:1" in last


def test_the_last_line_of_a_flow_command() -> None:
    prefix = "Flow run encountered an exception: "
    assert flow_outcome("nightly-sync", "Completed", True, None) == "nightly-sync: Completed"
    assert flow_outcome("x", "Failed", False, prefix + "NightlyFailed: 1 of 2 districts") == (
        "error: x failed: NightlyFailed: 1 of 2 districts"
    )
    assert (
        flow_outcome("x", "Refused", False, "there is no run 9")
        == "error: x refused: there is no run 9"
    )
    assert flow_outcome("x", "Crashed", False, None) == "error: x ended Crashed"


def test_a_file_settles_once_the_settling_time_has_passed() -> None:
    now = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    fetched = FetchedFile("a.csv", b"x", 1, now - timedelta(seconds=120), "0" * 64)
    assert settling_refusal(fetched, 120, now) is None
    young = settling_refusal(fetched, 121, now)
    assert young is not None and young.reason == (
        "a.csv was modified 120 s ago and may still be uploading; it is left in the drop "
        "(try again after 121 s)"
    )

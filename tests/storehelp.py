"""Helpers for tests against the real database: load a roster, sync a file, read values back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from conftest import HEADER

from tasks.match import VALUE_COLUMNS
from tasks.roster import load_roster, read_roster
from tasks.sync import SyncOutcome, run_file

STUDENTS = [
    ("s1", "0000000001", "ana@students.example.org"),
    ("s2", "0000000002", "ben@students.example.org"),
    ("s3", "0000000003", "cy@students.example.org"),
    ("s4", "0000000004", "dee@students.example.org"),
]


def load(url: str, code: str, folder: Path) -> Any:
    with psycopg.connect(url) as conn:
        result = load_roster(conn, code, read_roster(folder))
    assert result.loaded, result.issues
    return result


def sync(
    url: str,
    code: str,
    lines: list[str],
    mode: str = "sync",
    approve: bool = False,
    header: str = HEADER,
    name: str = "upload.csv",
    lock_wait_seconds: float = 5.0,
    approved_by: str | None = None,
) -> SyncOutcome:
    data = (header + "\n" + "".join(line + "\n" for line in lines)).encode()
    return run_file(
        url,
        code,
        data,
        name,
        mode=mode,  # type: ignore[arg-type]
        approve=approve,
        requested_by="test",
        lock_wait_seconds=lock_wait_seconds,
        approved_by=approved_by,
    )


def values(url: str, code: str) -> dict[str, dict[str, Any]]:
    """sourcedId -> stored values (only students that have a values row)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            """SELECT s.sourced_id, d.gender, d.ethnicity, d.race, d.english_learner, d.migrant,
                      d.gifted_learner, d.special_ed, d.sed, d.homeless, d.foster
               FROM core.student_demographics d JOIN core.students s USING (student_id)
               JOIN core.districts t USING (district_id) WHERE t.code = %s""",
            (code,),
        ).fetchall()
    names = list(VALUE_COLUMNS)
    return {r[0]: dict(zip(names, r[1:], strict=True)) for r in rows}


def snapshot(url: str) -> tuple[list[Any], list[Any], list[Any]]:
    """Everything a sync may write, in a stable order: values, history, runs."""
    with psycopg.connect(url) as conn:
        return (
            conn.execute(
                "SELECT d.*, s.sourced_id FROM core.student_demographics d "
                "JOIN core.students s USING (student_id) ORDER BY student_id"
            ).fetchall(),
            conn.execute(
                "SELECT * FROM core.demographic_changes ORDER BY run_id, student_id, field"
            ).fetchall(),
            conn.execute("SELECT run_id, status FROM core.sync_runs ORDER BY run_id").fetchall(),
        )


def line(
    ssid: str = "",
    email: str = "",
    gender: str = "",
    ethnicity: str = "",
    race: str = "",
    flags: str = ",,,,,,",
) -> str:
    return f"{ssid},{email},{gender},{ethnicity},{race},{flags}"


def codes_at(outcome: SyncOutcome, code: str) -> list[int | None]:
    issues = outcome.report.issues
    return issues.filter(issues["code"] == code)["row"].to_list()


def set_limits(url: str, code: str, error: float | None = None, hold: float | None = None) -> None:
    """Change a district's safeguard limits (a district setting)."""
    with psycopg.connect(url) as conn:
        if error is not None:
            conn.execute(
                "UPDATE core.district_settings SET error_limit = %s WHERE district_id = "
                "(SELECT district_id FROM core.districts WHERE code = %s)",
                (error, code),
            )
        if hold is not None:
            conn.execute(
                "UPDATE core.district_settings SET hold_limit = %s WHERE district_id = "
                "(SELECT district_id FROM core.districts WHERE code = %s)",
                (hold, code),
            )

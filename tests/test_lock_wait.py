"""The district lock's promises (README "Concurrency"): an undo or a roster load of a district
waits for the lock another sync, undo or roster load holds, then runs; past
DEMOGRAPHICS_LOCK_WAIT_SECONDS (default 60) it is refused, and the command says so in one line
(exit 2). Waiting is shown in PostgreSQL itself (lockhelp), never inferred from a live thread."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import HEADER, write_roster
from lockhelp import HeldLock
from storehelp import STUDENTS, line, load, snapshot, sync, values

from tasks.roster import load_roster, read_roster
from tasks.settings import Settings
from tasks.store import DistrictBusy
from tasks.undo import undo_run

D = "d1"
BUSY = (
    "error: another sync, undo or roster load of district d1 is running; "
    "try again when it has finished"
)
EXE = Path(sys.executable).with_name("demographics")
NEWCOMER = ("s5", "0000000005", "eve@students.example.org")


@pytest.fixture
def district(db: str, tmp_path: Path) -> str:
    load(db, D, write_roster(tmp_path / "roster", STUDENTS))
    return db


def students(url: str) -> list[tuple[str, bool]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT sourced_id, active FROM core.students ORDER BY 1").fetchall()


def in_thread(target: Any) -> tuple[threading.Thread, list[Any]]:
    """Run `target` in a thread; its result, or the exception it raised, lands in the list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(target())
        except Exception as exc:  # the test asserts on it
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def command(*args: str, **env: str | None) -> subprocess.Popen[str]:
    """The installed `demographics` command as a process; env values of None are unset."""
    environment = {**os.environ, **{k: v for k, v in env.items() if v is not None}}
    for name in [k for k, v in env.items() if v is None]:
        environment.pop(name, None)
    return subprocess.Popen(
        [str(EXE), *args],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# --- undo ----------------------------------------------------------------------------------


def test_an_undo_waits_for_the_district_lock_then_runs(district: str) -> None:
    run = sync(district, D, [line("0000000001", gender="F")])
    held = HeldLock(district, D)
    try:
        worker, out = in_thread(lambda: undo_run(district, run.run_id or 0, "test", 20))
        assert len(held.wait_for_waiters(alive=worker.is_alive)) == 1
        assert values(district, D)["s1"]["gender"] == "F"  # not undone while it waits
    finally:
        held.release()
    worker.join(20)
    (outcome,) = out
    assert outcome.undone_run_id == run.run_id and outcome.restored == 1
    assert values(district, D)["s1"]["gender"] is None


def test_an_undo_is_refused_after_waiting_the_lock_wait(district: str) -> None:
    run = sync(district, D, [line("0000000001", gender="F")])
    before = snapshot(district)
    held = HeldLock(district, D)
    try:
        started = time.monotonic()
        with pytest.raises(DistrictBusy, match="another sync, undo or roster load of district d1"):
            undo_run(district, run.run_id or 0, "test", lock_wait_seconds=0.3)
        assert time.monotonic() - started >= 0.3
    finally:
        held.release()
    assert snapshot(district) == before  # no undo run, nothing restored


# --- roster load ---------------------------------------------------------------------------


def test_a_roster_load_waits_for_the_district_lock_then_runs(district: str, tmp_path: Path) -> None:
    snapshot_ = read_roster(write_roster(tmp_path / "next", [*STUDENTS, NEWCOMER]))
    held = HeldLock(district, D)

    def load_next() -> Any:
        with psycopg.connect(district) as conn:
            return load_roster(conn, D, snapshot_, lock_wait_seconds=20)

    try:
        worker, out = in_thread(load_next)
        assert len(held.wait_for_waiters(alive=worker.is_alive)) == 1
        assert "s5" not in dict(students(district))  # not loaded while it waits
    finally:
        held.release()
    worker.join(20)
    (result,) = out
    assert result.loaded
    assert dict(students(district))["s5"] is True


def test_a_roster_load_is_refused_after_waiting_the_lock_wait(
    district: str, tmp_path: Path
) -> None:
    snapshot_ = read_roster(write_roster(tmp_path / "next", [*STUDENTS, NEWCOMER]))
    before = students(district)
    held = HeldLock(district, D)
    try:
        started = time.monotonic()
        with (
            psycopg.connect(district) as conn,
            pytest.raises(DistrictBusy, match="another sync, undo or roster load of district d1"),
        ):
            load_roster(conn, D, snapshot_, lock_wait_seconds=0.3)
        assert time.monotonic() - started >= 0.3
    finally:
        held.release()
    assert students(district) == before


# --- the commands --------------------------------------------------------------------------


def test_the_commands_say_the_district_is_busy_in_one_line(district: str, tmp_path: Path) -> None:
    run = sync(district, D, [line("0000000001", gender="F")])
    before = (snapshot(district), students(district))
    upload = tmp_path / "upload.csv"
    upload.write_text(f"{HEADER}\n{line('0000000002', gender='M')}\n", encoding="utf-8")
    roster = write_roster(tmp_path / "next", [*STUDENTS, NEWCOMER])
    held = HeldLock(district, D)
    try:
        # All three at once: each waits its second for the same lock, and is refused.
        wait = {"DEMOGRAPHICS_LOCK_WAIT_SECONDS": "1"}
        commands = {
            "sync": command("sync", str(upload), "--district", D, **wait),
            "undo": command("undo", str(run.run_id), **wait),
            "roster load": command("roster", "load", str(roster), "--district", D, **wait),
        }
        waited: set[int] = set()  # backends seen waiting: each command waited before refusing
        deadline = time.monotonic() + 60
        while any(p.poll() is None for p in commands.values()):
            assert time.monotonic() < deadline, "the commands never ended"
            waited.update(held.waiters_in_line())
            time.sleep(0.02)
        finished = {name: p.communicate(timeout=60) for name, p in commands.items()}
    finally:
        held.release()
    for name, (_stdout, stderr) in finished.items():
        assert commands[name].returncode == 2, (name, stderr)
        assert stderr.splitlines() == [BUSY], (name, stderr)
    assert len(waited) == 3
    assert (snapshot(district), students(district)) == before


def test_by_default_a_second_sync_waits_and_runs_once_the_lock_is_released(
    district: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DEMOGRAPHICS_LOCK_WAIT_SECONDS")
    assert Settings.model_fields["lock_wait_seconds"].default == 60  # as the README says
    upload = tmp_path / "upload.csv"
    upload.write_text(f"{HEADER}\n{line('0000000001', gender='F')}\n", encoding="utf-8")
    held = HeldLock(district, D)
    try:
        second = command("sync", str(upload), "--district", D)
        (waiter,) = held.wait_for_waiters(alive=lambda: second.poll() is None)
        # Still waiting a second on: not refused at once, as a zero wait would be.
        time.sleep(1)
        assert held.waiters() == [waiter] and second.poll() is None
        assert values(district, D) == {}
    finally:
        held.release()
    stdout, stderr = second.communicate(timeout=10)
    assert second.returncode == 0, stderr
    assert stdout.startswith("succeeded (run 1)")
    assert values(district, D)["s1"]["gender"] == "F"

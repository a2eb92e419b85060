"""Nothing is lost: concurrent syncs, failures in the middle of apply, and undo."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest
from conftest import write_roster
from lockhelp import HeldLock
from storehelp import STUDENTS, line, load, set_limits, snapshot, sync, values

from tasks.store import DistrictBusy
from tasks.undo import UndoRefused, undo_run

D = "d1"


@pytest.fixture
def district(db: str, tmp_path: Path) -> str:
    load(db, D, write_roster(tmp_path / "roster", STUDENTS))
    load(db, "d2", write_roster(tmp_path / "other", STUDENTS, district="org-2"))
    set_limits(db, D, hold=1)
    return db


# --- concurrency ---------------------------------------------------------------------------


def test_a_second_sync_of_the_same_district_is_refused_after_waiting(district: str) -> None:
    held = HeldLock(district, D)
    try:
        started = time.monotonic()
        with pytest.raises(DistrictBusy, match="another sync, undo or roster load of district d1"):
            sync(district, D, [line("0000000001", gender="F")], lock_wait_seconds=0.3)
        assert time.monotonic() - started >= 0.25
        with pytest.raises(DistrictBusy):
            sync(district, D, [line("0000000001", gender="F")], lock_wait_seconds=0)
    finally:
        held.release()
    assert values(district, D) == {}
    assert snapshot(district)[2] == []


def test_a_second_sync_waits_for_the_first_then_runs(district: str) -> None:
    held = HeldLock(district, D)
    results: list[str] = []
    worker = threading.Thread(
        target=lambda: results.append(
            sync(district, D, [line("0000000001", gender="F")], lock_wait_seconds=20).status
        )
    )
    worker.start()
    try:
        # Its backend waits for the lock, in PostgreSQL's own view (pg_locks, pg_stat_activity).
        assert len(held.wait_for_waiters(alive=worker.is_alive)) == 1
        assert values(district, D) == {} and snapshot(district)[2] == []  # nothing written yet
    finally:
        held.release()
    worker.join(20)
    assert results == ["succeeded"]
    assert values(district, D)["s1"]["gender"] == "F"


def test_different_districts_sync_in_parallel(district: str) -> None:
    held = HeldLock(district, D)
    try:
        out = sync(district, "d2", [line("0000000001", gender="M")], lock_wait_seconds=0)
        assert out.status == "succeeded"
    finally:
        held.release()


def test_concurrent_syncs_of_one_district_never_interleave(district: str) -> None:
    files = {
        "a.csv": [line(f"000000000{i}", gender="F", race="Asian") for i in range(1, 5)],
        "b.csv": [line(f"000000000{i}", gender="M", race="White") for i in range(1, 5)],
    }
    barrier = threading.Barrier(2)
    outcomes = {}

    def run(name: str) -> None:
        barrier.wait()
        outcomes[name] = sync(district, D, files[name], name=name, lock_wait_seconds=20)

    threads = [threading.Thread(target=run, args=(n,)) for n in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert {o.status for o in outcomes.values()} == {"succeeded"}
    first, second = sorted(outcomes.values(), key=lambda o: o.run_id or 0)
    with psycopg.connect(district) as conn:
        later = conn.execute(
            "SELECT DISTINCT field, old_value FROM core.demographic_changes WHERE run_id = %s",
            (second.run_id,),
        ).fetchall()
    # The later run saw every value the earlier one wrote: one ran after the other.
    first_values = (
        {("gender", "F"), ("race", "Asian")}
        if first.report.file.name == "a.csv"
        else {
            ("gender", "M"),
            ("race", "White"),
        }
    )
    assert set(later) == first_values
    final = {(v["gender"], v["race"]) for v in values(district, D).values()}
    assert final == ({("M", "White")} if second.report.file.name == "b.csv" else {("F", "Asian")})


# --- a failure in the middle of apply ------------------------------------------------------


def _fail_history_with(url: str, body: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(
            f"""CREATE OR REPLACE FUNCTION public.test_fault() RETURNS trigger
                LANGUAGE plpgsql AS $$ BEGIN {body}; RETURN NEW; END $$"""
        )
        conn.execute(
            "CREATE TRIGGER test_fault BEFORE INSERT ON core.demographic_changes "
            "FOR EACH ROW EXECUTE FUNCTION public.test_fault()"
        )


def _remove_fault(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("DROP TRIGGER IF EXISTS test_fault ON core.demographic_changes")
        conn.execute("DROP FUNCTION IF EXISTS public.test_fault()")


@pytest.mark.parametrize(
    "fault",
    [
        "RAISE EXCEPTION 'injected failure while writing history'",
        "PERFORM pg_terminate_backend(pg_backend_pid())",  # the connection dies mid-transaction
    ],
    ids=["error", "killed-connection"],
)
def test_a_failure_during_apply_leaves_the_database_exactly_as_before(
    district: str, fault: str
) -> None:
    sync(district, D, [line("0000000001", gender="F", race="Asian")])
    before = snapshot(district)
    _fail_history_with(district, fault)
    try:
        out = sync(
            district,
            D,
            [line("0000000001", gender="M", race="Pacific Islander"), line("0000000002", "", "F")],
        )
    finally:
        _remove_fault(district)
    assert out.status == "failed"
    assert "nothing was applied" in out.message and "SQLSTATE" in out.message
    assert "Pacific" not in out.message and "injected" not in out.message
    after = snapshot(district)
    assert after[0] == before[0]  # the UPDATE that ran before the failure is rolled back
    assert after[1] == before[1]
    assert after[2] == [*before[2], (out.run_id, "failed")]
    # The file can simply be synced again.
    again = sync(
        district,
        D,
        [line("0000000001", gender="M", race="Pacific Islander"), line("0000000002", "", "F")],
    )
    assert again.status == "succeeded"
    assert values(district, D)["s1"]["race"] == "Pacific Islander"


# --- undo ----------------------------------------------------------------------------------


def test_undo_restores_the_values_a_run_changed_as_a_new_run(district: str) -> None:
    sync(district, D, [line("0000000001", gender="F", flags="Y,,,,,,")])
    before = values(district, D)
    lines = [
        line("0000000001", gender="M", race="Asian", flags="N,,,,,,"),
        line("0000000002", "", "F"),
    ]
    run = sync(district, D, lines)
    assert values(district, D) != before
    outcome = undo_run(district, run.run_id or 0, "test")
    assert (outcome.restored, outcome.students, outcome.kept) == (4, 2, 0)
    restored = values(district, D)
    assert restored["s1"] == before["s1"]
    assert all(v is None for v in restored["s2"].values())
    with psycopg.connect(district) as conn:
        history = conn.execute(
            "SELECT student_id, field, old_value, new_value FROM core.demographic_changes "
            "WHERE run_id = %s ORDER BY student_id, field",
            (outcome.run_id,),
        ).fetchall()
        marks = conn.execute(
            "SELECT kind, undoes_run_id, undone_by FROM core.sync_runs WHERE run_id IN (%s, %s) "
            "ORDER BY run_id",
            (run.run_id, outcome.run_id),
        ).fetchall()
    assert [(f, o, n) for _s, f, o, n in history] == [
        ("english_learner", "N", "Y"),
        ("gender", "M", "F"),
        ("race", "Asian", None),
        ("gender", "F", None),
    ]
    assert marks == [("sync", None, outcome.run_id), ("undo", run.run_id, None)]
    # An undone file is no longer "already applied": syncing it again applies it.
    again = sync(district, D, lines)
    assert again.same_as_run_id is None and again.report.sync.updated == 2  # type: ignore[union-attr]


def test_undo_keeps_values_a_later_run_changed_and_says_so(district: str) -> None:
    first = sync(district, D, [line("0000000001", gender="F", race="Asian")])
    sync(district, D, [line("0000000001", gender="M")])
    outcome = undo_run(district, first.run_id or 0, "test")
    assert (outcome.restored, outcome.kept) == (1, 1)
    assert outcome.kept_examples == [("s1", "gender", (first.run_id or 0) + 1)]
    assert "changed again by later runs" in outcome.message
    stored = values(district, D)["s1"]
    assert (stored["gender"], stored["race"]) == ("M", None)


def test_undo_refuses_what_cannot_be_undone(district: str) -> None:
    with pytest.raises(UndoRefused, match="there is no run 99"):
        undo_run(district, 99, "test")
    run = sync(district, D, [line("0000000001", gender="F")])
    noop = sync(district, D, [line("0000000001", gender="F")])
    with pytest.raises(UndoRefused, match="changed no values"):
        undo_run(district, noop.run_id or 0, "test")
    undo = undo_run(district, run.run_id or 0, "test")
    with pytest.raises(UndoRefused, match=f"already undone by run {undo.run_id}"):
        undo_run(district, run.run_id or 0, "test")
    with pytest.raises(UndoRefused, match="only a succeeded sync"):
        undo_run(district, undo.run_id, "test")

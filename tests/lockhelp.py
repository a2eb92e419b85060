"""The district lock, seen from outside: hold it as a running sync would, and see who waits.

A thread or process that merely "is still running" may be slow, stuck elsewhere or not
started yet; one that waits for the lock shows in PostgreSQL: its backend waits on a Lock
(`pg_stat_activity.wait_event_type`), a lock of its is not granted (`pg_locks`), and the
holder's backend is among `pg_blocking_pids` of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg

from tasks.store import get_district, lock_district

WAITING_FOR = """
    SELECT a.pid FROM pg_stat_activity a
    WHERE a.datname = current_database() AND a.wait_event_type = 'Lock'
      AND %(holder)s = ANY (pg_blocking_pids(a.pid))
      AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted)
    ORDER BY a.backend_start"""


IN_LINE_FOR = """
    WITH RECURSIVE line(pid) AS (
        SELECT %(holder)s::integer
        UNION
        SELECT a.pid FROM pg_stat_activity a JOIN line ON line.pid = ANY (pg_blocking_pids(a.pid))
        WHERE a.datname = current_database() AND a.wait_event_type = 'Lock'
    )
    SELECT pid FROM line WHERE pid <> %(holder)s"""


class HeldLock:
    """Another session holding a district's lock, as a running sync would."""

    def __init__(self, url: str, code: str) -> None:
        self.url = url
        self.conn = psycopg.connect(url)
        district = get_district(self.conn, code)
        lock_district(self.conn.cursor(), district.district_id, code, 5)
        self.pid = self.conn.info.backend_pid

    def waiters(self) -> list[int]:
        """Backends waiting for this lock now, directly: when several wait for one row, the
        later ones queue behind the first (their blocker is that waiter, not the holder)."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            return [r[0] for r in conn.execute(WAITING_FOR, {"holder": self.pid})]

    def waiters_in_line(self) -> list[int]:
        """Backends waiting for this lock now, directly or queued behind another waiter."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            return [r[0] for r in conn.execute(IN_LINE_FOR, {"holder": self.pid})]

    def wait_for_waiters(
        self, count: int = 1, timeout: float = 30.0, alive: Callable[[], bool] | None = None
    ) -> list[int]:
        """Poll until `count` backends wait for this lock; their pids. A generous deadline:
        a command started as a process imports for a few seconds before it asks. `alive`
        says whether whoever should wait is still there (a thread, a process)."""
        deadline = time.monotonic() + timeout
        while len(found := self.waiters()) < count:
            assert alive is None or alive(), "it ended instead of waiting for the lock"
            assert time.monotonic() < deadline, f"{len(found)} of {count} waiters after {timeout} s"
            time.sleep(0.05)
        return found

    def release(self) -> None:
        if not self.conn.closed:
            self.conn.rollback()
            self.conn.close()


def backend_alive(url: str, pid: int) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return row is not None

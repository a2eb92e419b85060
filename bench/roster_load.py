"""Benchmark: loading a large district's OneRoster snapshot (`load_roster`), three ways.

    .venv/bin/python bench/roster.py load --students 1000000 [--runs 3] [--fresh]
    (or: make bench-roster STUDENTS=1000000 RUNS=3)

Why it exists: a district's nightly roster is a full snapshot, usually almost unchanged, and
the load must stay linear in students. Set-up (kept in the temp folder until --fresh): the
bench roster of N students (bench/roster.py) and a PostgreSQL (the embedded server in
`$TMPDIR/demographics-bench-roster-N/pgdata`, or DEMOGRAPHICS_DATABASE_URL). The snapshot is
read and checked once (`read_roster`, timed and printed); the loads are timed on it, each run:

- first: the full snapshot loaded as a new district's first roster (a district code of its
  own per run; the embedded bench database is made anew when the bench starts);
- again: the same snapshot loaded again (a nightly re-upload where nothing changed);
- changed: a snapshot where 1 % of users changed (every 100th user row: another family name,
  and every 1,000th student moved to the next school), loaded on top.

Tables are vacuumed and analysed before each timed load, as autovacuum would between nights.
Each line gives the seconds, the step times (the load's progress phases), the counts, the WAL
the server wrote for it, and the peak RSS of this process so far (the client; the server's
memory is not counted). Then min / median / max of each kind.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402
import psycopg  # noqa: E402
import psycopg.conninfo  # noqa: E402

from tasks.db import EMBEDDED_DATABASE, connect, embedded_url, stop_embedded, upgrade  # noqa: E402
from tasks.roster import load_roster, read_roster  # noqa: E402
from tasks.roster.read import RosterSnapshot  # noqa: E402

DISTRICT = "bench"
TABLES = ("schools", "students", "staff", "staff_schools", "classes", "enrollments")


@dataclass
class Steps:
    """A Progress that keeps how long each phase of the load took."""

    times: dict[str, float] = field(default_factory=dict)
    _name: str | None = None
    _start: float = 0.0

    def phase(self, name: str, total: int | None = None) -> None:
        self._close()
        self._name, self._start = name, time.perf_counter()

    def advance(self, done: int) -> None:
        return None

    def _close(self) -> None:
        if self._name is not None:
            self.times[self._name] = time.perf_counter() - self._start
            self._name = None

    def line(self) -> str:
        self._close()
        return " ".join(f"{k} {v:.1f}" for k, v in self.times.items())


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def changed_snapshot(snapshot: RosterSnapshot) -> RosterSnapshot:
    """The same snapshot with 1 % of users changed (see the module's docstring)."""
    users = snapshot.frames["users.csv"].with_row_index("_i")
    schools = snapshot.frames["orgs.csv"].filter(pl.col("type") == "school")["sourcedId"]
    move = (pl.col("_i") % 1000 == 999) & (pl.col("role") == "student")
    users = users.with_columns(
        familyName=pl.when(pl.col("_i") % 100 == 99)
        .then(pl.col("familyName") + "-Changed")
        .otherwise(pl.col("familyName")),
        orgSourcedIds=pl.when(move).then(pl.lit(schools[0])).otherwise(pl.col("orgSourcedIds")),
    ).drop("_i")
    return RosterSnapshot({**snapshot.frames, "users.csv": users}, snapshot.issues)


def prepare(url: str) -> None:
    """Vacuum and analyse the roster tables, and write the dirty pages out."""
    with psycopg.connect(url, autocommit=True) as conn:
        for table in TABLES:
            conn.execute(f"VACUUM (ANALYZE) core.{table}")
        conn.execute("CHECKPOINT")


def timed_load(url: str, district: str, snapshot: RosterSnapshot) -> tuple[float, int, str, str]:
    """Seconds, WAL bytes, step times and counts of one load."""
    steps = Steps()
    with connect(url) as conn:
        wal = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
        conn.commit()
        started = time.perf_counter()
        result = load_roster(conn, district, snapshot, progress=steps)
        seconds = time.perf_counter() - started
        assert result.loaded, result.issues[:5]
        written = conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (wal[0] if wal else None,)
        ).fetchone()
    counts = ", ".join(
        f"{k} +{c.added}/~{c.updated}/-{c.deactivated}" for k, c in result.counts.items()
    )
    return seconds, int(written[0]) if written else 0, steps.line(), counts


def setup(folder: Path, students: int, fresh: bool) -> str:
    if fresh and folder.exists():
        stop_embedded(folder / "pgdata")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "roster" / "enrollments.csv").exists():
        from roster import write_roster

        started = time.perf_counter()
        write_roster(folder / "roster", students)
        print(f"set-up: wrote the roster of {students:,} ({time.perf_counter() - started:.1f} s)")
    url = os.environ.get("DEMOGRAPHICS_DATABASE_URL")
    if url is None:  # ours: start from an empty database
        url = embedded_url(folder / "pgdata")
        admin = psycopg.conninfo.make_conninfo(url, dbname="postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {EMBEDDED_DATABASE} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {EMBEDDED_DATABASE}")
    with connect(url) as conn:
        upgrade(conn)
    return url


def summary(name: str, values: list[float]) -> str:
    return (
        f"{name}: min {min(values):.1f} s, median {statistics.median(values):.1f} s, "
        f"max {max(values):.1f} s"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench/roster.py load", description=__doc__)
    parser.add_argument("--students", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--fresh", action="store_true", help="rebuild the roster and database")
    args = parser.parse_args(argv)
    folder = Path(tempfile.gettempdir()) / f"demographics-bench-roster-{args.students}"
    url = setup(folder, args.students, args.fresh)
    started = time.perf_counter()
    snapshot = read_roster(folder / "roster")
    assert not snapshot.errors, snapshot.issues[:5]
    print(
        f"read_roster (read + check) of {args.students:,} students: "
        f"{time.perf_counter() - started:.1f} s, peak RSS {rss_mb():.0f} MB"
    )
    changed = changed_snapshot(snapshot)
    times: dict[str, list[float]] = {"first": [], "again": [], "changed": []}
    for run in range(1, args.runs + 1):
        for kind, data in (("first", snapshot), ("again", snapshot), ("changed", changed)):
            prepare(url)
            seconds, wal, steps, counts = timed_load(url, f"{DISTRICT}-{run}", data)
            times[kind].append(seconds)
            print(
                f"run {run} {kind}: {seconds:.1f} s, WAL {wal / 1e6:.0f} MB, "
                f"peak RSS {rss_mb():.0f} MB | {steps} | {counts}",
                flush=True,
            )
    for kind, values in times.items():
        print(summary(kind, values) + f", peak RSS {rss_mb():.0f} MB")


if __name__ == "__main__":
    main()

"""Benchmark: preview and sync of a large district's file, end to end, against the floor.

    .venv/bin/python bench/sync.py [--students 1000000] [--changed-share 0.3] [--runs 3]
                                   [--seed 11] [--fresh]

Set-up (once, kept in the temp folder until --fresh): a roster of N active students and a base
demographics file (bench/roster.py), loaded and synced into a PostgreSQL (the embedded server
in the bench folder, or DEMOGRAPHICS_DATABASE_URL), then a second file where about
--changed-share of the rows change at least one value. The district's hold limit is raised to
50 % so the 30 % file is applied rather than held (the hold itself is tested, not timed).

Each run, with the table vacuumed before every timed step:
- floor: COPY of the changed file's rows into a temporary table plus one `UPDATE ... FROM`
  join (by SSID, writing only rows whose values differ), in a transaction rolled back;
- preview: a fresh process reads, validates, matches and diffs the file (nothing written);
- sync: a fresh process does the same and applies it: values, history rows, run record, commit;
- same file: the very same bytes synced again (told by their SHA-256, not read);
- undo of that sync (untimed for the ratio), so the values are the base file's again;
- nothing changed: new bytes (the base file with CRLF line ends) whose values are all stored:
  read, validate, match, compare, and a run record; its run is deleted afterwards so the next
  run meets it as new.
Times exclude Python's start-up and imports. Every line gives the client's peak RSS and the
WAL the step wrote (pg_current_wal_lsn before and after); `rows written` counts the demographic
rows whose updated_at moved. The summary gives min / median / max over the runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import psycopg  # noqa: E402
from roster import write_demographics, write_roster  # noqa: E402

from schemas.columns import DEMOGRAPHIC_COLUMNS  # noqa: E402
from tasks.db import connect, embedded_url, upgrade  # noqa: E402
from tasks.roster import load_roster, read_roster  # noqa: E402
from tasks.sync import run_file  # noqa: E402

DISTRICT = "bench"

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from tasks.sync import run_file
started = time.perf_counter()
with open({path!r}, "rb") as f:
    data = f.read()
out = run_file({url!r}, {district!r}, data, {name!r}, mode={mode!r}, requested_by="bench")
seconds = time.perf_counter() - started
block = out.report.sync
print(json.dumps({{"seconds": seconds, "status": block.status, "run_id": out.run_id,
                   "matched": block.matched, "updated": block.updated,
                   "values": out.values_changed,
                   "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""

FLOOR_TABLE = """
CREATE TEMP TABLE floor_rows (ssid text, email text, gender text, ethnicity text, race text,
    english_learner boolean, migrant boolean, gifted_learner boolean, special_ed boolean,
    sed boolean, homeless boolean, foster boolean)"""
COLUMNS = DEMOGRAPHIC_COLUMNS
FLOOR_UPDATE = f"""
UPDATE core.student_demographics d
SET {", ".join(f"{c} = coalesce(t.{c}, d.{c})" for c in COLUMNS)}, updated_at = now()
FROM floor_rows t JOIN core.students s ON s.district_id = %s AND s.ssid = t.ssid AND s.active
WHERE d.student_id = s.student_id
  AND ({" OR ".join(f"(t.{c} IS NOT NULL AND t.{c} IS DISTINCT FROM d.{c})" for c in COLUMNS)})
"""


def child(url: str, path: Path, mode: str) -> dict[str, float]:
    code = CHILD.format(
        root=str(ROOT), path=str(path), url=url, district=DISTRICT, name=path.name, mode=mode
    )
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def floor(url: str, path: Path, district_id: int) -> tuple[float, int]:
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        started = time.perf_counter()
        cur.execute(FLOOR_TABLE)
        with (
            path.open("rb") as f,
            cur.copy("COPY floor_rows FROM STDIN (FORMAT csv, HEADER)") as copy,
        ):
            while chunk := f.read(1 << 20):
                copy.write(chunk)
        cur.execute("ANALYZE floor_rows")
        cur.execute(FLOOR_UPDATE, (district_id,))
        updated = cur.rowcount
        seconds = time.perf_counter() - started
        conn.rollback()
    return seconds, updated


def vacuum(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) core.student_demographics")


def setup(folder: Path, students: int, share: float, seed: int, fresh: bool) -> tuple[str, Path]:
    import os
    import shutil

    if fresh and folder.exists():
        from tasks.db import stop_embedded

        stop_embedded(folder / "pgdata")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    url = os.environ.get("DEMOGRAPHICS_DATABASE_URL") or embedded_url(folder / "pgdata")
    with connect(url) as conn:
        upgrade(conn)
        ready = conn.execute(
            """SELECT count(*) FROM core.sync_runs r JOIN core.districts d USING (district_id)
               WHERE d.code = %s AND r.file_name = 'base.csv' AND r.status = 'succeeded'""",
            (DISTRICT,),
        ).fetchone()
    base = folder / "base.csv"
    changed = folder / f"changed-{share}-{seed}.csv"
    if not (ready and ready[0]):
        print(f"set-up: writing a roster of {students:,} students and the base file ...")
        write_roster(folder / "roster", students)
        write_demographics(base, students, seed=7)
        started = time.perf_counter()
        with connect(url) as conn:
            result = load_roster(conn, DISTRICT, read_roster(folder / "roster"))
        assert result.loaded, result.issues[:5]
        print(f"set-up: roster load {time.perf_counter() - started:.1f} s")
        with connect(url) as conn:
            conn.execute(
                "UPDATE core.district_settings SET hold_limit = 0.5 WHERE district_id = "
                "(SELECT district_id FROM core.districts WHERE code = %s)",
                (DISTRICT,),
            )
            conn.commit()
        started = time.perf_counter()
        out = run_file(url, DISTRICT, base.read_bytes(), base.name, requested_by="bench")
        print(
            f"set-up: first upload (fills {out.values_changed:,} empty values) "
            f"{time.perf_counter() - started:.1f} s, status {out.status}"
        )
    if not changed.exists():
        write_demographics(changed, students, seed=seed, changed_share=share, base_seed=7)
    return url, changed


def wal(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    assert row is not None
    return int(row[0])


def rows_written_since(url: str, since: float) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM core.student_demographics WHERE updated_at >= to_timestamp(%s)",
            (since,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def step(url: str, path: Path, mode: str) -> dict[str, float]:
    """One child run, vacuumed before, with the WAL it wrote and the rows it rewrote."""
    vacuum(url)
    wal_before, wall = wal(url), time.time()
    out = child(url, path, mode)
    out["wal_mb"] = (wal(url) - wal_before) / 1e6
    out["rows_written"] = rows_written_since(url, wall)
    return out


def crlf_copy(source: Path, target: Path) -> Path:
    if not target.exists():
        target.write_bytes(source.read_bytes().replace(b"\n", b"\r\n"))
    return target


def spread(values: list[float], digits: int = 2) -> str:
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{low:.{digits}f} / {mid:.{digits}f} / {high:.{digits}f}"


def line(name: str, out: dict[str, float]) -> str:
    return (
        f"{name} {out['seconds']:.2f} s (status {out['status']}, {int(out['updated']):,} students, "
        f"{int(out['values']):,} values, {int(out['rows_written']):,} rows written, "
        f"WAL {out['wal_mb']:.3f} MB, peak RSS {out['rss_mb']:.0f} MB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--students", type=int, default=1_000_000)
    parser.add_argument("--changed-share", type=float, default=0.3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--fresh", action="store_true", help="rebuild the bench database")
    args = parser.parse_args()

    folder = Path(tempfile.gettempdir()) / f"demographics-bench-sync-{args.students}"
    url, path = setup(folder, args.students, args.changed_share, args.seed, args.fresh)
    same_values = crlf_copy(folder / "base.csv", folder / "base-crlf.csv")
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT district_id FROM core.districts WHERE code = %s", (DISTRICT,)
        ).fetchone()
    assert row is not None
    district_id = int(row[0])
    size = path.stat().st_size / 1e6
    print(f"file: {path.name}, {args.students:,} rows, {size:.0f} MB")

    seen: dict[str, list[dict[str, float]]] = {}
    floors: list[float] = []
    for n in range(1, args.runs + 1):
        vacuum(url)
        wal_before = wal(url)
        floor_s, floor_rows = floor(url, path, district_id)
        floor_wal = (wal(url) - wal_before) / 1e6
        floors.append(floor_s)
        print(f"run {n}: floor {floor_s:.2f} s ({floor_rows:,} rows, WAL {floor_wal:.1f} MB)")
        steps = {"preview": (path, "preview"), "sync": (path, "sync"), "same file": (path, "sync")}
        for name, (source, mode) in steps.items():
            seen.setdefault(name, []).append(step(url, source, mode))
            print(f"run {n}: " + line(name, seen[name][-1]))
        assert seen["sync"][-1]["status"] == "succeeded", seen["sync"][-1]
        from tasks.undo import undo_run

        started = time.perf_counter()
        undo = undo_run(url, int(seen["sync"][-1]["run_id"]), "bench")
        print(f"run {n}: undo {time.perf_counter() - started:.2f} s ({undo.restored:,} values)")
        seen.setdefault("nothing changed", []).append(step(url, same_values, "sync"))
        print(f"run {n}: " + line("nothing changed", seen["nothing changed"][-1]))
        forget_run(url, int(seen["nothing changed"][-1]["run_id"]))
    print(f"min / median / max over {args.runs} runs, {args.students:,} students:")
    print(f"  floor: {spread(floors)} s")
    for name, outs in seen.items():
        seconds = [o["seconds"] for o in outs]
        ratio = f", {statistics.median(seconds) / statistics.median(floors):.2f}x the floor"
        print(
            f"  {name}: {spread(seconds)} s{ratio if name == 'sync' else ''}; "
            f"peak RSS {spread([o['rss_mb'] for o in outs], 0)} MB; "
            f"WAL {spread([o['wal_mb'] for o in outs], 3)} MB"
        )


def forget_run(url: str, run_id: int) -> None:
    """The bench only: a run that changed nothing is deleted, so the next run's file is new."""
    with psycopg.connect(url) as conn:
        conn.execute("DELETE FROM core.sync_runs WHERE same_as_run_id = %s", (run_id,))
        conn.execute("DELETE FROM core.sync_runs WHERE run_id = %s", (run_id,))


if __name__ == "__main__":
    main()

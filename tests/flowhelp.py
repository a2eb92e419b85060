"""The whole product for flow tests (a pytest plugin): districts d1 and d2 loaded in the real
database, their drop on the real SFTP server, mail through the real SMTP server, and helpers
that read back what a run left (runs, history rows, emails)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import HEADER, write_roster
from sftp_server import SftpServer
from smtp_server import SmtpServer
from storehelp import STUDENTS, load

from flows.fanout import DISTRICT_DEPLOYMENT
from tasks.access import grant_manager

D2_STUDENTS = [
    ("s5", "0000000005", "eve@students.example.org"),
    ("s6", "0000000006", "fay@students.example.org"),
]
MANAGERS = {"d1": "dm@d1.example.org", "d2": "dm@d2.example.org"}  # notification lists
APPROVER = "t1@example.org"  # d1's teacher, granted data manager of d1


def csv_bytes(lines: list[str]) -> bytes:
    return (HEADER + "\n" + "".join(x + "\n" for x in lines)).encode()


def runs(url: str) -> list[dict[str, Any]]:
    with psycopg.connect(url) as conn:
        cur = conn.execute("SELECT * FROM core.sync_runs ORDER BY run_id")
        names = [c.name for c in cur.description or []]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def history_rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM core.demographic_changes").fetchone()
    assert row is not None
    return int(row[0])


def decoded(message: EmailMessage) -> str:
    """Every part of a message as a reader sees it, attachments included."""
    return "\n".join(str(part.get_content()) for part in message.walk() if not part.is_multipart())


def parts(message: EmailMessage) -> tuple[str, str, list[EmailMessage]]:
    """The text part, the HTML part and the attachments of a results email."""
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    assert text.get_content_type() == "text/plain"
    assert message.get_content_type() == "multipart/mixed"
    alternative = next(p for p in message.iter_parts() if p.is_multipart())
    assert alternative.get_content_type() == "multipart/alternative"
    return str(text.get_content()), str(html.get_content()), list(message.iter_attachments())


class Product:
    """Districts d1 and d2 on the SFTP drop, mail through the SMTP server, fast retries."""

    def __init__(self, url: str, sftp: SftpServer, smtp: SmtpServer, staging: Path) -> None:
        self.url, self.sftp, self.smtp, self.staging = url, sftp, smtp, staging

    def put(self, district: str, name: str, data: bytes, age: timedelta | None = None) -> Path:
        """A district's upload, written on the SFTP server's side."""
        path = self.sftp.drop_dir / district / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if age is not None:
            stamp = (datetime.now(UTC) - age).timestamp()
            os.utime(path, (stamp, stamp))
        return path

    def remote(self, district: str) -> list[str]:
        folder = self.sftp.drop_dir / district
        return sorted(p.name for p in folder.iterdir()) if folder.exists() else []

    def mail_to(self, district: str) -> list[EmailMessage]:
        return [m for m in self.smtp.messages() if MANAGERS[district] in str(m["To"])]


@pytest.fixture
def product(
    db: str,
    prefect_api: Any,
    sftp_server: SftpServer,
    smtp_server: SmtpServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Product:
    staging = tmp_path / "staging"
    staging.mkdir()
    env = {
        "DROP_URL": sftp_server.url,
        "SSH_KEY": str(sftp_server.client_key),
        "KNOWN_HOSTS": str(sftp_server.known_hosts),
        "STAGING_DIR": str(staging),
        "SFTP_ATTEMPTS": "2",
        "SFTP_BACKOFF_SECONDS": "0.05",
        "SETTLE_SECONDS": "0",
        "SMTP_URL": smtp_server.url(),
        "SMTP_CA_FILE": str(smtp_server.certificates.ca_file),
        "MAIL_FROM": "demographics-sync@service.example",
        "MAIL_ATTEMPTS": "2",
        "MAIL_RETRY_SECONDS": "0.05",
    }
    for name, value in env.items():
        monkeypatch.setenv(f"DEMOGRAPHICS_{name}", value)
    load(db, "d1", write_roster(tmp_path / "r1", STUDENTS, district="d1"))
    load(db, "d2", write_roster(tmp_path / "r2", D2_STUDENTS, district="d2"))
    with psycopg.connect(db) as conn:
        for code, manager in MANAGERS.items():
            conn.execute(
                "UPDATE core.district_settings SET notification_recipients = ARRAY[%s] "
                "WHERE district_id = (SELECT district_id FROM core.districts WHERE code = %s)",
                (manager, code),
            )
    with psycopg.connect(db, autocommit=True) as conn:
        assert grant_manager(conn, "d1", APPROVER, "test")
    return Product(db, sftp_server, smtp_server, staging)


def district_run(code: str) -> Any:
    """A district's sync-district-drop run in this process, as its state (an async flow)."""
    import asyncio

    from flows.pipeline import sync_district_drop

    return asyncio.run(sync_district_drop(code, return_state=True))


@pytest.fixture
def served(db: str, prefect_api: Any) -> Iterator[Any]:
    """The deployments served from this process, by the runner `demographics serve` uses,
    in a thread: a nightly run's district runs each run in a process of their own, with the
    test's settings (the runner passes its environment on)."""
    import asyncio
    import contextvars
    import threading

    from flows.deploy import StopRequest, deployments, new_runner, register

    loop = asyncio.new_event_loop()
    runner = new_runner(StopRequest(loop))
    declared = deployments()  # outside the loop: Prefect builds them synchronously here

    async def serve() -> None:
        await register(runner, declared)
        await runner.start()

    # The thread runs in this thread's context: Prefect's settings (the API URL) are in it.
    context = contextvars.copy_context()
    thread = threading.Thread(
        target=context.run, args=(loop.run_until_complete, serve()), daemon=True
    )
    thread.start()
    wait_until_served(DISTRICT_DEPLOYMENT)
    yield runner
    asyncio.run_coroutine_threadsafe(runner.astop(), loop).result(timeout=30)
    thread.join(timeout=30)
    loop.close()


def wait_until_served(deployment: str, pool: str | None = None, timeout: float = 60) -> None:
    """Until the deployment is registered for the pool (None: a runner's) and what runs it
    has asked for work (Prefect marks it ready)."""
    import time

    from prefect import get_client
    from prefect.client.schemas.objects import DeploymentStatus
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            try:
                found = client.read_deployment_by_name(deployment)
                if found.work_pool_name == pool and found.status == DeploymentStatus.READY:
                    return
            except ObjectNotFound:
                pass
        time.sleep(0.1)
    raise AssertionError(f"{deployment} was not served within {timeout:g} s")


def latest_artifact(key: str) -> str:
    """The data of the newest artifact under `key`, as the Artifacts page shows it."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), limit=50
        )
    assert found, f"no artifact keyed {key}"
    return str(max(found, key=lambda a: a.created).data)


def processes_mentioning(text: str) -> list[int]:
    """The pids of this machine's processes whose command line holds `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue  # it ended meanwhile
    return found


# --- what Prefect keeps --------------------------------------------------------------------


def stored_files(folders: list[Path]) -> list[Path]:
    """Every file under the folders (PREFECT_HOME, the server's log)."""
    return [f for folder in folders for f in folder.rglob("*") if f.is_file()]


def prefect_tables(database: str) -> dict[str, bytes]:
    """Every table of Prefect's database as the text COPY writes: flow runs, parameters,
    states, logs, events and their resources, artifacts, blocks..."""
    from psycopg import sql

    with psycopg.connect(database) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            ).fetchall()
        ]
        dumped = {}
        for name in names:
            out = bytearray()
            statement = sql.SQL("COPY {} TO STDOUT").format(sql.Identifier(name))
            with conn.cursor().copy(statement) as copy:
                for chunk in copy:
                    out += chunk
            dumped[name] = bytes(out)
    return dumped


STORED_BY_SERVICES = ("log", "events", "flow_run", "task_run", "flow_run_state", "artifact")


def wait_until_prefect_has_stored_everything(database: str) -> None:
    """Logs and events reach the API in batches and are written by server-side services:
    flush the client's queues, then wait until the stored counts stop changing."""
    import time

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    EventsWorker.drain_all(timeout=30)
    last: tuple[int, ...] = ()
    for _ in range(30):
        with psycopg.connect(database) as conn:
            now = tuple(
                conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
                for table in STORED_BY_SERVICES
            )
        if now == last:
            return
        last = now
        time.sleep(2)
    raise AssertionError("Prefect kept writing for a minute")

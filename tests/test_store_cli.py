"""The database commands as a data manager runs them: db, preview, sync, runs, undo, demo,
and the drop's (list, put: they refuse a district the database does not know)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from conftest import write_roster
from sftp_server import SftpServer
from storehelp import HEADER, STUDENTS, line, load

from schemas.columns import DEMOGRAPHIC_COLUMNS
from tasks.db import MigrationChanged, migrations, pending, upgrade

D = "d1"
DEMOGRAPHICS = Path(sys.executable).with_name("demographics")
UNKNOWN = (
    "error: district nowhere is not in the database; an operator adds it first "
    "(demographics district add nowhere --name NAME --manager EMAIL)\n"
)


@pytest.fixture
def district(db: str, tmp_path: Path) -> str:
    load(db, D, write_roster(tmp_path / "roster", STUDENTS))
    return db


def _file(tmp_path: Path, lines: list[str], name: str = "upload.csv") -> Path:
    path = tmp_path / name
    path.write_text(HEADER + "\n" + "".join(f"{x}\n" for x in lines), encoding="utf-8")
    return path


def test_sync_json_is_the_contract_report_with_a_sync_block(
    district: str, tmp_path: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    path = _file(tmp_path, [line("0000000001", gender="F"), line("0999999999", gender="M")])
    result = cli("sync", path, "--district", D, "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert list(doc) == [
        "report_version", "district", "file", "summary", "advice", "issues", "sync"
    ]  # fmt: skip
    assert doc["district"] == D
    assert list(doc["sync"]) == [
        "run_id", "status", "matched", "updated", "unchanged", "unmatched", "changes"
    ]  # fmt: skip
    assert doc["sync"]["status"] == "succeeded" and doc["sync"]["run_id"] == "1"
    assert (doc["sync"]["matched"], doc["sync"]["updated"], doc["sync"]["unmatched"]) == (1, 1, 1)
    # Each value stored for the first time: from null (nothing stored yet).
    line_values = dict(
        zip(HEADER.split(","), line("0000000001", gender="F").split(","), strict=True)
    )
    assert doc["sync"]["changes"] == [
        {"field": f, "from": None, "to": line_values[f], "students": 1}
        for f in DEMOGRAPHIC_COLUMNS
        if line_values[f]
    ]
    assert [i["code"] for i in doc["issues"]] == ["no_matching_student"]
    assert doc["issues"][0]["row"] == 3 and doc["issues"][0]["column"] is None

    changed = _file(tmp_path, [line("0000000001", gender="M")], "changed.csv")
    preview = json.loads(cli("preview", changed, "--district", D, "--format", "json").output)
    assert preview["sync"]["status"] == "preview" and preview["sync"]["run_id"] is None
    assert preview["sync"]["changes"] == [
        {"field": "gender", "from": "F", "to": "M", "students": 1}
    ]

    again = json.loads(cli("sync", path, "--district", D, "--format", "json").output)
    assert again["sync"]["changes"] == []  # a rerun changes nothing, and says so
    plain = cli("sync", path, "--district", D)
    assert plain.exit_code == 0
    assert "already applied by run 1; nothing was changed" in plain.output


def test_sync_exit_status_follows_the_contract(district: str, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    bad = _file(tmp_path, [line("0000000001", gender="Male")], "bad.csv")
    result = cli("sync", bad, "--district", D)
    assert result.exit_code == 1
    assert result.output.startswith("rejected (run 1)")
    result = cli("sync", bad, "--district", "nowhere")
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: district nowhere is not in the database; an operator adds it first "
        "(demographics district add nowhere --name NAME --manager EMAIL)"
    )
    result = cli("sync", tmp_path / "missing.csv", "--district", D)
    assert result.exit_code == 2 and "no such file" in result.output


def test_runs_lists_runs_and_undo_restores(district: str, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    cli("sync", _file(tmp_path, [line("0000000001", gender="F")]), "--district", D)
    result = cli("undo", "1")
    assert result.exit_code == 0
    assert result.output.startswith("undo run 2: restored 1 values of run 1 for 1 students")
    listing = cli("runs", "--district", D).output.splitlines()
    assert listing[0].split()[:4] == ["RUN", "DISTRICT", "KIND", "STATUS"]
    assert listing[1].split()[:4] == ["2", D, "undo", "succeeded"]
    assert listing[2].split()[:4] == ["1", D, "sync", "succeeded"]
    assert "undone by run 2" in listing[2]
    unknown = cli("runs", "--district", "nowhere")
    assert unknown.exit_code == 2 and unknown.stdout == "" and unknown.stderr == UNKNOWN
    again = cli("undo", "1")
    assert again.exit_code == 2 and "already undone" in again.output


def test_db_url_and_upgrade(db: str, cli) -> None:  # type: ignore[no-untyped-def]
    assert cli("db", "url").output.strip() == db
    result = cli("db", "upgrade")
    assert result.exit_code == 0
    assert result.output.splitlines() == [
        "the schema is up to date",
        "access views and grants applied",
    ]


def test_upgrade_applies_new_files_once_and_refuses_an_edited_one(db: str, tmp_path: Path) -> None:
    folder = tmp_path / "sql"
    folder.mkdir()
    (folder / "001_a.sql").write_text("CREATE TABLE IF NOT EXISTS public.test_a (x int);")
    with psycopg.connect(db) as conn:
        conn.execute("DELETE FROM core.schema_migrations")  # a database with nothing applied
        conn.commit()
        assert pending(conn, folder) == ["001_a.sql"]
        conn.commit()
        assert upgrade(conn, folder) == ["001_a.sql"]
        assert upgrade(conn, folder) == []
        (folder / "002_b_always.sql").write_text(
            "CREATE OR REPLACE VIEW public.test_b AS SELECT 1;"
        )
        assert upgrade(conn, folder) == ["002_b_always.sql"]
        (folder / "002_b_always.sql").write_text(
            "CREATE OR REPLACE VIEW public.test_b AS SELECT 2;"
        )
        assert upgrade(conn, folder) == ["002_b_always.sql"]  # views are re-applied on change
        (folder / "001_a.sql").write_text("CREATE TABLE IF NOT EXISTS public.test_a (y int);")
        with pytest.raises(MigrationChanged, match=r"001_a\.sql was changed after it was applied"):
            upgrade(conn, folder)
        conn.execute("DROP VIEW public.test_b")
        conn.execute("DROP TABLE public.test_a")
        conn.execute("DELETE FROM core.schema_migrations")
        conn.commit()
        assert upgrade(conn) == [m.path.name for m in migrations()]  # the real files, again


def test_an_unreachable_database_is_one_line_exit_2(cli, monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv(
        "DEMOGRAPHICS_DATABASE_URL", f"postgresql://nobody:secret@/x?host={tmp_path}"
    )
    path = _file(tmp_path, [line("0000000001", gender="F")])
    result = cli("sync", path, "--district", D)
    assert result.exit_code == 2
    assert result.output.startswith("error: cannot connect to the database at ")
    assert "secret" not in result.output and len(result.output.splitlines()) == 1


def test_demo_runs_the_nightly_flow_on_the_sample_and_writes_the_email(
    db: str, cli, served, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("DEMOGRAPHICS_SETTLE_SECONDS", raising=False)
    first = cli("demo")
    assert first.exit_code == 0, first.output
    assert "students          200 active" in first.output
    assert "nightly-sync: Completed" in first.output
    assert "run 1: succeeded, 185 rows, matched " in first.output
    assert "source file: deleted from the drop" in first.output
    eml = Path(first.output.split("Results email: ")[1].split("\n")[0])
    assert eml.suffix == ".eml" and eml.is_file() and eml.with_suffix(".html").is_file()
    assert "maple-valley" in eml.read_text()
    assert "To: patricia.morales-grant@maplevalley.k12.example.us" in eml.read_text()
    teacher = first.output.split("teacher tch-01 (")[1].split("\n")[0]
    assert teacher.endswith("): 33 rows; fields: gender, english_learner")
    school_admin = first.output.split("school admin adm-02 (")[1].split("\n")[0]
    assert "): 92 rows; fields: gender, ethnicity, race, english_learner" in school_admin
    second = cli("demo")
    assert second.exit_code == 0, second.output
    assert "run 2: succeeded" in second.output  # the same file again: recognised, not re-applied
    assert "already applied by run 1" in second.output


def test_the_embedded_server_starts_tuned_stays_up_and_stops(
    cli, monkeypatch, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("DEMOGRAPHICS_DATABASE_URL", raising=False)
    monkeypatch.setenv("DEMOGRAPHICS_HOME", str(tmp_path / "home"))
    result = cli("db", "url")
    assert result.exit_code == 0
    url = result.output.strip()
    assert url.startswith("postgresql://") and str(tmp_path / "home" / "pgdata") in url
    try:
        assert cli("db", "url").output.strip() == url  # found running, not started again
        with psycopg.connect(url) as conn:  # still up after the command returned
            settings = dict(
                conn.execute(
                    "SELECT name, setting FROM pg_settings WHERE name IN "
                    "('max_wal_size', 'log_min_error_statement', 'log_error_verbosity')"
                ).fetchall()
            )
        assert settings == {
            "max_wal_size": "8192",
            "log_min_error_statement": "panic",
            "log_error_verbosity": "terse",
        }
        result = cli("runs")  # the schema is applied on first use of the embedded server
        assert result.exit_code == 0 and result.output == "no runs yet\n"
        with psycopg.connect(url) as conn:  # Prefect's own database, on the same server
            names = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
            major = conn.execute("SHOW server_version_num").fetchone()
        assert {"demographics", "prefect"} <= names
        assert major is not None and int(major[0]) // 10000 == 18
        prefect_url = cli("db", "prefect-url").output.strip()
        socket_dir = str(tmp_path / "home" / "pgdata")
        assert prefect_url == f"postgresql+asyncpg://postgres@/prefect?host={socket_dir}"
    finally:
        assert cli("db", "stop").output.strip() == "stopped the embedded server"
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)


def test_settings_show_and_change_what_the_sync_uses(district: str, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    shown = cli("settings", "--district", D)
    assert shown.exit_code == 0
    assert "error limit   20%" in shown.output and "gender codes  M, F" in shown.output
    assert "roster limit  10% of active students deactivated holds a roster" in shown.output
    raised = cli("settings", "--district", D, "--roster-limit", "0.3")
    assert "roster limit  30%" in raised.output
    path = _file(tmp_path, [line("0000000001", gender="X"), line("0000000002", gender="F")])
    assert cli("sync", path, "--district", D).exit_code == 1  # X is not allowed yet
    changed = cli("settings", "--district", D, "--gender-codes", "m,f,x", "--hold-limit", "0.5")
    assert "gender codes  M, F, X" in changed.output and "hold limit    50%" in changed.output
    result = cli("sync", path, "--district", D, "--format", "json")
    doc = json.loads(result.output)
    assert result.exit_code == 0 and doc["sync"]["updated"] == 2
    bad = cli("settings", "--district", D, "--error-limit", "20")
    assert bad.exit_code == 2
    assert bad.output.strip() == ("error: the error limit is a share between 0 and 1 (0.2 = 20 %)")


def test_a_configured_server_with_an_old_schema_is_refused_not_upgraded(db: str, cli) -> None:  # type: ignore[no-untyped-def]
    with psycopg.connect(db) as conn:
        saved = conn.execute("SELECT * FROM core.schema_migrations").fetchall()
        conn.execute("DELETE FROM core.schema_migrations")
        conn.commit()
    try:
        result = cli("runs")
        assert result.exit_code == 2
        assert result.output.strip() == (
            "error: the database schema is not up to date "
            f"({len(migrations())} SQL files to apply); run: demographics db upgrade"
        )
        with psycopg.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM core.schema_migrations").fetchone() == (0,)
    finally:
        with psycopg.connect(db) as conn, conn.cursor() as cur:
            cur.executemany("INSERT INTO core.schema_migrations VALUES (%s, %s, %s, %s)", saved)


def test_approving_on_the_command_line_needs_a_data_manager(db: str, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from storehelp import set_limits, sync

    from tasks.access import grant_manager

    load(db, "d1", write_roster(tmp_path / "r", STUDENTS, district="d1"))
    sync(db, "d1", [line(ssid=s[1], gender="F") for s in STUDENTS])
    set_limits(db, "d1", hold=0.25)
    path = tmp_path / "change.csv"
    path.write_text(HEADER + "\n" + "".join(line(ssid=s[1], gender="M") + "\n" for s in STUDENTS))
    assert "held" in cli("sync", path, "--district", "d1").output

    bare = cli("sync", path, "--district", "d1", "--approve")
    assert bare.exit_code == 2 and "--approve needs --as EMAIL" in bare.output
    stranger = cli("sync", path, "--district", "d1", "--approve", "--as", "t1@example.org")
    assert stranger.exit_code == 2 and "not a data manager of district d1" in stranger.output
    with psycopg.connect(db, autocommit=True) as conn:
        grant_manager(conn, "d1", "t1@example.org", "test")
    approved = cli("sync", path, "--district", "d1", "--approve", "--as", "T1@example.org")
    assert approved.exit_code == 0, approved.output
    assert "succeeded" in approved.output and "approving held run 2" in approved.output
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT resolution, resolved_by FROM core.sync_runs WHERE run_id = 2"
        ).fetchone()
    assert row == ("approved", "t1@example.org")


def test_runs_of_a_district_without_runs_says_so(district: str, cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("runs", "--district", D)
    assert result.exit_code == 0 and result.output == "no runs yet\n"


# --- the drop ------------------------------------------------------------------------------


LISTED = re.compile(
    r"  (?P<group>\S.*?) +(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC +(?P<size>\d+) bytes  )?"
    r"(?P<name>\S+)"
)


def _listed(output: str) -> list[tuple[str, int | None, str]]:
    """`drop list` rows after the drop's address: (group, size or None, name)."""
    rows = []
    for row in output.splitlines()[1:]:
        found = LISTED.fullmatch(row)
        assert found is not None, row
        size = found["size"]
        rows.append((found["group"], None if size is None else int(size), found["name"]))
    return rows


def test_drop_put_and_list_on_the_local_drop(
    district: str, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("DEMOGRAPHICS_DROP_URL", raising=False)
    monkeypatch.setenv("DEMOGRAPHICS_SETTLE_SECONDS", "120")
    folder = tmp_path / "home" / "drop" / D
    data = (HEADER + "\n" + line("0000000001", gender="F") + "\n").encode() * 3
    source = tmp_path / "upload.csv"
    source.write_bytes(data)
    empty = cli("drop", "list", "--district", D)
    assert empty.stdout.splitlines()[1:] == [
        "  empty: no file in the district's folder, its roster/ or its preview/"
    ]

    placed = cli("drop", "put", source, "--district", D)

    assert placed.exit_code == 0, placed.output
    assert placed.stdout == f"placed upload.csv in {folder.parent.as_uri()}/{D}\n"
    assert sorted(p.name for p in folder.iterdir()) == ["upload.csv"]  # whole, no partial left
    assert (folder / "upload.csv").read_bytes() == data
    assert cli("drop", "put", source, "--district", D).exit_code == 0  # replaced, still whole
    assert (folder / "upload.csv").read_bytes() == data

    old = time.time() - 600
    (folder / "older.csv").write_bytes(data)
    os.utime(folder / "older.csv", (old, old))
    (folder / "link.csv").symlink_to(folder / "older.csv")
    (folder / "notes.txt").write_text("not a csv")
    (folder / ".upload.csv.part").write_text("an upload in progress: not listed")
    roster = cli("drop", "put", source, "--district", D, "--folder", "roster")
    assert roster.stdout == f"placed upload.csv in {folder.parent.as_uri()}/{D}/roster\n"
    listing = cli("drop", "list", "--district", D)

    assert listing.exit_code == 0, listing.output
    lines = listing.stdout.splitlines()
    assert lines[0] == f"{folder.parent.as_uri()}/{D}"
    assert _listed(listing.stdout) == [
        ("ready", len(data), "older.csv"),
        ("settling (may still be uploading)", len(data), "upload.csv"),
        ("not a kind taken here (told once)", 9, "notes.txt"),
        ("refused (a link)", None, "link.csv"),
        ("settling (may still be uploading)", len(data), "roster/upload.csv"),
    ]


def test_the_drop_commands_refuse_an_unknown_district(
    district: str, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("DEMOGRAPHICS_DROP_URL", raising=False)
    source = tmp_path / "upload.csv"
    source.write_text(HEADER + "\n")
    for args in (("drop", "list"), ("drop", "put", source)):
        result = cli(*args, "--district", "nowhere")
        assert result.exit_code == 2 and result.stdout == "" and result.stderr == UNKNOWN
    assert not (tmp_path / "home" / "drop" / "nowhere").exists()  # no folder nobody reads
    unsafe = cli("drop", "list", "--district", "../d1")
    assert unsafe.exit_code == 2
    assert unsafe.stderr.startswith("error: refusing a district code that is not valid")


def test_drop_put_places_the_file_whole_on_the_sftp_drop_and_list_shows_it(
    district: str, tmp_path: Path, sftp_server: SftpServer
) -> None:
    source = tmp_path / "upload.csv"
    data = HEADER + "\n" + "".join(line(f"{i:010d}", gender="F") + "\n" for i in range(1, 5000))
    source.write_text(data)
    env = {
        **os.environ,
        "DEMOGRAPHICS_DROP_URL": sftp_server.url,
        "DEMOGRAPHICS_SSH_KEY": str(sftp_server.client_key),
        "DEMOGRAPHICS_KNOWN_HOSTS": str(sftp_server.known_hosts),
        "DEMOGRAPHICS_SETTLE_SECONDS": "120",
    }

    def demographics(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(DEMOGRAPHICS), *args], env=env, capture_output=True, text=True, timeout=120
        )

    placed = demographics("drop", "put", str(source), "--district", D)

    assert placed.returncode == 0, placed.stderr
    assert placed.stdout == f"placed upload.csv in {sftp_server.url}/{D}\n"
    remote = sftp_server.drop_dir / D
    assert sorted(p.name for p in remote.iterdir()) == ["upload.csv"]
    assert (remote / "upload.csv").read_bytes() == source.read_bytes()

    listing = demographics("drop", "list", "--district", D)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines()[0] == f"{sftp_server.url}/{D}"
    assert _listed(listing.stdout) == [
        ("settling (may still be uploading)", len(source.read_bytes()), "upload.csv")
    ]

    refused = demographics("drop", "put", str(source), "--district", "nowhere")
    assert refused.returncode == 2 and refused.stderr == UNKNOWN
    assert not (sftp_server.drop_dir / "nowhere").exists()


def test_a_data_folder_of_an_older_postgresql_is_refused_in_one_line(
    cli, monkeypatch, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The embedded server was PostgreSQL 16 (pgserver) before: such a folder is not opened
    by PostgreSQL 18, and the message says what to do instead of a server log."""
    monkeypatch.delenv("DEMOGRAPHICS_DATABASE_URL", raising=False)
    monkeypatch.setenv("DEMOGRAPHICS_HOME", str(tmp_path / "home"))
    pgdata = tmp_path / "home" / "pgdata"
    pgdata.mkdir(parents=True)
    (pgdata / "PG_VERSION").write_text("16\n")
    result = cli("db", "url")
    assert result.exit_code == 2
    assert result.output == (
        f"error: {pgdata} holds PostgreSQL 16 data and the embedded server is PostgreSQL 18; "
        "move it across as the README says (Upgrading the embedded database), or move the "
        "folder aside to start afresh\n"
    )

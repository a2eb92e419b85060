"""The flows, run for real through a Prefect API, against a real database, drop and mail."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import HEADER, write_roster
from storehelp import STUDENTS, line, load, values

from flows.pipeline import nightly_sync


def _csv(lines: list[str]) -> bytes:
    return (HEADER + "\n" + "".join(x + "\n" for x in lines)).encode()


def _runs(url: str) -> list[dict[str, Any]]:
    with psycopg.connect(url) as conn:
        cur = conn.execute("SELECT * FROM core.sync_runs ORDER BY run_id")
        names = [c.name for c in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


@pytest.fixture
def local(db: str, prefect_api: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A district d1 with four students, a local drop, the outbox, and no settling wait."""
    monkeypatch.setenv("DEMOGRAPHICS_DROP_URL", (tmp_path / "drop").as_uri())
    monkeypatch.setenv("DEMOGRAPHICS_STAGING_DIR", str(tmp_path / "staging"))
    monkeypatch.setenv("DEMOGRAPHICS_SETTLE_SECONDS", "0")
    (tmp_path / "staging").mkdir()
    (tmp_path / "drop" / "d1").mkdir(parents=True)
    load(db, "d1", write_roster(tmp_path / "roster", STUDENTS, district="d1"))
    with psycopg.connect(db) as conn:
        conn.execute(
            "UPDATE core.district_settings SET notification_recipients = '{dm@d1.example.org}'"
        )
    return tmp_path / "drop" / "d1"


def test_smoke_nightly_local(local: Path, db: str, tmp_path: Path) -> None:
    (local / "a.csv").write_bytes(_csv([line(ssid="0000000001", gender="F")]))
    state = nightly_sync(return_state=True)
    assert state.is_completed(), state.message
    assert values(db, "d1")["s1"]["gender"] == "F"
    assert not (local / "a.csv").exists()
    runs = _runs(db)
    assert runs[0]["email_status"] == "written"
    assert os.listdir(tmp_path / "staging") == []

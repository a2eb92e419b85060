"""Progress of the long commands (sync, preview, undo, roster load), as a person at a terminal
sees it and as a pipe or a script does not.

The real `demographics` command runs as a child process: with stderr on a real pseudo-terminal
(Python's pty) it draws its phases there; piped, or with `--format json`, stdout is the report
byte for byte and stderr holds nothing. Nothing here waits on time: the last frame the display
leaves lists every phase, however fast the run was.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import struct
import subprocess
import sys
import termios
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import write_roster
from storehelp import HEADER, STUDENTS, line, load

from tasks.render import render_json, render_sync_text
from tasks.sync import run_file

D = "d1"
DEMOGRAPHICS = Path(sys.executable).with_name("demographics")
# What the file and the roster say of students: none of it may reach the progress display.
UNMATCHED = ("0999999999", "zed@students.example.org")
STUDENT_VALUES = (*(v for s in STUDENTS for v in s[1:]), *UNMATCHED)
SYNC_PHASES = ("read", "connect", "validate", "match", "apply", "history", "commit")
ROSTER_PHASES = ("read", "connect", "copy", "schools", "students", "staff", "classes")
ROSTER_PHASES += ("enrollments", "commit")
_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


@dataclass(frozen=True)
class Ran:
    code: int
    stdout: bytes
    terminal: str  # what stderr's terminal showed, escape sequences taken out


@pytest.fixture
def district(db: str, tmp_path: Path) -> str:
    load(db, D, write_roster(tmp_path / "roster", STUDENTS))
    return db


@pytest.fixture
def upload(tmp_path: Path) -> Path:
    """Two students change, one row matches no one (so the report itself quotes an SSID)."""
    rows = [line(STUDENTS[0][1], gender="F"), line(STUDENTS[1][1], gender="M")]
    rows.append(line(UNMATCHED[0], UNMATCHED[1], gender="F"))
    path = tmp_path / "upload.csv"
    path.write_text(HEADER + "\n" + "".join(f"{r}\n" for r in rows), encoding="utf-8")
    return path


def on_terminal(*args: object) -> Ran:
    """Run the command with stderr on a pseudo-terminal (120 columns) and stdout piped."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"}
    proc = subprocess.Popen(
        [str(DEMOGRAPHICS), *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    shown: list[bytes] = []
    reader = threading.Thread(target=_drain, args=(master, shown), daemon=True)
    reader.start()
    stdout, _ = proc.communicate(timeout=120)
    reader.join(timeout=30)
    os.close(master)
    return Ran(proc.returncode, stdout, _ESCAPE.sub("", b"".join(shown).decode()))


def _drain(fd: int, into: list[bytes]) -> None:
    """Everything the terminal is sent, until the command (its last holder) closes it."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side is closed
            return
        if not chunk:
            return
        into.append(chunk)


def piped(*args: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(DEMOGRAPHICS), *map(str, args)], capture_output=True, timeout=120, check=False
    )


def phases_in(text: str, phases: tuple[str, ...]) -> list[str]:
    return [p for p in phases if re.search(rf"\b{p}\b", text)]


def no_student_value_in(text: str) -> None:
    assert text.strip()  # something was shown, so its absence of values means something
    assert [v for v in STUDENT_VALUES if v in text] == []


def _preview_in_process(url: str, path: Path) -> tuple[str, str]:
    """The preview's text and JSON reports as the tasks render them, with no command line."""
    outcome = run_file(url, D, path.read_bytes(), path.name, mode="preview", requested_by="t")
    return render_sync_text(outcome.report, outcome.message), render_json(outcome.report) + "\n"


def test_piped_and_json_output_is_the_report_alone(district: str, upload: Path) -> None:
    text, doc = _preview_in_process(district, upload)

    plain = piped("preview", upload, "--district", D)
    assert (plain.returncode, plain.stdout.decode(), plain.stderr) == (0, text, b"")
    as_json = on_terminal("preview", upload, "--district", D, "--format", "json")
    assert (as_json.code, as_json.stdout.decode(), as_json.terminal) == (0, doc, "")

    synced = on_terminal("sync", upload, "--district", D, "--format", "json")
    assert synced.code == 0 and synced.terminal == ""
    assert json.loads(synced.stdout)["sync"]["status"] == "succeeded"
    undone = piped("undo", "1")
    assert undone.returncode == 0 and undone.stderr == b""
    assert undone.stdout.startswith(b"undo run 2: restored")
    roster = piped("roster", "load", upload.parent / "roster", "--district", D)
    assert roster.returncode == 0 and roster.stderr == b""
    again = on_terminal("roster", "load", upload.parent / "roster", "-d", D, "--format", "json")
    assert again.code == 0 and again.terminal == ""


def test_preview_and_sync_show_their_phases_on_a_terminal(district: str, upload: Path) -> None:
    text, _ = _preview_in_process(district, upload)
    preview = on_terminal("preview", upload, "--district", D)
    assert preview.code == 0 and preview.stdout.decode() == text  # stdout is still the report
    assert phases_in(preview.terminal, SYNC_PHASES) == ["read", "connect", "validate", "match"]
    assert "3 rows" in preview.terminal  # the rows matched
    no_student_value_in(preview.terminal)

    synced = on_terminal("sync", upload, "--district", D)
    assert synced.code == 0 and synced.stdout.startswith(b"succeeded (run 1)")
    assert phases_in(synced.terminal, SYNC_PHASES) == list(SYNC_PHASES)
    assert b"\x1b" not in synced.stdout
    no_student_value_in(synced.terminal)

    undone = on_terminal("undo", "1")
    assert undone.code == 0 and undone.stdout.startswith(b"undo run 2: restored")
    assert phases_in(undone.terminal, ("connect", "restore", "commit")) == [
        "connect", "restore", "commit"
    ]  # fmt: skip
    no_student_value_in(undone.terminal)


def test_a_command_that_fails_still_says_why_on_the_terminal(district: str, upload: Path) -> None:
    refused = on_terminal("sync", upload, "--district", "nowhere")
    assert refused.code == 2 and refused.stdout == b""
    assert "error: district nowhere is not in the database" in refused.terminal
    assert phases_in(refused.terminal, SYNC_PHASES) == ["read", "connect"]


def test_roster_load_shows_its_phases_on_a_terminal(db: str, tmp_path: Path) -> None:
    roster = write_roster(tmp_path / "roster", STUDENTS)
    loaded = on_terminal("roster", "load", roster, "--district", D)
    assert loaded.code == 0, loaded.terminal
    assert phases_in(loaded.terminal, ROSTER_PHASES) == list(ROSTER_PHASES)
    no_student_value_in(loaded.terminal)
    assert "Given" not in loaded.terminal and "Family" not in loaded.terminal

"""A wrong setting names its variable and what it accepts, in one line, never its value: in
`load_settings()`, and from the installed command (real subprocesses), including commands
that load the flows (flows/pipeline.py reads a setting as it is imported)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.settings import Settings, SettingsError, accepts, load_settings

DEMOGRAPHICS = Path(sys.executable).with_name("demographics")


def refused(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(f"DEMOGRAPHICS_{name}", value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    return str(caught.value)


SECONDS = "a number of seconds, 0 or more"


@pytest.mark.parametrize(
    ("variable", "value", "accepted"),
    [
        ("SETTLE_SECONDS", "abc", SECONDS),
        ("SETTLE_SECONDS", "-1", SECONDS),
        ("LOCK_WAIT_SECONDS", "nan", SECONDS),
        ("SFTP_ATTEMPTS", "0", "a whole number, 1 or more"),
        ("MAIL_ATTEMPTS", "2.5", "a whole number, 1 or more"),
        ("MAX_FILE_MB", "0", "a number of megabytes, more than 0"),
        ("RETENTION_DAYS", "inf", "a number of days, more than 0"),
        ("TIMEZONE", "Mars/Olympus_Mons", "an IANA time zone name, such as America/Chicago"),
        ("TIMEZONE", "America", "an IANA time zone name, such as America/Chicago"),  # a folder
    ],
)
def test_a_wrong_setting_names_the_variable_and_what_it_accepts(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, accepted: str
) -> None:
    assert (
        refused(monkeypatch, **{variable: value}) == f"DEMOGRAPHICS_{variable} must be {accepted}"
    )


def test_every_wrong_setting_is_named_once_in_one_line_without_its_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = refused(monkeypatch, DISTRICT_CONCURRENCY="hunter2-secret", SETTLE_SECONDS="also-secret")
    assert text == (
        "DEMOGRAPHICS_SETTLE_SECONDS must be a number of seconds, 0 or more; "
        "DEMOGRAPHICS_DISTRICT_CONCURRENCY must be a whole number, 1 or more"
    )
    assert "\n" not in text and "secret" not in text


def test_the_error_carries_no_pydantic_error_with_the_value() -> None:
    probe = "from tasks.settings import load_settings\nload_settings()\n"
    env = {**os.environ, "DEMOGRAPHICS_MAIL_RETRY_SECONDS": "p4ssw0rd-in-a-value"}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    assert "p4ssw0rd" not in done.stderr and "validation error" not in done.stderr
    assert done.stderr.strip().endswith(
        "SettingsError: DEMOGRAPHICS_MAIL_RETRY_SECONDS must be a number of seconds, 0 or more"
    )


def test_what_a_setting_accepts_comes_from_its_type_and_bounds() -> None:
    fields = Settings.model_fields
    assert accepts("retention_days", fields["retention_days"]) == "a number of days, more than 0"
    assert accepts("district_concurrency", fields["district_concurrency"]) == (
        "a whole number, 1 or more"
    )
    assert accepts("staging_dir", fields["staging_dir"]) == "a path"
    # every numeric setting says its bound: the words come from the field, not a copy of it
    for name, field in fields.items():
        if field.metadata:
            assert "or more" in accepts(name, field) or "more than" in accepts(name, field), name


def test_good_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMOGRAPHICS_SETTLE_SECONDS", "0")
    monkeypatch.setenv("DEMOGRAPHICS_TIMEZONE", "America/Chicago")
    monkeypatch.setenv("DEMOGRAPHICS_SFTP_ATTEMPTS", "7")
    loaded = load_settings()
    assert (loaded.settle_seconds, loaded.timezone, loaded.sftp_attempts) == (
        0.0,
        "America/Chicago",
        7,
    )


def demographics(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The installed command, as a person runs it, with some DEMOGRAPHICS_ variables set."""
    values = {f"DEMOGRAPHICS_{k}": v for k, v in env.items()}
    return subprocess.run(
        [str(DEMOGRAPHICS), *args],
        env={**os.environ, "DEMOGRAPHICS_HOME": str(tmp_path / "home"), **values},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "variable", "value", "accepted"),
    [
        (("drop", "list", "--district", "x"), "SETTLE_SECONDS", "abc", SECONDS),
        (("runs",), "LOCK_WAIT_SECONDS", "-5", SECONDS),
        (("nightly",), "DISTRICT_CONCURRENCY", "0", "a whole number, 1 or more"),
        (
            ("approve", "1", "--as", "x@y.org"),
            "MAX_FILE_MB",
            "big",
            "a number of megabytes, more than 0",
        ),
        (("access", "managers", "-d", "x"), "SFTP_ATTEMPTS", "s3cr3t", "a whole number, 1 or more"),
    ],
)
def test_every_command_prints_a_wrong_setting_as_one_line_exit_2(
    tmp_path: Path, args: tuple[str, ...], variable: str, value: str, accepted: str
) -> None:
    done = demographics(tmp_path, *args, **{variable: value})
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr == f"error: DEMOGRAPHICS_{variable} must be {accepted}\n"
    assert not (tmp_path / "home").exists()  # refused before anything was started or made

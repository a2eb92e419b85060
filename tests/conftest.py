"""Shared helpers: files are real files on disk, written the way the tests describe."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks.read import read_source
from tasks.validate import Validation, validate_bytes

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

"""`demographics validate`: formats, exit statuses and clean errors, on real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import HEADER, row

CLEAN = f"{HEADER}\n{row()}\n"
WITH_ERRORS = f"{HEADER}\n{row(gender='Male')}\n{row(ssid='0012345679', email='b@x.org')}\n"
WARNINGS_ONLY = f"{HEADER}\n{row(gender='f')}\n"


def test_exit_0_when_clean_even_with_warnings(cli, write_csv) -> None:
    assert cli("validate", write_csv(CLEAN)).exit_code == 0
    result = cli("validate", write_csv(WARNINGS_ONLY))
    assert result.exit_code == 0
    assert "normalized_value" in result.stdout


def test_exit_1_when_errors(cli, write_csv) -> None:
    result = cli("validate", write_csv(WITH_ERRORS))
    assert result.exit_code == 1
    assert "1 with errors" in result.stdout
    assert "invalid_gender" in result.stdout


def test_exit_1_for_a_file_level_error(cli, write_csv) -> None:
    assert cli("validate", write_csv(b"")).exit_code == 1


def test_missing_file_is_one_line_and_exit_2(cli, tmp_path) -> None:
    result = cli("validate", tmp_path / "nope.csv")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.strip().count("\n") == 0
    assert "no such file" in result.stderr


def test_a_directory_is_one_line_and_exit_2(cli, tmp_path) -> None:
    result = cli("validate", tmp_path)
    assert result.exit_code == 2
    assert "is a directory" in result.stderr


def test_bad_arguments_exit_2(cli, write_csv) -> None:
    assert cli("validate", write_csv(CLEAN), "--format", "xml").exit_code == 2
    assert cli("validate", write_csv(CLEAN), "--gender-codes", " , ").exit_code == 2


def test_json_is_the_contract_report(cli, write_csv) -> None:
    result = cli("validate", write_csv(WITH_ERRORS, "d001-demographics.csv"), "--format", "json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["report_version"] == 1
    assert report["district"] is None
    assert report["file"]["name"] == "d001-demographics.csv"
    assert report["summary"]["error_rows"] == 1
    assert report["issues"] == [
        {
            "row": 2,
            "column": "gender",
            "severity": "error",
            "code": "invalid_gender",
            "message": "gender must be M or F",
            "value": "Male",
        }
    ]
    assert "sync" not in report


def test_text_shows_summary_and_a_table(cli, write_csv) -> None:
    result = cli("validate", write_csv(WITH_ERRORS))
    lines = result.stdout.splitlines()
    assert lines[0].startswith("demographics.csv: 2 rows, 1 valid, 1 with errors")
    header = next(line for line in lines if line.startswith("ROW"))
    assert header.split() == ["ROW", "SEVERITY", "CODE", "COLUMN", "VALUE", "MESSAGE"]


def test_text_escapes_control_characters_in_values(cli, write_csv) -> None:
    result = cli("validate", write_csv('SSID,race\n"12\x1b[31m\r\nx",a\n'))
    assert "\x1b" not in result.stdout
    assert "\\x1b[31m\\r\\nx" in result.stdout


def test_text_limits_the_table_and_says_so(cli, write_csv) -> None:
    body = "\n".join(row(ssid=str(i)) for i in range(30))
    result = cli("validate", write_csv(f"{HEADER}\n{body}\n"), "--max-issues", "5")
    assert "... and 25 more issues" in result.stdout


def test_html_report_escapes_what_the_file_carries(cli, write_csv, tmp_path) -> None:
    hostile = "<script>alert(1)</script>"
    content = f"SSID,gender,<b>bold</b>\n0012345678,{hostile},x\n"
    out = tmp_path / "out" / "report.html"
    result = cli("validate", write_csv(content), "--format", "html", "--output", out)
    assert result.exit_code == 1
    assert f"report written to {out}" in result.stdout
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page
    # The severity filter and the counts by code are on the page.
    assert 'id="show-errors"' in page and 'id="show-warnings"' in page
    assert "invalid_gender" in page and "unknown_column" in page


def test_html_rows_carry_their_severity_for_the_filter(cli, write_csv, tmp_path) -> None:
    out = tmp_path / "r.html"
    cli(
        "validate",
        write_csv(f"{HEADER}\n{row(gender='f')}\n{row(ssid='1')}\n"),
        "-f",
        "html",
        "-o",
        out,
    )
    page = out.read_text()
    assert page.count('<tr class="error">') == 2  # the code count row and the issue row
    assert page.count('<tr class="warning">') == 2


def test_output_file_for_json(cli, write_csv, tmp_path) -> None:
    out = tmp_path / "r.json"
    result = cli("validate", write_csv(CLEAN), "--format", "json", "--output", out)
    assert result.exit_code == 0
    assert json.loads(out.read_text())["summary"]["valid_rows"] == 1


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("demographics")
    return subprocess.run(
        [str(exe), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_installed_command_reports_a_missing_file_without_traceback(tmp_path) -> None:
    result = run("validate", str(tmp_path / "missing.csv"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: cannot read")
    assert "Traceback" not in result.stderr


def test_validate_does_not_import_prefect_or_connect_anywhere(write_csv) -> None:
    path = write_csv(CLEAN)
    probe = (
        "import sys\n"
        "from flows.cli import app\n"
        "try:\n"
        f"    app(['validate', {str(path)!r}, '--format', 'json'])\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('prefect', 'psycopg', 'sqlalchemy', 'httpx'))\n"
        "print('LOADED', loaded, code, file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False
    )
    assert "LOADED [] 0" in result.stderr, result.stderr


def test_max_issues_zero_lists_every_issue(cli, write_csv) -> None:
    body = "\n".join(row(ssid=str(i)) for i in range(250))
    path = write_csv(f"{HEADER}\n{body}\n")
    assert "... and 50 more issues" in cli("validate", path).stdout
    full = cli("validate", path, "--max-issues", "0").stdout
    assert "more issues" not in full
    assert full.count("invalid_ssid") == 251  # the by-code line and 250 table rows


def test_a_file_level_error_is_the_outcome_even_when_rows_are_valid(cli, write_csv) -> None:
    result = cli("validate", write_csv(f"SSID,gender,Gender\n{'0012345678,F,F'}\n"))
    assert result.exit_code == 1
    assert "file-level error" in result.stdout.splitlines()[1]
    assert "duplicate_column" in result.stdout

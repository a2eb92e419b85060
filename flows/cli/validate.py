"""`demographics validate`: check a file against the CSV contract, touching nothing else.

It loads neither Prefect nor the database driver (start-up speed; a test checks it).
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.output import fail, parse_gender_codes, read_or_fail, write_report

app = typer.Typer()


class Format(StrEnum):
    text = "text"
    json = "json"
    html = "html"


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="The demographics CSV file to check.")],
    format: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = (
        Format.text
    ),
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the report here.")
    ] = None,
    gender_codes: Annotated[
        str, typer.Option(help="Allowed gender codes, comma-separated (a district setting).")
    ] = "M,F",
    max_issues: Annotated[
        int | None,
        typer.Option(
            help="Issues listed in text (default 200) and html (default 10000) output; "
            "0 lists all. JSON always lists all.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Check a file against the CSV contract without writing anything anywhere.

    Exit status: 0 no errors, 1 errors found, 2 the command could not run.
    """
    from tasks.render import (
        DEFAULT_HTML_ISSUES,
        DEFAULT_TEXT_ISSUES,
        render_html,
        render_json,
        render_text,
        summary_line,
    )
    from tasks.validate import validate_bytes

    codes = parse_gender_codes(gender_codes)
    if not codes:
        fail("--gender-codes needs at least one code, e.g. M,F")
    data = read_or_fail(file)
    report = validate_bytes(data, file.name, gender_codes=codes).report
    if format is Format.json:
        rendered = render_json(report) + "\n"
    elif format is Format.html:
        rendered = render_html(report, DEFAULT_HTML_ISSUES if max_issues is None else max_issues)
    else:
        rendered = render_text(report, DEFAULT_TEXT_ISSUES if max_issues is None else max_issues)
    if output is None:
        sys.stdout.write(rendered)
    else:
        write_report(output, rendered)
        typer.echo(summary_line(report))
        typer.echo(f"report written to {output}")
    raise typer.Exit(report.exit_code)

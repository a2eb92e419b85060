"""The `demographics` command: a thin shell over tasks and flows.

Prefect is imported only by the commands that run flows, so a file-only command such as
`demographics validate` starts fast and touches nothing but the file.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer

app = typer.Typer(
    name="demographics",
    help="Validate and sync student demographics files for a school district.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SAMPLE_FILE = Path(__file__).resolve().parent.parent / "schemas" / "samples" / "demographics.csv"


class Format(StrEnum):
    text = "text"
    json = "json"
    html = "html"


def fail(message: str) -> NoReturn:
    """One line on stderr and exit status 2: the command could not run."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _gender_codes(value: str) -> tuple[str, ...]:
    codes = tuple(dict.fromkeys(c.strip().upper() for c in value.split(",") if c.strip()))
    if not codes:
        fail("--gender-codes needs at least one code, e.g. M,F")
    return codes


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
    from tasks.read import SourceUnreadable, read_source
    from tasks.render import (
        DEFAULT_HTML_ISSUES,
        DEFAULT_TEXT_ISSUES,
        render_html,
        render_json,
        render_text,
        summary_line,
    )
    from tasks.validate import validate_bytes

    codes = _gender_codes(gender_codes)
    try:
        data = read_source(file)
    except SourceUnreadable as exc:
        fail(f"cannot read {exc}")
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


def write_report(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or 'I/O error'}")


@app.command()
def demo() -> None:
    """Run the main job end to end on the bundled sample and embedded defaults."""
    from tasks.read import read_source
    from tasks.render import render_html, render_text
    from tasks.settings import load_settings
    from tasks.validate import validate_bytes

    settings = load_settings()
    report = validate_bytes(read_source(SAMPLE_FILE), SAMPLE_FILE.name).report
    out_dir = settings.reports_dir
    html_path = out_dir / "demo-validation.html"
    json_path = out_dir / "demo-validation.json"
    write_report(html_path, render_html(report))
    write_report(json_path, report.to_json() + "\n")
    typer.echo(f"Validated the sample file {SAMPLE_FILE}\n")
    typer.echo(render_text(report, max_issues=15))
    typer.echo(f"HTML report: {html_path}")
    typer.echo(f"JSON report: {json_path}")


def main() -> None:
    """Entry point: usage errors exit 2; an unexpected failure is one line, never a traceback."""
    try:
        app(standalone_mode=True)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # the message may quote data: name the type only
        typer.echo(f"error: unexpected failure ({type(exc).__name__})", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()

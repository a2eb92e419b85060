"""Render a report as text, JSON or a standalone HTML page.

Every template goes through one jinja2 environment with autoescape on (jinja2's default is
off): a file can carry `<script>` in any cell, and the report shows offending values.
"""

from __future__ import annotations

from datetime import UTC
from functools import lru_cache
from typing import TYPE_CHECKING

import jinja2

from schemas.report import Report
from schemas.roster import RosterIssue, RosterResult
from tasks.advice import short_message

if TYPE_CHECKING:
    from tasks.store import RunRow

DEFAULT_TEXT_ISSUES = 200
DEFAULT_HTML_ISSUES = 10_000
_CONTROL = {i: f"\\x{i:02x}" for i in range(32)} | {0x7F: "\\x7f"}
_CONTROL.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


@lru_cache(maxsize=1)
def template_environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("tasks", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_json(report: Report) -> str:
    return report.to_json()


def printable(value: str | None) -> str:
    """A value safe for one terminal line: control characters shown, never executed."""
    return "" if value is None else value.translate(_CONTROL)


def outcome_sentence(report: Report) -> str:
    s = report.summary
    if report.stopped:
        return (
            "The file has a file-level error (listed first below): nothing in it can be "
            "applied until that is fixed."
        )
    if report.has_errors and s.rows == s.error_rows:
        return "Every row has errors: nothing in the file can be applied as it is."
    if report.has_errors:
        applied = report.sync is not None and report.sync.status == "succeeded"
        return (
            f"{s.error_rows} of {s.rows} rows have errors and "
            f"{'were' if applied else 'would be'} skipped; {s.valid_rows} rows are valid."
        )
    return f"All {s.rows} rows are valid."


def summary_line(report: Report) -> str:
    s = report.summary
    return (
        f"{report.file.name}: {s.rows} rows, {s.valid_rows} valid, {s.error_rows} with errors, "
        f"{s.warning_rows} with warnings ({s.errors} errors, {s.warnings} warnings)"
    )


def render_text(report: Report, max_issues: int = DEFAULT_TEXT_ISSUES) -> str:
    limit = None if max_issues <= 0 else max_issues
    lines = [summary_line(report), outcome_sentence(report)]
    encoding = report.file.encoding or "unreadable"
    lines.append(f"encoding {encoding}, {report.file.bytes} bytes, sha256 {report.file.sha256}")
    counts = report.counts_by_code()
    if counts:
        lines.append("")
        lines.append("by code: " + ", ".join(f"{code} {n}" for code, _sev, n in counts))
        issues = report.issue_list(limit)
        header = ("ROW", "SEVERITY", "CODE", "COLUMN", "VALUE", "MESSAGE")
        table = [
            (
                "" if i.row is None else str(i.row),
                i.severity.value,
                i.code.value,
                printable(i.column),
                printable(i.value),
                i.message,
            )
            for i in issues
        ]
        widths = [min(max(len(r[k]) for r in [header, *table]), 40) for k in range(len(header) - 1)]
        lines.append("")
        for r in [header, *table]:
            cells = [r[k][:40].ljust(widths[k]) for k in range(len(widths))]
            lines.append("  ".join([*cells, r[-1]]).rstrip())
        hidden = report.issues.height - len(issues)
        if hidden > 0:
            lines.append(f"... and {hidden} more issues (use --format json or html for all)")
    return "\n".join(lines) + "\n"


def render_html(report: Report, max_issues: int = DEFAULT_HTML_ISSUES) -> str:
    issues = report.issue_list(max_issues if max_issues > 0 else None)
    template = template_environment().get_template("validation_report.html.j2")
    return template.render(
        report=report,
        summary=report.summary,
        issues=issues,
        messages=[short_message(i.code.value, i.value, i.message) for i in issues],
        hidden=report.issues.height - len(issues),
        counts=report.counts_by_code(),
        outcome=outcome_sentence(report),
        advice=advice_lines(report),
    )


MAX_ADVICE = 12  # entries an email or an HTML report leads with; the JSON report has all


def _rows_label(rows: list[int], count: int) -> str:
    """`row 12`, `rows 5, 8`, `rows 2, 3, ...` (more issues than rows listed); or ''."""
    if not rows:
        return ""
    listed = ", ".join(map(str, rows)) + (", ..." if count > len(rows) else "")
    return f"{'row' if len(rows) == 1 and count == 1 else 'rows'} {listed}"


def advice_lines(report: Report) -> list[dict[str, str]]:
    """The advice as a report or an email shows it: what, how many, which rows, the fix."""
    return [
        {
            "what": a.code + (f" in {printable(a.column)}" if a.column else ""),
            "count": f"{a.count} {'issue' if a.count == 1 else 'issues'}",
            "rows": _rows_label(a.rows, a.count),
            "fix": printable(a.fix),
        }
        for a in report.advice[:MAX_ADVICE]
    ]


def sync_line(report: Report, message: str) -> str:
    """One line: the run, its status and counts, then what happened in words."""
    block = report.sync
    if block is None:
        return message
    run = f"run {block.run_id}" if block.run_id else "no run recorded"
    return (
        f"{block.status} ({run}): matched {block.matched}, updated {block.updated}, "
        f"unchanged {block.unchanged}, unmatched {block.unmatched}; {message}"
    )


def render_sync_text(report: Report, message: str, max_issues: int = DEFAULT_TEXT_ISSUES) -> str:
    return sync_line(report, message) + "\n" + render_text(report, max_issues)


def roster_issue_line(i: RosterIssue) -> str:
    """One roster issue as the CLI and the emails say it: severity, code, file, row, column."""
    where = i.file + (f" row {i.row}" if i.row is not None else "")
    where += f", column {i.column}" if i.column else ""
    return f"{i.severity:<7} {i.code:<18} {where}: {i.message}"


def render_roster(result: RosterResult, max_issues: int = DEFAULT_TEXT_ISSUES) -> str:
    lines = []
    if result.loaded:
        lines.append(f"roster of district {result.district} loaded:")
        for name, c in result.counts.items():
            lines.append(
                f"  {name:<12} {c.active:>8} active  (+{c.added} added, {c.updated} updated, "
                f"{c.deactivated} deactivated)"
            )
        for email in result.granted:
            lines.append(f"  {email} is now a data manager (named when the district was added)")
    else:
        lines.append(
            f"roster of district {result.district} NOT loaded: {result.errors} errors "
            "(a snapshot with errors would deactivate people who are still there)"
        )
    shown = result.issues if max_issues <= 0 else result.issues[:max_issues]
    lines.extend(f"  {roster_issue_line(i)}" for i in shown)
    if len(shown) < len(result.issues):
        lines.append(f"  ... and {len(result.issues) - len(shown)} more (use --format json)")
    return "\n".join(lines) + "\n"


def render_nightly(districts: list[str], runs: list[RunRow]) -> str:
    """What a nightly run did, a line per district and per file (its runs, oldest first);
    a district that recorded no run took no file (its run failed, or its drop had none)."""
    lines = []
    for code in sorted({*districts, *(r.district for r in runs)}):
        mine = sorted((r for r in runs if r.district == code), key=lambda r: r.run_id)
        if not mine:
            lines.append(f"  {code}: no file taken")
            continue
        lines.append(f"  {code}: {len(mine)} {'file' if len(mine) == 1 else 'files'}")
        for r in mine:
            said = f": {r.message}" if r.message else ""
            lines.append(
                f"    {printable(r.file_name) or '-'}: {r.kind} {r.status} (run {r.run_id}){said}"
            )
    return "\n".join(lines) + "\n" if lines else ""


def render_runs(runs: list[RunRow]) -> str:
    if not runs:
        return "no runs yet\n"
    header = (
        "RUN",
        "DISTRICT",
        "KIND",
        "STATUS",
        "FINISHED (UTC)",
        "FILE",
        "MATCHED",
        "UPDATED",
        "VALUES",
        "NOTE",
    )
    table = []
    for r in runs:
        note = []
        if r.resolution:
            note.append(f"{r.resolution} by {r.resolved_by}")
        if r.undone_by:
            note.append(f"undone by run {r.undone_by}")
        if r.message:
            note.append(r.message)
        table.append(
            (
                str(r.run_id),
                r.district,
                r.kind,
                r.status,
                r.finished_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
                printable(r.file_name) or "-",
                "" if r.matched is None else str(r.matched),
                "" if r.updated is None else str(r.updated),
                "" if r.values_changed is None else str(r.values_changed),
                "; ".join(note),
            )
        )
    widths = [max(len(row[k]) for row in [header, *table]) for k in range(len(header) - 1)]
    return (
        "\n".join(
            "  ".join([*(row[k].ljust(widths[k]) for k in range(len(widths))), row[-1]]).rstrip()
            for row in [header, *table]
        )
        + "\n"
    )

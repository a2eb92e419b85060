"""Build the results email and the drop notices as `EmailMessage`s (nothing is sent here).

A message shows counts, issue codes, messages, row numbers and the offending values the report
already holds, never anything else from a file. Values come from district uploads and may hold
markup or formulas: the HTML part is rendered with autoescape on, the text part shows control
characters escaped, and the CSV attachment neutralises spreadsheet formulas.
"""

from __future__ import annotations

import csv
import email.policy
import io
import re
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from functools import lru_cache
from typing import Any

import css_inline
import jinja2
import polars as pl

from schemas.report import ISSUE_COLUMNS, Issue, Report, SyncBlock
from tasks.advice import short_message
from tasks.render import advice_lines, outcome_sentence, printable, template_environment

ATTACHMENT_NAME = "issues.csv"
DEFAULT_MAX_ISSUES = 200
DISTRICT_HEADER = "X-Demographics-District"

# Beyond render.printable's C0 controls: C1 controls and the invisible characters that reorder
# or split text (a value could otherwise make the table read differently from what it holds).
_INVISIBLE = {i: f"\\x{i:02x}" for i in range(0x80, 0xA0)} | {
    c: f"\\u{c:04x}"
    for c in (
        0x061C,
        0x200E,
        0x200F,
        0x2028,
        0x2029,
        0xFEFF,
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
    )
}
# A spreadsheet runs a cell as a formula when it starts with one of these, even after spaces
# (NBSP included) or written in fullwidth forms; tab and CR at the very start count too.
_FORMULA_START = ("=", "+", "-", "@", "\uff1d", "\uff0b", "\uff0d", "\uff20")
_CONTROL_START = ("\t", "\r")
_LEADING_BLANK = re.compile(r"[\s\u200b-\u200d\u2060\ufeff]*")  # spaces, NBSP, zero-width
# What may stay of a name in a Message-ID domain or an outbox file name.
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def shown(value: str | None) -> str:
    """A value safe to show on one line: control and invisible characters written out."""
    return printable(value).translate(_INVISIBLE)


def _header_text(value: str, limit: int = 200) -> str:
    """Header text without control characters (no header injection), on one line."""
    return " ".join(shown(value).split())[:limit]


@lru_cache(maxsize=1)
def _text_environment() -> jinja2.Environment:
    """The environment for the text part: escaping off for `.txt.j2` only, on for the rest,
    so an HTML template loaded here by mistake is still escaped."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("tasks", "templates"),
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html", "htm", "xml", "html.j2"),
            disabled_extensions=("txt.j2",),
            default_for_string=True,
            default=True,
        ),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


@lru_cache(maxsize=1)
def _inliner() -> css_inline.CSSInliner:
    return css_inline.CSSInliner(load_remote_stylesheets=False)


def _render_html(template: str, **context: Any) -> str:
    """Render with autoescape, then move the <style> rules into style attributes: most email
    clients drop <style> blocks."""
    html = template_environment().get_template(template).render(**context)
    return _inliner().inline(html)


def _render_text(template: str, **context: Any) -> str:
    return _text_environment().get_template(template).render(**context)


def _new_message(
    district_code: str, subject: str, recipients: Sequence[str], sender: str
) -> EmailMessage:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["Subject"] = _header_text(subject, limit=250)
    msg["From"] = sender
    if recipients:
        msg["To"] = ", ".join(recipients)
    msg["Date"] = format_datetime(datetime.now(UTC))
    domain = parseaddr(sender)[1].rpartition("@")[2] or "localhost"
    # Short, so that the header is not folded (some tools then keep the leading space).
    msg["Message-ID"] = f"<{secrets.token_hex(10)}@{SAFE_NAME.sub('-', domain)}>"
    msg[DISTRICT_HEADER] = _header_text(district_code, limit=100)
    return msg


def results_subject(district_code: str, report: Report) -> str:
    """District, outcome and counts; nothing from the file itself (not even its name)."""
    assert report.sync is not None
    s, block = report.summary, report.sync
    errors = f"{s.error_rows} with errors"
    counts = {
        "succeeded": f"sync succeeded — {s.rows} rows, {block.updated} updated, {errors}",
        "held": f"sync held for approval — {s.rows} rows, {block.updated} would be updated, "
        f"{errors}",
        "rejected": f"sync rejected — {s.rows} rows, {errors}, nothing applied",
        "failed": f"sync failed — {s.rows} rows, nothing applied",
        "preview": f"preview — {s.rows} rows, {block.updated} would be updated, {errors}",
    }[block.status]
    return f"{_header_text(district_code, limit=100)}: {counts}"


def next_steps(
    district_code: str, report: Report, file_kept: bool = True, same_as: int | None = None
) -> list[str]:
    """What the data manager does now, by status: the part of the email people act on.
    `file_kept`: False for a preview from the drop's preview/ folder (deleted once sent);
    `same_as`: the run that already applied this very file (a rerun changes nothing)."""
    assert report.sync is not None
    s, block = report.summary, report.sync
    run = f"run id {block.run_id}" if block.run_id else "the run id (none was recorded)"
    if same_as is not None and block.status == "succeeded":
        return [
            f"Nothing changed: this very file was already applied by run {same_as}, and its "
            "email then listed what to fix. Upload a new file with the corrected rows only."
        ]
    if block.status == "succeeded" and s.error_rows:
        return [
            f"The rows without errors were applied. Fix the {s.error_rows} rows with errors "
            f"listed below (all of them are in the attached {ATTACHMENT_NAME}) and upload a new "
            "file with only those rows.",
        ]
    if block.status == "succeeded":
        if s.warning_rows:
            return [
                "Nothing to do: every row was applied. The warnings below did not block any "
                "row; review them when convenient."
            ]
        return ["Nothing to do: every row was applied."]
    if block.status == "rejected":
        return [
            "Nothing was applied. Fix the file-level error listed first below, and the rows with "
            "errors if any are listed, then upload the whole file again.",
        ]
    if block.status == "held":
        return [
            "Nothing was applied yet: the file would change too many values on record. A data "
            "manager reviews what would change and decides.",
            f"To apply it: run the Prefect deployment approve-held-sync with {run} and your "
            "email as approved_by, or run `demographics sync FILE --district "
            f"{_header_text(district_code, 100)} --approve --as YOUR_EMAIL` with the same file.",
            f"To drop it: run the Prefect deployment discard-held-sync with {run} and your email "
            "as discarded_by.",
        ]
    if block.status == "failed":
        return [
            "Nothing was applied. The file is kept and is tried again on the next run; if this "
            "keeps happening, tell the operator of the sync.",
        ]
    if not file_kept:
        return [
            "Nothing was written: this is a preview of what a sync of this file would do. The "
            "file is deleted from preview/ now that this email is out; to sync it, upload it "
            "to the district's folder.",
        ]
    return ["Nothing was written: this was a preview. The file is kept."]


def _tone(report: Report) -> str:
    assert report.sync is not None
    status = report.sync.status
    if status in ("rejected", "failed"):
        return "bad"
    if status == "held" or report.has_errors:
        return "warn"
    return "neutral" if status == "preview" else "good"


def _banner(report: Report, message: str, same_as: int | None) -> str:
    """The one reason at the top: the outcome, and the rows when they matter. A rejected file
    or a rerun says only why (the rows would repeat it, or ask again for fixes made)."""
    assert report.sync is not None
    if report.sync.status in ("rejected", "failed") or same_as is not None:
        return _sentence(message)
    return " ".join(p for p in (_sentence(message), outcome_sentence(report)) if p)


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def _issue_cells(issue: Issue) -> dict[str, Any]:
    value = shown(issue.value)
    return {
        "row": "" if issue.row is None else str(issue.row),
        "severity": issue.severity.value,
        "code": issue.code.value,
        "column": shown(issue.column),
        "message": shown(short_message(issue.code.value, issue.value, issue.message)),
        "value": value,
        # Where a long value may break on a phone: after @ . _ - (never inside a word).
        "value_parts": _BREAKS.split(value),
    }


_BREAKS = re.compile(r"(?<=[@._\-/])")


def _text_table(rows: list[dict[str, str]]) -> list[str]:
    """Aligned columns; the message last, since it is the long one."""
    keys = ("row", "column", "severity", "code", "value", "message")  # as the HTML tables
    header = {k: k.upper() for k in keys}
    table = [header, *rows]
    widths = {k: min(max(len(r[k]) for r in table), 40) for k in keys[:-1]}
    return [
        "  ".join([*(r[k].ljust(widths[k]) for k in keys[:-1]), r["message"]]).rstrip()
        for r in table
    ]


# Kinds of change an email lists (field, from, to); the JSON report holds all of them.
MAX_CHANGES_SHOWN = 30
NO_VALUE = "(no value yet)"


def _changes(block: SyncBlock) -> dict[str, Any]:
    """What a preview or a held sync would change, for the email's table: values and counts,
    never who."""
    if block.status not in ("preview", "held"):
        return {"changes": [], "changes_hidden": 0}
    listed = [
        {
            "field": c.field,
            "before": NO_VALUE if c.before is None else shown(c.before)[:80],
            "after": NO_VALUE if c.after is None else shown(c.after)[:80],
            "students": c.students,
        }
        for c in block.changes[:MAX_CHANGES_SHOWN]
    ]
    return {"changes": listed, "changes_hidden": len(block.changes) - len(listed)}


def _results_context(
    district_code: str,
    district_name: str,
    report: Report,
    message: str,
    issues: list[dict[str, str]],
    file_kept: bool = True,
    same_as: int | None = None,
) -> dict[str, Any]:
    """What both parts of the results email show; every value from the file passes `shown`."""
    assert report.sync is not None
    block, s = report.sync, report.summary
    would = block.status in ("held", "preview")
    return {
        "district_code": shown(district_code),
        "district_name": shown(district_name),
        "status": block.status,
        "outcome": _banner(report, message, same_as),
        "tone": _tone(report),
        "file_name": shown(report.file.name)[:120],
        "file_bytes": report.file.bytes,
        "sha256": report.file.sha256,
        "summary": s,
        "sync": block,
        "run_id": shown(block.run_id) if block.run_id else None,
        "updated_label": "would be updated" if would else "updated",
        "steps": next_steps(district_code, report, file_kept, same_as),
        # From the file (an unknown header): shown as every other value is.
        "advice": [{k: shown(v)[:2000] for k, v in a.items()} for a in advice_lines(report)],
        **_changes(block),
        "counts": report.counts_by_code(),
        "issues": issues,
        "total": report.issues.height,
        "hidden": report.issues.height - len(issues),
        "attachment": ATTACHMENT_NAME,
    }


def build_results_message(
    district_code: str,
    district_name: str,
    report: Report,
    message: str,
    recipients: Sequence[str],
    sender: str,
    *,
    max_issues: int = DEFAULT_MAX_ISSUES,
    file_kept: bool = True,
    same_as: int | None = None,
) -> EmailMessage:
    """The results email of one sync: text and HTML alternatives, plus every issue as CSV.

    `message` is the sync's one-sentence outcome (`SyncOutcome.message`). The body lists the
    first `max_issues` issues (0: none); the attachment always holds all of them. `file_kept`:
    False for a preview from the preview/ folder, which is deleted once the email is out.
    """
    if report.sync is None:
        raise ValueError("a results email needs a report with its sync block")
    issues = [_issue_cells(i) for i in report.issue_list(max(max_issues, 0))]
    context = _results_context(
        district_code, district_name, report, message, issues, file_kept, same_as
    )
    subject = results_subject(district_code, report)
    msg = _new_message(district_code, subject, recipients, sender)
    text = _render_text(
        "results_email.txt.j2", subject=subject, table=_text_table(issues), **context
    )
    msg.set_content(text, subtype="plain", charset="utf-8")
    msg.add_alternative(
        _render_html("results_email.html.j2", subject=subject, **context),
        subtype="html",
        charset="utf-8",
    )
    msg.add_attachment(
        issues_csv(report),
        maintype="text",
        subtype="csv",
        filename=ATTACHMENT_NAME,
        params={"charset": "utf-8"},
    )
    return _tidy(msg)


def build_notice_message(
    district_code: str,
    district_name: str,
    subject: str,
    lines: Sequence[str],
    recipients: Sequence[str],
    sender: str,
) -> EmailMessage:
    """A short notice about the drop (files deleted, refused, too large): text and HTML.

    The subject is prefixed with the district code, as the results email's is.
    """
    code = _header_text(district_code, limit=100)
    full_subject = f"{code}: {subject}"
    context = {
        "subject": _header_text(full_subject, limit=250),
        "district_code": shown(district_code),
        "district_name": shown(district_name),
        "lines": [shown(line) for line in lines],
    }
    msg = _new_message(district_code, full_subject, recipients, sender)
    msg.set_content(_render_text("notice_email.txt.j2", **context), charset="utf-8")
    msg.add_alternative(
        _render_html("notice_email.html.j2", **context), subtype="html", charset="utf-8"
    )
    return _tidy(msg)


def _tidy(msg: EmailMessage) -> EmailMessage:
    """MIME-Version belongs on the message only (the stdlib repeats it on added parts)."""
    for part in msg.walk():
        if part is not msg:
            del part["MIME-Version"]
    return msg


def _neutral(cell: Any) -> Any:
    """A cell a spreadsheet will not run as a formula: a leading quote when it starts with tab
    or CR, or when its first visible character is = + - @ (ASCII or fullwidth)."""
    if not isinstance(cell, str):
        return cell
    blank = _LEADING_BLANK.match(cell)
    visible = cell[blank.end() :] if blank else cell
    if cell.startswith(_CONTROL_START) or visible.startswith(_FORMULA_START):
        return "'" + cell
    return cell


# The attachment's columns: the issue's row, then the student behind it (the row's SSID and
# email as the file had them: the source file is deleted after its run), then the issue.
CSV_COLUMNS = ("row", "SSID", "email", "column", "severity", "code", "message", "value")


def issues_csv(report: Report) -> bytes:
    """Every issue as CSV (UTF-8 with a byte-order mark, so Excel reads accents right), with
    spreadsheet formulas neutralised: the values come from an uploaded file."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in _with_students(report).select(CSV_COLUMNS).iter_rows():
        writer.writerow([_neutral(cell) for cell in row])
    return buffer.getvalue().encode("utf-8-sig")


def _with_students(report: Report) -> pl.DataFrame:
    issues = report.issues.select(ISSUE_COLUMNS)
    if report.students is None:
        empty = pl.lit(None, dtype=pl.String)
        return issues.with_columns(empty.alias("SSID"), empty.alias("email"))
    return issues.join(report.students, on="row", how="left", maintain_order="left")

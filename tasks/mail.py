"""The results email and drop notices: build them, then send them over SMTP or into the outbox.

A message shows counts, issue codes, messages, row numbers and the offending values the report
already holds, never anything else from a file. Values come from district uploads and may hold
markup or formulas: the HTML part is rendered with autoescape on, the text part shows control
characters escaped, and the CSV attachment neutralises spreadsheet formulas.

Nothing here logs a message's contents, and a `MailError` names the server and what went wrong,
never the message or the password; its `transient` says whether trying again later may help.
"""

from __future__ import annotations

import contextlib
import csv
import email.policy
import errno
import io
import ipaddress
import os
import re
import secrets
import smtplib
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

import css_inline
import jinja2

from schemas.report import ISSUE_COLUMNS, Issue, Report
from tasks.errors import DemographicsError
from tasks.render import outcome_sentence, printable, template_environment
from tasks.settings import Settings

ATTACHMENT_NAME = "issues.csv"
DEFAULT_MAX_ISSUES = 200
SMTP_TIMEOUT_SECONDS = 30.0
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
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class MailError(DemographicsError):
    """Sending failed; the message is safe to print (no message contents, no password).

    Transient when the server is down or busy or gave a 4xx reply; not when settings,
    certificates, credentials or a 5xx refusal must change first.
    """


@dataclass(frozen=True)
class Delivery:
    """Where a message went: `sent` over SMTP, or `written` to the outbox (`paths`)."""

    kind: Literal["sent", "written"]
    detail: str
    paths: tuple[Path, ...] = ()


# --- building ----------------------------------------------------------------------------


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
    msg["Message-ID"] = f"<{secrets.token_hex(10)}@{_SAFE_NAME.sub('-', domain)}>"
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


def next_steps(district_code: str, report: Report) -> list[str]:
    """What the data manager does now, by status: the part of the email people act on."""
    assert report.sync is not None
    s, block = report.summary, report.sync
    run = f"run id {block.run_id}" if block.run_id else "the run id (none was recorded)"
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
            "manager reviews the changes counted here and decides.",
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
    return ["Nothing was written: this was a preview. The file is kept."]


def _tone(report: Report) -> str:
    assert report.sync is not None
    status = report.sync.status
    if status in ("rejected", "failed"):
        return "bad"
    if status == "held" or report.has_errors:
        return "warn"
    return "neutral" if status == "preview" else "good"


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def _issue_cells(issue: Issue) -> dict[str, str]:
    return {
        "row": "" if issue.row is None else str(issue.row),
        "severity": issue.severity.value,
        "code": issue.code.value,
        "column": shown(issue.column),
        "message": shown(issue.message),
        "value": shown(issue.value),
    }


def _text_table(rows: list[dict[str, str]]) -> list[str]:
    """Aligned columns; the message last, since it is the long one."""
    keys = ("row", "severity", "code", "column", "value", "message")
    header = {k: k.upper() for k in keys}
    table = [header, *rows]
    widths = {k: min(max(len(r[k]) for r in table), 40) for k in keys[:-1]}
    return [
        "  ".join([*(r[k].ljust(widths[k]) for k in keys[:-1]), r["message"]]).rstrip()
        for r in table
    ]


def build_results_message(
    district_code: str,
    district_name: str,
    report: Report,
    message: str,
    recipients: Sequence[str],
    sender: str,
    *,
    max_issues: int = DEFAULT_MAX_ISSUES,
) -> EmailMessage:
    """The results email of one sync: text and HTML alternatives, plus every issue as CSV.

    `message` is the sync's one-sentence outcome (`SyncOutcome.message`). The body lists the
    first `max_issues` issues (0: none); the attachment always holds all of them.
    """
    if report.sync is None:
        raise ValueError("a results email needs a report with its sync block")
    block, s = report.sync, report.summary
    issues = [_issue_cells(i) for i in report.issue_list(max(max_issues, 0))]
    would = block.status in ("held", "preview")
    context = {
        "district_code": shown(district_code),
        "district_name": shown(district_name),
        "status": block.status,
        "outcome": " ".join(p for p in (_sentence(message), outcome_sentence(report)) if p),
        "tone": _tone(report),
        "file_name": shown(report.file.name)[:120],
        "file_bytes": report.file.bytes,
        "sha256": report.file.sha256,
        "summary": s,
        "sync": block,
        "run_id": shown(block.run_id) if block.run_id else None,
        "updated_label": "would be updated" if would else "updated",
        "steps": next_steps(district_code, report),
        "counts": report.counts_by_code(),
        "issues": issues,
        "total": report.issues.height,
        "hidden": report.issues.height - len(issues),
        "attachment": ATTACHMENT_NAME,
    }
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


def issues_csv(report: Report) -> bytes:
    """Every issue as CSV (UTF-8 with a byte-order mark, so Excel reads accents right), with
    spreadsheet formulas neutralised: the values come from an uploaded file."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(ISSUE_COLUMNS)
    for row in report.issues.select(ISSUE_COLUMNS).iter_rows():
        writer.writerow([_neutral(cell) for cell in row])
    return buffer.getvalue().encode("utf-8-sig")


# --- delivering ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int
    user: str | None
    password: str | None
    starttls: bool

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split(url: str) -> tuple[SplitResult, str | None, int | None] | None:
    """None for a URL urllib cannot read; its error is dropped, since it can quote the
    password (`smtp://user:pa/ss@host` reads `pa` as a port)."""
    try:
        parts = urlsplit(url)
        return parts, parts.hostname, parts.port
    except ValueError:
        return None


def _target(url: str, password: str | None) -> _Target:
    """Parse the SMTP URL. Errors never repeat the URL: it may hold the password."""
    split = _split(url)
    if split is None:
        raise MailError(
            "the SMTP URL is not valid (percent-encode special characters in the user and password)"
        )
    parts, host, port = split
    scheme = parts.scheme.lower()
    if scheme not in ("smtp", "smtps"):
        raise MailError("the SMTP URL must start with smtp:// (STARTTLS) or smtps:// (TLS)")
    if not host:
        raise MailError("the SMTP URL names no host")
    if parts.path not in ("", "/") or parts.fragment:
        raise MailError("the SMTP URL must not have a path")
    options = parse_qs(parts.query, keep_blank_values=True)
    if set(options) - {"starttls"}:
        raise MailError("the SMTP URL accepts only the option starttls=off")
    setting = options.get("starttls", ["on"])[-1].lower()
    if setting not in ("on", "off"):
        raise MailError("the SMTP URL option starttls must be on or off")
    starttls = scheme == "smtp" and setting == "on"
    user = unquote(parts.username) if parts.username else None
    secret = password if password is not None else unquote(parts.password or "") or None
    if setting == "off":
        if scheme == "smtps":
            raise MailError("starttls=off applies to smtp:// only")
        if not _is_loopback(host):
            raise MailError("starttls=off is allowed only for a relay on this host (localhost)")
        if user or secret:
            raise MailError("credentials are never sent without TLS: remove starttls=off")
    if secret and not user:
        raise MailError("an SMTP password is set but the SMTP URL names no user")
    return _Target(
        scheme=scheme,
        host=host,
        port=port or (465 if scheme == "smtps" else 587),
        user=user,
        password=secret,
        starttls=starttls,
    )


def _recipients(msg: EmailMessage) -> list[str]:
    return [a.addr_spec for h in msg.get_all("To", []) for a in h.addresses]


def _tls_context(settings: Settings) -> ssl.SSLContext:
    """The system's CAs, or only the configured CA file (a private CA)."""
    ca = settings.smtp_ca_file
    try:
        return ssl.create_default_context(cafile=None if ca is None else str(ca.expanduser()))
    except (OSError, ssl.SSLError) as exc:
        raise MailError(f"cannot read the SMTP CA file {ca}") from exc


def _is_4xx(code: object) -> bool:
    """A 4xx reply is the server saying "not now" (busy, greylisting, a full queue)."""
    return isinstance(code, int) and 400 <= code < 500


def _smtp_failure(exc: smtplib.SMTPException, where: str) -> MailError:
    """A safe description: the server's reply code, never its text (a server may quote what
    it was sent, credentials included). Transient for a 4xx reply or a dropped connection."""
    code = getattr(exc, "smtp_code", None)
    said = f" ({code})" if code else ""
    transient = _is_4xx(code)
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return MailError(f"authentication failed at SMTP server {where}{said}", transient=transient)
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return MailError(
            f"SMTP server {where} does not support what sending needs (AUTH, or SMTPUTF8 for "
            "non-ASCII addresses)"
        )
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        replies = [reply[0] for reply in exc.recipients.values()]
        codes = ", ".join(sorted({str(c) for c in replies}))
        return MailError(
            f"SMTP server {where} refused all {len(exc.recipients)} recipients ({codes})",
            transient=bool(replies) and all(_is_4xx(c) for c in replies),
        )
    if isinstance(exc, smtplib.SMTPSenderRefused):
        return MailError(
            f"SMTP server {where} refused the sender address{said}", transient=transient
        )
    if isinstance(exc, smtplib.SMTPDataError):
        return MailError(f"SMTP server {where} refused the message{said}", transient=transient)
    if isinstance(exc, smtplib.SMTPConnectError):
        return MailError(f"SMTP server {where} refused the connection{said}", transient=transient)
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return MailError(f"SMTP server {where} closed the connection unexpectedly", transient=True)
    return MailError(f"SMTP server {where} answered with an error{said}", transient=transient)


def _network_failure(exc: OSError, target: _Target) -> MailError:
    """A safe description; transient unless the failure is one a retry cannot fix (the
    certificate, the TLS setup, a host name that does not exist)."""
    where = target.where
    if isinstance(exc, ssl.SSLCertVerificationError):
        return MailError(
            f"could not verify the certificate of SMTP server {where}: {exc.verify_message} "
            "(set DEMOGRAPHICS_SMTP_CA_FILE for a private CA)"
        )
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return MailError(f"SMTP server {where} closed the connection during TLS", transient=True)
    if isinstance(exc, ssl.SSLError):
        return MailError(f"TLS with SMTP server {where} failed ({exc.reason or 'handshake'})")
    if isinstance(exc, ConnectionRefusedError):
        return MailError(f"SMTP server {where} refused the connection", transient=True)
    if isinstance(exc, socket.gaierror):
        if exc.errno == socket.EAI_AGAIN:
            return MailError(
                f"cannot resolve the SMTP server's host name {target.host} right now (DNS "
                "temporarily failing)",
                transient=True,
            )
        return MailError(f"cannot resolve the SMTP server's host name {target.host}")
    if isinstance(exc, TimeoutError):
        return MailError(
            f"SMTP server {where} did not answer within {SMTP_TIMEOUT_SECONDS:g} s", transient=True
        )
    return MailError(
        f"cannot reach SMTP server {where} ({exc.strerror or type(exc).__name__})", transient=True
    )


def _send_smtp(msg: EmailMessage, target: _Target, context: ssl.SSLContext) -> Delivery:
    recipients = _recipients(msg)
    if not recipients:
        raise MailError("no recipients: the message has no To address")
    client: smtplib.SMTP
    if target.scheme == "smtps":
        client = smtplib.SMTP_SSL(
            target.host, target.port, timeout=SMTP_TIMEOUT_SECONDS, context=context
        )
    else:
        client = smtplib.SMTP(target.host, target.port, timeout=SMTP_TIMEOUT_SECONDS)
    try:
        client.ehlo()
        if target.starttls:
            if not client.has_extn("starttls"):
                raise MailError(
                    f"SMTP server {target.where} does not offer STARTTLS; refusing to send "
                    "without TLS"
                )
            client.starttls(context=context)
            client.ehlo()
        if target.user:
            client.login(target.user, target.password or "")
        refused = client.send_message(msg, to_addrs=recipients)
    finally:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()
    detail = f"sent to {len(recipients) - len(refused)} of {len(recipients)} recipients via "
    detail += target.where
    if refused:
        detail += f" ({len(refused)} refused by the server)"
    return Delivery("sent", detail)


def send_message(msg: EmailMessage, settings: Settings, password: str | None = None) -> Delivery:
    """Send over SMTP when `settings.smtp_url` is set, else write the message to the outbox.

    - `smtp://[user[:password]@]host[:port]` (port 587): STARTTLS is required; a server that
      does not offer it is refused.
    - `smtps://[user[:password]@]host[:port]` (port 465): TLS from the first byte.
    - `smtp://localhost:25?starttls=off`: plain SMTP, for a relay on this host only and never
      with credentials.

    The certificate is verified against `settings.smtp_ca_file` when set, else the system's
    CAs. User and password in the URL are percent-decoded; `password` (say from a Prefect
    Secret) wins over the URL's. Raises `MailError`, whose text is safe to log.
    """
    if not settings.smtp_url:
        return _write_outbox(msg, settings.outbox_dir)
    target = _target(settings.smtp_url, password)
    context = _tls_context(settings)
    try:
        return _send_smtp(msg, target, context)
    except smtplib.SMTPException as exc:
        failure = _smtp_failure(exc, target.where)
    except OSError as exc:
        raise _network_failure(exc, target) from exc
    # Raised outside the handler, so the server's reply (it may quote what it was sent) is not
    # even kept as the error's context.
    raise failure


def _html_part(msg: EmailMessage) -> str | None:
    for part in msg.walk():
        if part.get_content_type() == "text/html" and not part.is_attachment():
            content = part.get_content()  # type: ignore[attr-defined]
            return str(content)
    return None


def _write_private(folder: int, name: str, data: bytes) -> None:
    """Create the file 0600 in the open folder (never an existing file, never through a
    symlink)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, 0o600, dir_fd=folder)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _open_outbox(outbox: Path) -> int:
    """The outbox folder, opened (made 0700 if missing) and set to 0700. A link in its place is
    refused, not followed: a chmod through it would change some other folder, and messages
    written through it would land outside the outbox."""
    outbox.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        outbox.mkdir(mode=0o700)
    try:
        folder = os.open(outbox, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        kind = "a link" if outbox.is_symlink() else "not a folder"
        raise MailError(
            f"the outbox {outbox} is {kind}; nothing was written (make it a plain folder)"
        ) from None
    try:
        os.fchmod(folder, 0o700)  # the folder itself, whatever mode it was made with
    except OSError:
        os.close(folder)
        raise
    return folder


def _write_outbox(msg: EmailMessage, outbox: Path) -> Delivery:
    """The message as `.eml`, plus its HTML part as `.html` to open in a browser; the outbox is
    private (0700), since messages show values from district files."""
    try:
        folder = _open_outbox(outbox)
        try:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            district = _SAFE_NAME.sub("-", str(msg.get(DISTRICT_HEADER, ""))).strip("-.")
            stem = f"{stamp}-{district[:60] or 'message'}-{secrets.token_hex(4)}"
            _write_private(folder, f"{stem}.eml", msg.as_bytes())
            paths = [outbox / f"{stem}.eml"]
            html = _html_part(msg)
            if html is not None:
                _write_private(folder, f"{stem}.html", html.encode("utf-8"))
                paths.append(outbox / f"{stem}.html")
        finally:
            os.close(folder)
    except OSError as exc:
        raise MailError(
            f"cannot write to the outbox {outbox} ({exc.strerror or type(exc).__name__})",
            transient=exc.errno in (errno.ENOSPC, errno.EDQUOT),  # a full disk may be freed
        ) from exc
    return Delivery("written", str(paths[0]), tuple(paths))

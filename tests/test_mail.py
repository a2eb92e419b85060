"""The results email and notices, sent through a real SMTP server and parsed back."""

from __future__ import annotations

import csv
import io
import os
import re
import stat
from collections.abc import Callable
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path

import pytest
from conftest import HEADER, row
from smtp_server import PASSWORD, USER, HangUpServer, SmtpServer, parse

from schemas.issues import Code
from schemas.report import Issue, Report, SyncBlock, issues_frame
from tasks.mail import (
    MailError,
    build_notice_message,
    build_results_message,
    issues_csv,
    send_message,
)
from tasks.settings import Settings
from tasks.validate import validate_bytes

DISTRICT = "maple-valley"
NAME = "Maple Valley School District"
SENDER = "Demographics sync <demographics-sync@district.example>"
TO = ["dm1@district.example", "Data Manager <dm2@district.example>"]
XSS = "<img src=x onerror=alert(1)>"
FORMULA = '=HYPERLINK("http://x")'


def synced(lines: list[str], status: str = "succeeded", run_id: str | None = "42") -> Report:
    """A real report from the validator, with a sync block as a sync would set it."""
    data = ("\n".join([HEADER, *lines]) + "\n").encode("utf-8")
    report = validate_bytes(data, "upload.csv", district=DISTRICT).report
    matched = report.summary.valid_rows
    block = SyncBlock(
        run_id=run_id,
        status=status,  # type: ignore[arg-type]
        matched=matched,
        updated=matched // 2 + 1 if matched else 0,
        unchanged=matched - (matched // 2 + 1) if matched else 0,
        unmatched=0,
    )
    return replace(report, sync=block)


def mixed_report(status: str = "succeeded") -> Report:
    """Four rows: two valid, one with markup as its gender, one with a formula."""
    return synced(
        [
            row(ssid="0000000001"),
            row(ssid="0000000002", gender="m"),
            row(ssid="0000000003", gender=XSS),
            row(ssid="0000000004", gender='"=HYPERLINK(""http://x"")"'),
        ],
        status,
    )


def results(report: Report, recipients: list[str] | None = None, **kwargs: object) -> EmailMessage:
    message = {
        "succeeded": "applied: 3 values changed for 2 students",
        "held": "the sync is held for approval: it would change too many values on record",
        "rejected": "the file has a file-level error and was not applied",
        "failed": "the sync failed and nothing was applied (database error); the file can be "
        "synced again",
        "preview": "preview: a sync would change 3 values for 2 students; nothing was written",
    }[report.sync.status if report.sync else "succeeded"]
    return build_results_message(
        DISTRICT,
        NAME,
        report,
        message,
        TO if recipients is None else recipients,
        SENDER,
        **kwargs,  # type: ignore[arg-type]
    )


def parts(msg: EmailMessage) -> tuple[str, str, bytes | None]:
    """The text part, the HTML part and the CSV attachment's bytes."""
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    attachments = list(msg.iter_attachments())
    data = attachments[0].get_payload(decode=True) if attachments else None
    lf = (part.get_content().replace("\r\n", "\n") for part in (text, html))
    return *lf, data  # type: ignore[return-value]


def words(body: str) -> str:
    """The body on one line: sentences may be wrapped."""
    return " ".join(body.split())


def csv_rows(data: bytes) -> list[dict[str, str]]:
    assert data.startswith(b"\xef\xbb\xbf")  # a BOM: Excel then reads UTF-8
    return list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"), newline="")))


def sent(server: SmtpServer, msg: EmailMessage, settings: Settings) -> EmailMessage:
    delivery = send_message(msg, settings)
    assert delivery.kind == "sent"
    assert delivery.paths == ()
    assert len(server.received) == 1
    return server.messages()[0]


# --- the results email ---------------------------------------------------------------------


def test_results_email_through_starttls(smtp_server: SmtpServer, tmp_path: Path) -> None:
    report = mixed_report()
    delivery = send_message(results(report), smtp_server.settings(tmp_path))
    assert delivery.kind == "sent"
    assert delivery.detail == f"sent to 2 of 2 recipients via 127.0.0.1:{smtp_server.port}"
    envelope = smtp_server.received[0]
    assert envelope.tls and envelope.login is None
    assert envelope.mail_from == "demographics-sync@district.example"
    assert envelope.rcpt_tos == ["dm1@district.example", "dm2@district.example"]

    msg = envelope.message()
    assert msg["Subject"] == "maple-valley: sync succeeded — 4 rows, 2 updated, 2 with errors"
    assert [a.addr_spec for a in msg["To"].addresses] == [
        "dm1@district.example",
        "dm2@district.example",
    ]
    assert msg["From"].addresses[0].addr_spec == "demographics-sync@district.example"
    assert msg["Message-ID"].startswith("<") and msg["Message-ID"].endswith("@district.example>")
    assert msg["Date"].datetime is not None
    assert msg.get_content_type() == "multipart/mixed"
    alternative, attachment = msg.get_payload()  # type: ignore[misc]
    assert alternative.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in alternative.get_payload()] == [
        "text/plain",
        "text/html",
    ]
    assert attachment.get_content_type() == "text/csv"
    assert attachment.get_filename() == "issues.csv"
    assert attachment.get_content_charset() == "utf-8"
    assert "MIME-Version" not in alternative

    text, html, data = parts(msg)
    assert data is not None
    for body in (words(text), words(html)):
        assert "Maple Valley School District" in body
        assert "Applied: 3 values changed for 2 students. 2 of 4 rows have errors" in body
        assert "2 of 4 rows have errors and were skipped; 2 rows are valid." in body
        assert "upload a new file with only those rows" in body
        assert "invalid_gender" in body and "normalized_value" in body
    assert "Rows      4: 2 valid, 2 with errors, 1 with warnings" in text
    assert "Students  2 matched, 2 updated, 0 unchanged, 0 unmatched" in text
    assert "Run       42 (succeeded)" in text

    rows = csv_rows(data)
    assert len(rows) == report.issues.height == 3
    assert list(rows[0]) == [
        "row",
        "SSID",
        "email",
        "column",
        "severity",
        "code",
        "message",
        "value",
    ]


def test_subject_never_shows_values() -> None:
    msg = results(mixed_report())
    assert XSS not in msg["Subject"] and "HYPERLINK" not in msg["Subject"]
    assert "upload.csv" not in msg["Subject"]


def test_markup_escaped_in_html_literal_in_text_and_csv() -> None:
    text, html, data = parts(parse(results(mixed_report()).as_bytes()))
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<img" not in html
    assert XSS in text and "&lt;" not in text
    assert FORMULA in text
    assert data is not None
    values = [r["value"] for r in csv_rows(data)]
    assert XSS in values
    assert "'" + FORMULA in values  # neutralised: Excel shows it, never runs it


def test_control_characters_shown_escaped_in_text() -> None:
    report = synced([row(ssid="0000000001", gender="M\x1b[31mF"), row(ssid="0000000002")])
    text, html, _ = parts(parse(results(report).as_bytes()))
    assert "M\\x1b[31mF" in text and "\x1b" not in text
    assert "\x1b" not in html


def test_css_is_inlined() -> None:
    _, html, _ = parts(parse(results(mixed_report()).as_bytes()))
    assert "<style" not in html and "<link" not in html
    assert 'style="' in html
    assert "border-collapse: collapse" in html


def test_long_lists_are_cut_with_the_rest_in_the_attachment() -> None:
    lines = [row(ssid=f"{n:010d}", gender="Q") for n in range(1, 251)]
    report = synced(lines)
    assert report.issues.height == 250
    text, html, data = parts(parse(results(report).as_bytes()))
    for body in (text, html):
        assert "and 50 more in the attachment" in body
    assert text.count("invalid_gender") == 200 + 2  # the table, the count by code, the advice
    assert len(html.encode()) < 100_000  # Gmail clips an HTML body past about 102 KB
    assert data is not None
    assert len(csv_rows(data)) == 250
    text, _, _ = parts(parse(results(report, max_issues=300).as_bytes()))
    assert "more in the attachment" not in text


@pytest.mark.parametrize(
    ("status", "clean", "expected"),
    [
        ("succeeded", False, ["upload a new file with only those rows"]),
        ("succeeded", True, ["Nothing to do"]),
        ("rejected", False, ["Fix the file-level error", "upload the whole file again"]),
        (
            "held",
            False,
            [
                "approve-held-sync with run id 42",
                "demographics sync FILE --district maple-valley --approve --as YOUR_EMAIL",
                "discard-held-sync with run id 42",
            ],
        ),
        ("failed", False, ["Nothing was applied", "tried again on the next run"]),
        ("preview", False, ["Nothing was written", "The file is kept"]),
    ],
)
def test_next_steps_by_status(status: str, clean: bool, expected: list[str]) -> None:
    if status == "rejected":
        report = replace(
            validate_bytes(b"gender,race\nF,White\n", "upload.csv").report,
            sync=SyncBlock("42", "rejected", 0, 0, 0, 0),
        )
    elif clean:
        report = synced([row(ssid="0000000001"), row(ssid="0000000002")], status)
    else:
        report = mixed_report(status)
    msg = parse(results(report).as_bytes())
    text, html, _ = parts(msg)
    assert status in msg["Subject"]
    for phrase in expected:
        assert phrase in words(text)
        assert phrase in words(html)
    if status == "held":
        assert "would be updated" in msg["Subject"]


def test_held_without_a_run_id_says_so() -> None:
    report = replace(mixed_report(), sync=SyncBlock(None, "held", 2, 2, 0, 0))
    text, _, _ = parts(parse(results(report).as_bytes()))
    assert "none was recorded" in text and "Run       none recorded" in text


def test_issues_csv_neutralises_formulas() -> None:
    base = mixed_report()
    cells = [FORMULA, "+1", "-2+3", "@SUM(A1)", "\tx", "\rx", "x-1", 'a,b"c', None]
    frame = issues_frame(
        Issue(Code.INVALID_GENDER, "gender must be M or F", row=n, column="gender", value=v)
        for n, v in enumerate(cells, start=2)
    )
    frame = frame.vstack(
        issues_frame([Issue(Code.UNKNOWN_COLUMN, "ignored", column="=cmd|' /C calc'!A0")])
    )
    rows = csv_rows(issues_csv(replace(base, issues=frame)))
    assert [r["value"] for r in rows] == [
        "'" + FORMULA,
        "'+1",
        "'-2+3",
        "'@SUM(A1)",
        "'\tx",
        "'\rx",
        "x-1",
        'a,b"c',
        "",
        "",
    ]
    assert rows[-1]["column"] == "'=cmd|' /C calc'!A0"
    assert rows[0]["row"] == "2" and rows[-1]["row"] == ""


def test_issues_csv_neutralises_formulas_behind_spaces_and_in_fullwidth() -> None:
    cells = {
        " =1+2": True,
        '  \u00a0=HYPERLINK("http://x")': True,  # NBSP
        "\u3000+1": True,  # ideographic space
        "\u200b@SUM(A1)": True,  # zero-width space
        "\n-2": True,
        "\uff1d1+1": True,  # fullwidth = + - @
        "\uff0b1": True,
        "  \uff0d1": True,
        "\uff20SUM(A1)": True,
        " x=1": False,
        "\u00a0maple": False,
        "a\uff1d": False,
    }
    frame = issues_frame(
        Issue(Code.INVALID_GENDER, "gender must be M or F", row=n, column="gender", value=v)
        for n, v in enumerate(cells, start=2)
    )
    rows = csv_rows(issues_csv(replace(mixed_report(), issues=frame)))
    assert [r["value"] for r in rows] == [("'" if q else "") + v for v, q in cells.items()]


def test_notice_through_the_server(smtp_server: SmtpServer, tmp_path: Path) -> None:
    lines = [
        "deleted 2 files older than 7 days: a.csv, b.csv",
        f"refused 1 file with an unsafe name: {XSS}.csv",
        "rejected big.csv: 600 MB is over the 512 MB limit",
    ]
    msg = build_notice_message(DISTRICT, NAME, "files in the drop", lines, TO, SENDER)
    got = sent(smtp_server, msg, smtp_server.settings(tmp_path))
    assert got["Subject"] == "maple-valley: files in the drop"
    assert got.get_content_type() == "multipart/alternative"
    assert list(got.iter_attachments()) == []
    text, html, _ = parts(got)
    for line in (lines[0], lines[2]):
        assert line in text and line in html
    assert XSS in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "<img" not in html
    assert "<style" not in html and 'style="' in html


# --- delivery ------------------------------------------------------------------------------


def test_smtps_with_credentials_in_the_url(smtps_server: SmtpServer, tmp_path: Path) -> None:
    settings = smtps_server.settings(tmp_path, smtps_server.url(USER, PASSWORD))
    got = sent(smtps_server, results(mixed_report()), settings)
    assert smtps_server.received[0].tls
    assert smtps_server.received[0].login == USER
    assert got["Subject"].startswith("maple-valley: sync succeeded")


def test_starttls_with_credentials_in_the_url(
    start_smtp_server: Callable[..., SmtpServer], tmp_path: Path
) -> None:
    server = start_smtp_server("starttls", {USER: PASSWORD}, auth_required=True)
    sent(server, results(mixed_report()), server.settings(tmp_path, server.url(USER, PASSWORD)))
    assert server.received[0].login == USER


def test_password_argument_wins_over_the_url(
    start_smtp_server: Callable[..., SmtpServer], tmp_path: Path
) -> None:
    server = start_smtp_server("starttls", {USER: PASSWORD}, auth_required=True)
    settings = server.settings(tmp_path, server.url(USER, "stale-password"))
    delivery = send_message(results(mixed_report()), settings, password=PASSWORD)
    assert delivery.kind == "sent"
    assert server.received[0].login == USER
    settings = server.settings(tmp_path, server.url(USER))
    assert send_message(results(mixed_report()), settings, password=PASSWORD).kind == "sent"


def test_wrong_password_is_a_safe_error(smtp_server: SmtpServer, tmp_path: Path) -> None:
    secret = "Wr0ng-s3cret"
    settings = smtp_server.settings(tmp_path, smtp_server.url(USER, secret))
    with pytest.raises(MailError, match="authentication failed") as caught:
        send_message(results(mixed_report()), settings)
    assert_safe(caught.value, secret)
    assert smtp_server.received == []


def assert_safe(error: BaseException, *secrets: str) -> None:
    """Nothing in the error, nor in what it chains to, repeats a secret or a value."""
    seen: BaseException | None = error
    while seen is not None:
        for secret in (*secrets, XSS, "HYPERLINK"):
            assert secret not in str(seen) and secret not in repr(seen)
        seen = seen.__cause__ or seen.__context__


def test_a_server_that_is_down(smtp_server: SmtpServer, tmp_path: Path) -> None:
    settings = smtp_server.settings(tmp_path, smtp_server.url(USER, PASSWORD))
    smtp_server.stop()
    with pytest.raises(MailError) as caught:
        send_message(results(mixed_report()), settings)
    assert str(caught.value) == f"SMTP server 127.0.0.1:{smtp_server.port} refused the connection"
    assert_safe(caught.value, PASSWORD)


def test_a_server_without_starttls_is_refused(
    plain_smtp_server: SmtpServer, tmp_path: Path
) -> None:
    settings = plain_smtp_server.settings(tmp_path)
    with pytest.raises(MailError, match="does not offer STARTTLS"):
        send_message(results(mixed_report()), settings)
    assert plain_smtp_server.received == []


def test_an_untrusted_certificate_is_refused(smtp_server: SmtpServer, tmp_path: Path) -> None:
    settings = smtp_server.settings(tmp_path, smtp_ca_file=None)
    with pytest.raises(MailError, match="could not verify the certificate"):
        send_message(results(mixed_report()), settings)
    assert smtp_server.received == []


@pytest.mark.parametrize(
    ("at", "expected"),
    [("DATA", "refused the message (554)"), ("RCPT", "refused all 2 recipients (550)")],
)
def test_a_refusing_server(smtp_server: SmtpServer, tmp_path: Path, at: str, expected: str) -> None:
    smtp_server.refuse(f"{'554' if at == 'DATA' else '550'} 5.7.1 no thanks {XSS}", at=at)
    with pytest.raises(MailError, match=expected.replace("(", r"\(").replace(")", r"\)")) as e:
        send_message(results(mixed_report()), smtp_server.settings(tmp_path))
    assert_safe(e.value)


def test_smtp_needs_recipients(smtp_server: SmtpServer, tmp_path: Path) -> None:
    with pytest.raises(MailError, match="no recipients"):
        send_message(results(mixed_report(), recipients=[]), smtp_server.settings(tmp_path))


# --- worth retrying or not -------------------------------------------------------------------


def failure(settings: Settings, **kwargs: object) -> MailError:
    with pytest.raises(MailError) as caught:
        send_message(results(mixed_report(), **kwargs), settings)  # type: ignore[arg-type]
    assert_safe(caught.value, PASSWORD)
    return caught.value


def test_transient_failures(
    start_smtp_server: Callable[..., SmtpServer], hang_up_server: HangUpServer, tmp_path: Path
) -> None:
    down = start_smtp_server("starttls", {USER: PASSWORD})
    settings = down.settings(tmp_path, down.url(USER, PASSWORD))
    down.stop()
    assert failure(settings).transient  # the server is down: connection refused

    hung = failure(down.settings(tmp_path, hang_up_server.url()))
    assert "closed the connection unexpectedly" in str(hung) and hung.transient

    for at in ("DATA", "RCPT"):
        busy = start_smtp_server("starttls")
        busy.refuse("451 4.3.0 try later", at=at)
        error = failure(busy.settings(tmp_path))
        assert "(451)" in str(error) and error.transient, at


def test_permanent_failures(
    start_smtp_server: Callable[..., SmtpServer],
    plain_smtp_server: SmtpServer,
    tmp_path: Path,
) -> None:
    server = start_smtp_server("starttls", {USER: PASSWORD})
    permanent = {
        "authentication failed": server.settings(tmp_path, server.url(USER, "Wr0ng")),
        "does not offer STARTTLS": plain_smtp_server.settings(tmp_path),
        "could not verify the certificate": server.settings(tmp_path, smtp_ca_file=None),
        "cannot read the SMTP CA file": server.settings(
            tmp_path, smtp_ca_file=tmp_path / "missing-ca.pem"
        ),
        "must start with smtp://": server.settings(tmp_path, "http://127.0.0.1:25"),
    }
    for expected, settings in permanent.items():
        error = failure(settings)
        assert expected in str(error) and not error.transient, expected
    error = failure(server.settings(tmp_path), recipients=[])
    assert "no recipients" in str(error) and not error.transient
    for at in ("DATA", "RCPT"):
        server.refuse("554 5.7.1 no thanks", at=at)
        error = failure(server.settings(tmp_path))
        assert "(554)" in str(error) and not error.transient, at


def test_plain_relay_on_this_host_only(plain_smtp_server: SmtpServer, tmp_path: Path) -> None:
    url = plain_smtp_server.url(query="starttls=off")
    sent(plain_smtp_server, results(mixed_report()), plain_smtp_server.settings(tmp_path, url))
    assert not plain_smtp_server.received[0].tls
    refused = {
        plain_smtp_server.url(USER, PASSWORD, query="starttls=off"): "credentials are never",
        "smtp://relay.example:25?starttls=off": "relay on this host",
        plain_smtp_server.url(scheme="smtps", query="starttls=off"): "smtp:// only",
    }
    for bad, expected in refused.items():
        with pytest.raises(MailError, match=expected) as caught:
            send_message(results(mixed_report()), plain_smtp_server.settings(tmp_path, bad))
        assert_safe(caught.value, PASSWORD)
    assert len(plain_smtp_server.received) == 1


@pytest.mark.parametrize(
    "url",
    [
        "smtp://user:pa/ss-w0rd@host:587",  # unencoded: urllib reads `pa` as a port
        "smtp://user:pass-w0rd@host:99999",
        "http://user:pass-w0rd@host",
        "smtp://user:pass-w0rd@host:587/path",
        "smtp://user:pass-w0rd@host:587?tls=maybe",
    ],
)
def test_bad_urls_never_show_the_password(url: str, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, smtp_url=url)
    with pytest.raises(MailError) as caught:
        send_message(results(mixed_report()), settings)
    assert_safe(caught.value, "pa/ss", "pass-w0rd", "ss-w0rd")


# --- the outbox ----------------------------------------------------------------------------


def test_outbox_without_smtp(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", smtp_url=None)
    msg = results(mixed_report(), recipients=[])
    delivery = send_message(msg, settings)
    assert delivery.kind == "written"
    eml, html = delivery.paths
    assert delivery.detail == str(eml)
    assert eml.parent == settings.outbox_dir
    assert eml.suffix == ".eml" and html.suffix == ".html"
    assert f"-{DISTRICT}-" in eml.name and eml.stem == html.stem
    assert stat.S_IMODE(settings.outbox_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(eml.stat().st_mode) == 0o600
    assert stat.S_IMODE(html.stat().st_mode) == 0o600

    back = parse(eml.read_bytes())
    assert back["To"] is None
    assert back["Subject"] == msg["Subject"]
    _, html_part, data = parts(back)
    assert html.read_text(encoding="utf-8") == html_part
    assert "&lt;img src=x onerror=alert(1)&gt;" in html_part
    assert data is not None and len(csv_rows(data)) == 3

    notice = build_notice_message(DISTRICT, NAME, "drop notice", ["refused 1 file"], [], SENDER)
    again = send_message(notice, settings)
    assert again.paths[0] != eml and len(list(settings.outbox_dir.iterdir())) == 4


def test_an_outbox_that_is_a_link_is_refused_not_followed(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", smtp_url=None)
    elsewhere = tmp_path / "shared"
    elsewhere.mkdir(mode=0o755)
    os.chmod(elsewhere, 0o755)
    settings.outbox_dir.parent.mkdir(parents=True)
    settings.outbox_dir.symlink_to(elsewhere)
    with pytest.raises(MailError, match="is a link; nothing was written") as caught:
        send_message(results(mixed_report(), recipients=[]), settings)
    assert not caught.value.transient
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o755  # no chmod through the link
    assert list(elsewhere.iterdir()) == []
    # a plain folder in its place, even a shared one, is used and made private
    settings.outbox_dir.unlink()
    settings.outbox_dir.mkdir(mode=0o755)
    os.chmod(settings.outbox_dir, 0o755)
    assert send_message(results(mixed_report(), recipients=[]), settings).kind == "written"
    assert stat.S_IMODE(settings.outbox_dir.stat().st_mode) == 0o700


def test_issues_csv_names_the_student_behind_each_row_as_the_file_had_them() -> None:
    lines = [
        row(ssid="0012345678", email="ana@students.example.org", gender="Female"),
        row(ssid="", email="ben@students.example.org", flags="maybe,N,N,N,N,N,N"),
        row(ssid="0012345679", email="", gender="F"),
    ]
    report = validate_bytes(f"{HEADER}\n{chr(10).join(lines)}\n".encode(), "f.csv").report

    rows = csv_rows(issues_csv(report))

    assert [(r["row"], r["SSID"], r["email"], r["code"]) for r in rows] == [
        ("2", "0012345678", "ana@students.example.org", "invalid_gender"),
        ("3", "", "ben@students.example.org", "invalid_flag"),
    ]
    assert "students" not in report.to_dict()  # never in the JSON report
    assert "0012345678" not in report.to_json()


def test_the_email_leads_with_the_advice_and_its_table_rows_carry_the_short_form() -> None:
    lines = [row(ssid=str(123456780 + n), gender="Male") for n in range(3)]
    text, html, _ = parts(parse(results(synced(lines)).as_bytes()))
    flat = " ".join(text.split())

    assert flat.index("What to fix") < flat.index("What to do next") < flat.index("ROW")
    assert (
        "- invalid_ssid in SSID (3 issues; rows 2, 3, 4): 3 SSIDs lost leading zeros (Excel "
        "read the column as numbers)"
    ) in flat
    assert "invalid_gender in gender (3 issues; rows 2, 3, 4): The file uses words" in flat
    # The long explanation is said once; each row of the table says it short.
    assert flat.count("=TEXT(A2") == 1 and flat.count("SSID lost its leading zeros") == 3
    assert "What to fix" in html and words(html).count("=TEXT(A2") == 1


def test_a_rejected_email_gives_one_reason_and_counts_that_say_nothing_was_applied() -> None:
    report = synced([row(gender="Male"), row(ssid="0012345679")], status="rejected")
    text, html, _ = parts(parse(results(report).as_bytes()))
    flat = " ".join(text.split())
    assert "The file has a file-level error and was not applied" in flat
    assert "file-level error (listed first below)" not in flat  # said once, not twice
    assert "Students nothing applied" in flat and "matched" not in flat.split("What to")[0]
    shown = " ".join(re.sub(r"<[^>]+>", " ", html).split())  # as a mail client shows it
    assert "Applied nothing" in shown and "Matched" not in shown


def test_a_rerun_of_an_applied_file_says_nothing_changed() -> None:
    report = synced([row(gender="Male"), row(ssid="0012345679")])
    message = build_results_message(
        DISTRICT,
        NAME,
        report,
        "this file (same SHA-256) was already applied by run 41; nothing was changed",
        TO,
        SENDER,
        same_as=41,
    )
    text, _, _ = parts(parse(message.as_bytes()))
    flat = " ".join(text.split())
    assert "Nothing changed: this very file was already applied by run 41" in flat
    assert "Fix the" not in flat and "rows have errors" not in flat.split("What to fix")[0]


def test_a_long_value_may_break_on_a_phone_only_after_a_dot_or_at() -> None:
    report = synced([row(email="hana.tanaka@students")])  # no domain dot: invalid
    _, html, _ = parts(parse(results(report).as_bytes()))
    assert "hana.<wbr>tanaka@<wbr>students</code>" in re.sub(r"<code[^>]*>", "<code>", html)

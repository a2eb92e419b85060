"""Send a built message over SMTP (TLS, optional auth) or write it into the outbox folder.

Nothing here logs a message's contents, and a `MailError` names the server and what went wrong,
never the message or the password; its `transient` says whether trying again later may help.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import secrets
import smtplib
import socket
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Literal
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from tasks.errors import DemographicsError
from tasks.mail.compose import DISTRICT_HEADER, SAFE_NAME
from tasks.settings import Settings

SMTP_TIMEOUT_SECONDS = 30.0


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
            district = SAFE_NAME.sub("-", str(msg.get(DISTRICT_HEADER, ""))).strip("-.")
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

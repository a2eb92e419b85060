"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, a free port, TLS from a private CA.

The CA and the server certificate are made once per session with `cryptography`; the client
trusts the CA through `Settings.smtp_ca_file`, exactly as a district with a private CA would.

Fixtures:
- `smtp_certificates`: the CA file and the server's certificate and key (session).
- `start_smtp_server(mode=..., users=..., auth_required=...)`: start a server; stopped after
  the test. `mode` is "starttls" (STARTTLS offered), "smtps" (TLS from the first byte) or
  "plain" (no TLS at all).
- `smtp_server`, `smtps_server`, `plain_smtp_server`: one of each, with the user
  `USER`/`PASSWORD` accepted (AUTH is offered only over TLS; not required).
- `hang_up_server`: a TCP server that accepts every connection and closes it at once, before
  any greeting (an SMTP server going away mid-session).
- `silent_smtp_server`: a TCP server that accepts every connection and never says a word (a
  hung server: it holds the client in its greeting until the client's timeout).

A server's `received` list holds every envelope it accepted; `messages()` parses them back;
`rcpt_attempts` counts RCPT commands (refused ones included) and `logins` every AUTH attempt
with the connection it came on, so a test can count a client's tries (smtplib tries each
mechanism the server offers, PLAIN then LOGIN, on one connection).
`stop()` takes it down (the port then refuses connections); `refuse(...)` makes it answer
the given reply to RCPT or DATA.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email
import email.policy
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPProtocol
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tasks.settings import Settings

HOST = "127.0.0.1"
USER = "mailer@district.example"
PASSWORD = "p@ss:w/rd%20 #1"  # every character a URL would need encoded

Mode = Literal["starttls", "smtps", "plain"]


@dataclass(frozen=True)
class Certificates:
    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def make_certificates(folder: Path) -> Certificates:
    """A CA, and a server certificate it signed for 127.0.0.1 and localhost."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "demographics test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    files = Certificates(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    files.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


@dataclass
class Received:
    """One accepted envelope, as the server saw it."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    login: str | None
    tls: bool

    def message(self) -> EmailMessage:
        return parse(self.content)


def parse(content: bytes) -> EmailMessage:
    """Bytes of a message parsed back the way a mail client would."""
    msg = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


@dataclass(frozen=True)
class Login:
    """One AUTH attempt: on which connection (1, 2, ... in the order they tried), who, and
    whether the server accepted it."""

    connection: int
    user: str
    accepted: bool


@dataclass
class Handler:
    """Stores what it accepts; `refusals` maps "RCPT"/"DATA" to the reply to give instead."""

    received: list[Received] = field(default_factory=list)
    refusals: dict[str, str] = field(default_factory=dict)
    rcpt_attempts: int = 0  # RCPT commands seen, refused or not
    logins: list[Login] = field(default_factory=list)  # every AUTH attempt
    _auth_connections: int = 0

    def login_tried(self, session: Session, user: str, accepted: bool) -> None:
        number = getattr(session, "test_connection", None)
        if number is None:  # numbered on its first AUTH: ids of ended sessions may be reused
            self._auth_connections += 1
            number = session.test_connection = self._auth_connections  # type: ignore[attr-defined]
        self.logins.append(Login(number, user, accepted))

    async def handle_RCPT(
        self,
        server: SMTPProtocol,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        self.rcpt_attempts += 1
        if "RCPT" in self.refusals:
            return self.refusals["RCPT"]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPProtocol, session: Session, envelope: Envelope) -> str:
        if "DATA" in self.refusals:
            return self.refusals["DATA"]
        login = session.auth_data.login.decode() if session.authenticated else None
        tls = server.transport is not None and (
            server.transport.get_extra_info("ssl_object") is not None
        )
        self.received.append(
            Received(
                mail_from=str(envelope.mail_from),
                rcpt_tos=list(envelope.rcpt_tos),
                content=bytes(envelope.original_content or b""),
                login=login,
                tls=tls,
            )
        )
        return "250 Message accepted"


class _Controller(Controller):
    """aiosmtpd's controller, bound to port 0: the real port is read once listening."""

    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


def _authenticator(users: dict[str, str], handler: Handler) -> Callable[..., AuthResult]:
    def authenticate(
        server: SMTPProtocol, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and users.get(data.login.decode()) == data.password.decode()
        )
        login = data.login.decode() if isinstance(data, LoginPassword) else ""
        handler.login_tried(session, login, ok)
        # handled=False: aiosmtpd then answers 535 itself (True would leave the client waiting).
        return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

    return authenticate


class SmtpServer:
    """A running test server; `url()` and `settings()` point the client at it."""

    def __init__(
        self,
        certificates: Certificates,
        mode: Mode = "starttls",
        users: dict[str, str] | None = None,
        auth_required: bool = False,
    ) -> None:
        self.mode = mode
        self.certificates = certificates
        self.handler = Handler()
        context = certificates.server_context()
        options: dict[str, Any] = {}
        if users:
            options["authenticator"] = _authenticator(users, self.handler)
            options["auth_required"] = auth_required
            # Implicit TLS is TLS too, but aiosmtpd only counts STARTTLS as such.
            options["auth_require_tls"] = mode == "starttls"
        self.controller = _Controller(
            self.handler,
            hostname=HOST,
            port=0,
            ssl_context=context if mode == "smtps" else None,
            tls_context=context if mode == "starttls" else None,
            server_hostname="smtp.test",
            ready_timeout=5.0,
            **options,
        )
        self.controller.start()
        self.port: int = self.controller.port
        self.running = True

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    def messages(self) -> list[EmailMessage]:
        return [r.message() for r in self.received]

    def url(
        self,
        user: str | None = None,
        password: str | None = None,
        scheme: str | None = None,
        query: str = "",
    ) -> str:
        scheme = scheme or ("smtps" if self.mode == "smtps" else "smtp")
        auth = ""
        if user is not None:
            auth = quote(user, safe="")
            if password is not None:
                auth += ":" + quote(password, safe="")
            auth += "@"
        return f"{scheme}://{auth}{HOST}:{self.port}" + (f"?{query}" if query else "")

    def settings(self, home: Path, url: str | None = None, **overrides: Any) -> Settings:
        """Settings that trust the test CA (override `smtp_ca_file=None` for the system's)."""
        values: dict[str, Any] = {
            "home": home,
            "smtp_url": url or self.url(),
            "smtp_ca_file": self.certificates.ca_file,
            "mail_from": "demographics-sync@district.example",
        }
        values.update(overrides)
        return Settings(**values)

    def refuse(self, reply: str = "554 5.7.1 refused by the test server", at: str = "DATA") -> None:
        self.handler.refusals[at] = reply

    def stop(self) -> None:
        if self.running:
            self.controller.stop()
            self.running = False


class _TcpServer:
    """Listens on 127.0.0.1 and hands each accepted connection to `_accepted`."""

    def __init__(self, name: str) -> None:
        self._listener = socket.create_server((HOST, 0))
        self.port: int = self._listener.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed by stop()
            self.connections += 1
            self._accepted(conn)

    def _accepted(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def url(self) -> str:
        return f"smtp://{HOST}:{self.port}"

    def stop(self) -> None:
        with contextlib.suppress(OSError):  # not connected: shutdown only wakes accept()
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=5)


class HangUpServer(_TcpServer):
    """Closes each connection as soon as it is accepted, before any greeting."""

    def __init__(self) -> None:
        super().__init__("smtp-hang-up")

    def _accepted(self, conn: socket.socket) -> None:
        conn.close()


class SilentServer(_TcpServer):
    """Accepts each connection and keeps it open without a word, until stop()."""

    def __init__(self) -> None:
        self._held: list[socket.socket] = []
        super().__init__("smtp-silent")

    def _accepted(self, conn: socket.socket) -> None:
        self._held.append(conn)

    def stop(self) -> None:
        super().stop()
        for conn in self._held:
            conn.close()


@pytest.fixture
def silent_smtp_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.stop()


@pytest.fixture
def hang_up_server() -> Iterator[HangUpServer]:
    server = HangUpServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def smtp_certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("smtp-tls"))


@pytest.fixture
def start_smtp_server(smtp_certificates: Certificates) -> Iterator[Callable[..., SmtpServer]]:
    started: list[SmtpServer] = []

    def start(
        mode: Mode = "starttls", users: dict[str, str] | None = None, auth_required: bool = False
    ) -> SmtpServer:
        server = SmtpServer(smtp_certificates, mode, users, auth_required)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def smtp_server(start_smtp_server: Callable[..., SmtpServer]) -> SmtpServer:
    return start_smtp_server("starttls", {USER: PASSWORD})


@pytest.fixture
def smtps_server(start_smtp_server: Callable[..., SmtpServer]) -> SmtpServer:
    return start_smtp_server("smtps", {USER: PASSWORD})


@pytest.fixture
def plain_smtp_server(start_smtp_server: Callable[..., SmtpServer]) -> SmtpServer:
    return start_smtp_server("plain")

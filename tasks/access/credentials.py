"""A login's name and password, decided without the database: the opaque role name, a
generated password, the password rules, and the SCRAM-SHA-256 verifier PostgreSQL stores.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from tasks.access.common import InvalidPassword

ROLE_PREFIX = "ds_"
SCRAM_ITERATIONS = 4096  # PostgreSQL's own default (scram_iterations)
PASSWORD_LENGTH = (16, 1000)


def role_name(database: str, district_code: str, sourced_id: str) -> str:
    """The login role of a person: `ds_` and 16 hex digits of a SHA-256 over the database,
    the district code and the exact sourcedId.

    Opaque on purpose: every login can list every role (pg_roles), so a name must tell no
    district and no person. Deterministic, so a person's new login gets the same name back;
    the database keeps two databases on one server apart (roles are server-wide).
    """
    digest = hashlib.sha256(f"{database}\0{district_code}\0{sourced_id}".encode()).hexdigest()
    return ROLE_PREFIX + digest[:16]


def generate_password() -> str:
    """32 URL-safe characters (192 bits) from the system's secure source."""
    return secrets.token_urlsafe(24)


def check_password(password: str) -> None:
    """Printable ASCII of a sane length: then SASLprep leaves it as it is, and our verifier
    matches what every client computes."""
    low, high = PASSWORD_LENGTH
    if not low <= len(password) <= high:
        raise InvalidPassword(f"a password has {low} to {high} characters")
    if any(not " " <= ch <= "~" for ch in password):
        raise InvalidPassword("a password is printable ASCII (letters, digits, punctuation)")


def scram_sha256_verifier(
    password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS
) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores (RFC 5802 and 7677), computed here.

    `ALTER ROLE ... PASSWORD '<verifier>'` then never sends the password itself to the server,
    so it can appear in no server log or statistics view.
    """
    salt = secrets.token_bytes(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"

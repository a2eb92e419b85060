"""Who the SFTP server is: the host keys known_hosts pins for it, and the algorithms to offer.

asyncssh is imported where it is used, so a local drop never needs it.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tasks.drop.model import DropMisconfigured, escape_name


def short_reason(exc: BaseException) -> str:
    """A few words on why a connection failed (asyncssh and OS messages carry no file data)."""
    import asyncssh

    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, asyncssh.DisconnectError | asyncssh.SFTPError | asyncssh.ChannelOpenError):
        return escape_name(exc.reason or type(exc).__name__, 160) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        return escape_name(exc.strerror, 160)
    return escape_name(str(exc) or type(exc).__name__, 160)


@dataclass(frozen=True)
class HostKeyPins:
    """What known_hosts pins for the drop's server, and the host key algorithms to offer it."""

    pinned: bool  # any key or CA is listed for the host: a mismatch is a changed key
    algorithms: tuple[str, ...]


def host_key_algorithms(pinned: Sequence[bytes], *, ca: bool = False) -> tuple[str, ...]:
    """Every host key algorithm asyncssh knows, those of the pinned keys first.

    asyncssh offers only the pinned key types by default. A server that has none of them then
    finds no common algorithm and hangs up, and whether the client sees a key exchange failure
    or a lost connection (which is retried) depends on which event it handles first. Offered
    every type, the server always presents a key, and the client checks it against known_hosts:
    a key that is not pinned is refused, every time. Pinned types first keeps a server with
    several keys presenting the pinned one (it takes the first of the client's list it has).
    Offering more types trusts nothing more: only a pinned key is ever accepted.
    """
    from asyncssh.public_key import (
        get_default_certificate_algs,
        get_default_public_key_algs,
        get_public_key_algs,
    )

    first = [*get_default_certificate_algs(), *pinned] if ca else list(pinned)
    ordered = [*first, *get_default_public_key_algs(), *get_public_key_algs()]
    return tuple(dict.fromkeys(alg.decode("ascii") for alg in ordered))


def addresses_of(host: str, port: int) -> list[str]:
    """The host's addresses, which known_hosts may list it by; none when it does not resolve
    now (the connection will say so, and be retried)."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return sorted({str(info[4][0]) for info in found})


def read_host_key_pins(
    known_hosts: Path, host: str, port: int, addresses: Sequence[str]
) -> HostKeyPins:
    """The keys known_hosts lists for the host, matched by name and by each of its addresses
    as asyncssh matches them (`[host]:port`, or the bare host on port 22)."""
    import asyncssh

    if not known_hosts.is_file():
        raise DropMisconfigured(
            f"the known_hosts file {known_hosts} is missing; the SFTP drop's host key must be "
            "pinned there"
        )
    try:
        entries = asyncssh.read_known_hosts(str(known_hosts))
    except (OSError, ValueError) as exc:
        raise DropMisconfigured(
            f"the known_hosts file {known_hosts} cannot be read: {short_reason(exc)}"
        ) from None
    algorithms: list[bytes] = []
    ca = False
    for address in addresses or [""]:
        keys, ca_keys, *_ = entries.match(host, address, None if port == 22 else port)
        ca = ca or bool(ca_keys)
        for key in keys:
            algorithms.extend(key.sig_algorithms)
    return HostKeyPins(bool(algorithms) or ca, host_key_algorithms(algorithms, ca=ca))

"""The drop on an SFTP server (`sftp://user@host:port/base`), reached with asyncssh.

One private key and a pinned host key only: nothing under ~/.ssh, no agent. Each operation is
one connection, retried as a whole on a transient failure. asyncssh is imported where it is
used, so a local drop never needs it.
"""

from __future__ import annotations

import asyncio
import posixpath
import stat
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import SplitResult, unquote

from tasks.drop.hostkeys import HostKeyPins, addresses_of, read_host_key_pins, short_reason
from tasks.drop.model import (
    CHUNK_BYTES,
    FOLDERS,
    DropError,
    DropFile,
    DropListing,
    DropMisconfigured,
    DropRefused,
    DropUnavailable,
    Entry,
    FetchedFile,
    HostKeyRefused,
    check_district,
    check_folder,
    check_name,
    check_regular,
    delete_file,
    gone,
    has_suffix,
    listed,
    logger,
    name_problem,
    not_a_folder,
    where,
)
from tasks.drop.staging import Staged, fetch_staged
from tasks.settings import Settings

if TYPE_CHECKING:
    import asyncssh

T = TypeVar("T")

CONNECT_TIMEOUT_SECONDS = 15.0
LOGIN_TIMEOUT_SECONDS = 30.0
KEEPALIVE_SECONDS = 15.0
KEEPALIVE_COUNT_MAX = 4


def _run_coroutine(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine on a private event loop, in a fresh thread if this one already runs one."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sftp-drop") as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


def _entry(name: str, attrs: asyncssh.SFTPAttrs) -> Entry:
    """What the server said of an entry, as both backends' checks take it."""
    mtime = None if attrs.mtime is None else float(attrs.mtime)
    return Entry(name, attrs.permissions, attrs.size, mtime)


class SftpDrop:
    """A drop on an SFTP server: one connection per operation, retried as a whole."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str,
        base: str,
        ssh_key: Path,
        known_hosts: Path,
        settings: Settings,
        client_key: asyncssh.SSHKey | None = None,
    ):
        self.host = host
        self.port = port
        self.username = username
        self.base = base
        self.ssh_key = ssh_key
        self.known_hosts = known_hosts
        self.settings = settings
        shown_host = f"[{host}]" if ":" in host else host
        self.address = f"{shown_host}:{port}"
        self.description = f"sftp://{username}@{self.address}{'' if base == '.' else base}"
        self._addresses: list[str] = []
        self._key = client_key  # the key `ssh_key` holds, read once (see _client_key)

    def _path(
        self, district: str, name: str | None = None, sub: str = "", *, any_kind: bool = False
    ) -> str:
        folder = posixpath.join(self.base, check_district(district), check_folder(sub))
        folder = folder.rstrip("/") if sub == "" else folder
        if name is None:
            return folder
        return posixpath.join(folder, check_name(name, sub, any_kind=any_kind))

    async def _session(
        self, op: Callable[[asyncssh.SFTPClient], Awaitable[T]], pins: HostKeyPins
    ) -> T:
        import asyncssh

        # Every option whose default reads ~/.ssh (or the environment) is set: only the pinned
        # known_hosts and the configured key decide who the server is and who we are.
        async with (
            asyncssh.connect(
                self.host,
                self.port,
                username=self.username,
                config=None,  # ~/.ssh/config must not change where or how we connect
                known_hosts=str(self.known_hosts),  # never None: None disables the check
                # every key type, the pinned ones first: see host_key_algorithms
                server_host_key_algs=list(pins.algorithms),
                # X.509 host certificates would be checked against ~/.ssh/ca-bundle.crt and
                # ~/.ssh/crt instead of known_hosts: never trust those
                x509_trusted_certs=None,
                x509_trusted_cert_paths=None,
                # the key as configured, nothing else: no ~/.ssh/id_* (agent identities), no
                # `<key>-cert.pub` or `<key>.pub` picked up beside it, no agent, no PKCS#11
                client_keys=[self._client_key()],
                client_certs=[],
                ignore_encrypted=False,
                agent_path=None,
                agent_identities=None,
                agent_forwarding=False,
                pkcs11_provider=None,
                client_host_keysign=False,
                client_host_keys=None,
                host_based_auth=False,
                password_auth=False,
                kbdint_auth=False,
                gss_host=None,
                gss_kex=False,
                gss_auth=False,
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                login_timeout=LOGIN_TIMEOUT_SECONDS,
                keepalive_interval=KEEPALIVE_SECONDS,
                keepalive_count_max=KEEPALIVE_COUNT_MAX,
            ) as conn,
            conn.start_sftp_client() as sftp,
        ):
            return await op(sftp)

    def _client_key(self) -> asyncssh.SSHKey:
        """The configured key, loaded here: asyncssh given a path also loads files beside it.

        Read once per drop: open_drop hands over the key it checked; a drop made otherwise reads
        it at its first connection.
        """
        import asyncssh

        if self._key is None:
            try:
                self._key = asyncssh.read_private_key(self.ssh_key)
            except (OSError, asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
                raise DropMisconfigured(
                    f"the SSH key {self.ssh_key} cannot be used: {short_reason(exc)}"
                ) from None
        return self._key

    def _call(self, action: str, op: Callable[[asyncssh.SFTPClient], Awaitable[T]]) -> T:
        """Run `op` on a fresh connection; retry transient failures with a doubling wait."""
        if not self._addresses:  # resolved once it resolves; known_hosts is read every call
            self._addresses = addresses_of(self.host, self.port)
        pins = read_host_key_pins(self.known_hosts, self.host, self.port, self._addresses)
        attempts = self.settings.sftp_attempts
        reason = ""
        last: BaseException | None = None
        for attempt in range(1, attempts + 1):
            try:
                return _run_coroutine(lambda: self._session(op, pins))
            except DropError:
                raise
            except Exception as exc:
                final = self._final_failure(exc, action, pins)
                if final is not None:
                    raise final from exc
                last, reason = exc, short_reason(exc)
            if attempt < attempts:
                wait = self.settings.sftp_backoff_seconds * 2 ** (attempt - 1)
                logger.warning(
                    "%s: %s: try %d of %d failed (%s); trying again in %.3g s",
                    self.description,
                    action,
                    attempt,
                    attempts,
                    reason,
                    wait,
                )
                time.sleep(wait)
        tries = "try" if attempts == 1 else "tries"
        raise DropUnavailable(
            f"the SFTP drop at {self.address} could not be reached after {attempts} {tries}: "
            f"{reason}"
        ) from last

    def _final_failure(self, exc: Exception, action: str, pins: HostKeyPins) -> DropError | None:
        """What a failed try means: an error that no retry can mend, or None when the next try
        may work (refused, reset, timed out, lost). Anything else is re-raised as it is."""
        import asyncssh

        if isinstance(exc, asyncssh.HostKeyNotVerifiable):
            return self._host_key_refused(pins)
        if isinstance(exc, asyncssh.KeyExchangeFailed):
            # Every host key type is offered, so this is a cipher, MAC or key exchange mismatch
            return DropMisconfigured(
                f"the SFTP drop at {self.address} shares no algorithm with this client: "
                f"{short_reason(exc)}"
            )
        if isinstance(exc, asyncssh.PermissionDenied):
            return DropMisconfigured(
                f"the SFTP drop at {self.address} refused the key {self.ssh_key} for user "
                f"{self.username} (check ssh_key and the server's authorized keys)"
            )
        if isinstance(exc, asyncssh.KeyImportError | asyncssh.KeyEncryptionError):
            return DropMisconfigured(
                f"the SSH key {self.ssh_key} cannot be used: {short_reason(exc)}"
            )
        if isinstance(exc, asyncssh.IllegalUserName | asyncssh.ProtocolNotSupported):
            return DropMisconfigured(
                f"the SFTP drop at {self.address} refused the session: {short_reason(exc)}"
            )
        if isinstance(
            exc,
            OSError
            | asyncssh.DisconnectError
            | asyncssh.ChannelOpenError
            | asyncssh.SFTPConnectionLost
            | asyncssh.SFTPNoConnection
            # The generic failure: what a server answers when its side of a transfer broke, or
            # just before it drops the connection (then the failure, not the lost connection,
            # may be what the client sees first); a fresh connection may work.
            | asyncssh.SFTPFailure,
        ):
            return None
        if isinstance(exc, asyncssh.SFTPError):
            return DropError(
                f"the SFTP drop at {self.address} could not {action}: {short_reason(exc)}"
            )
        raise exc

    def _host_key_refused(self, pins: HostKeyPins) -> HostKeyRefused:
        if not pins.pinned:
            return HostKeyRefused(
                f"the SFTP drop at {self.address} is unknown: {self.known_hosts} pins no host "
                "key for it, so it is not trusted; nothing was sent or fetched. Add the "
                "server's key (ssh-keyscan, checked with the server's administrator)"
            )
        return HostKeyRefused(
            f"the SFTP drop at {self.address} presented a host key that {self.known_hosts} does "
            "not pin for it (the server's key changed, or another server answers); nothing was "
            "sent or fetched. Confirm the new key with the server's administrator before "
            "updating known_hosts"
        )

    async def _lstat(self, sftp: asyncssh.SFTPClient, path: str) -> asyncssh.SFTPAttrs | None:
        import asyncssh

        try:
            return await sftp.lstat(path)
        except (asyncssh.SFTPNoSuchFile, asyncssh.SFTPNoSuchPath):
            return None

    async def _folder_exists(self, sftp: asyncssh.SFTPClient, district: str, sub: str) -> bool:
        """Whether the district folder (and its subfolder) is there; a link or a file in its
        place is refused."""
        attrs = await self._lstat(sftp, self._path(district))
        if attrs is None:
            if self.base != "." and await self._lstat(sftp, self.base) is None:
                raise DropMisconfigured(
                    f"the SFTP drop at {self.address} has no folder {self.base} (check drop_url)"
                )
            return False
        self._check_folder(attrs, district)
        if not sub:
            return True
        attrs = await self._lstat(sftp, self._path(district, sub=sub))
        if attrs is None:
            return False
        if attrs.permissions is None or not stat.S_ISDIR(attrs.permissions):
            not_a_folder(self.description, district, sub)  # the district's upload: as empty
            return False
        return True

    def _check_folder(self, attrs: asyncssh.SFTPAttrs, shown: str) -> None:
        if attrs.permissions is None or not stat.S_ISDIR(attrs.permissions):
            raise DropMisconfigured(
                f"the drop's entry {self.description}/{shown} is a link or not a folder; it is "
                "not read"
            )

    def list(self, district: str, now: datetime | None = None, *, folder: str = "") -> DropListing:
        """Sort the folder's files by what may be done with them now (see DropListing)."""
        sub = folder
        folder = self._path(district, sub=sub)
        suffixes = FOLDERS[sub]

        async def op(sftp: asyncssh.SFTPClient) -> list[Entry]:
            if not await self._folder_exists(sftp, district, sub):
                return []
            entries = []
            # bytes in, bytes out: names that are not UTF-8 are listed (and refused), not fatal
            async for item in sftp.scandir(folder.encode("utf-8")):
                name = bytes(item.filename).decode("utf-8", "surrogateescape")
                if name in (".", ".."):
                    continue
                attrs = item.attrs
                ours = has_suffix(name, suffixes) and not name_problem(name, suffixes)
                if attrs.permissions is None and ours:
                    attrs = await self._lstat(sftp, posixpath.join(folder, name)) or attrs
                entries.append(_entry(name, attrs))
            return entries

        entries = self._call(f"list district {where(district, sub)}", op)
        return listed(self.description, district, entries, self.settings, now, sub)

    def fetch(self, district: str, name: str, *, folder: str = "") -> FetchedFile:
        """Download the file through a private staging folder; return its bytes and sha256."""
        import asyncssh

        path = self._path(district, name, folder)
        limit = self.settings.max_file_bytes

        async def op(sftp: asyncssh.SFTPClient, staged: Path) -> datetime:
            # lstat follows links in the folders of a path: a subfolder is checked first
            if folder and not await self._folder_exists(sftp, district, folder):
                raise gone(name)
            attrs = await self._lstat(sftp, path)
            if attrs is None:
                raise gone(name)
            check_regular(name, _entry(name, attrs), limit)
            try:
                async with sftp.open(path, "rb") as source:
                    # SFTP opens follow links: check that what was opened is what lstat saw
                    opened = await source.stat()
                    check_regular(name, _entry(name, opened), limit)
                    if (opened.size, opened.mtime) != (attrs.size, attrs.mtime):
                        raise DropRefused(f"{name} changed while being fetched; try again later")
                    with Staged(staged, name, limit) as out:
                        while chunk := await source.read(CHUNK_BYTES):
                            out.write(chunk)
            except (asyncssh.SFTPNoSuchFile, asyncssh.SFTPNoSuchPath):
                raise gone(name) from None
            except asyncssh.SFTPPermissionDenied:
                raise DropRefused(f"{name} cannot be read: permission denied") from None
            assert attrs.mtime is not None
            return datetime.fromtimestamp(attrs.mtime, UTC)

        def download(staged: Path) -> datetime:
            return self._call(f"fetch {name}", lambda sftp: op(sftp, staged))

        return fetch_staged(self.settings, name, download)

    def delete(
        self,
        district: str,
        name: str,
        expect: DropFile | FetchedFile | None = None,
        *,
        folder: str = "",
    ) -> bool:
        """Remove the file; False when it was already gone. Links and folders are refused.

        With `expect` (the file as listed or fetched), only that file is removed: FileChanged
        when its size or time differ (a newer upload), FileGone when it is no longer there.
        """
        import asyncssh

        path = self._path(district, name, folder, any_kind=True)
        removing = False  # a remove was sent: if the connection broke, it may have been done

        async def op(sftp: asyncssh.SFTPClient, check: Callable[[Entry], None]) -> bool:
            nonlocal removing
            if folder and not await self._folder_exists(sftp, district, folder):
                return False  # a subfolder that is a link is never followed
            attrs = await self._lstat(sftp, path)
            if attrs is None:
                return removing  # gone after our own remove: the retry finds it done
            check(_entry(name, attrs))
            try:
                removing = True
                await sftp.remove(path)
            except (asyncssh.SFTPNoSuchFile, asyncssh.SFTPNoSuchPath):
                removing = False
                return False
            except asyncssh.SFTPPermissionDenied:
                raise DropRefused(f"{name} cannot be deleted: permission denied") from None
            return True

        def remove(check: Callable[[Entry], None]) -> bool:
            return self._call(f"delete {name}", lambda sftp: op(sftp, check))

        return delete_file(self.description, district, name, expect, remove, folder)

    def put(self, district: str, name: str, data: bytes, *, folder: str = "") -> None:
        """Upload a file as a district would (for the demo and tests); it appears complete."""
        import asyncssh

        path = self._path(district, name, folder)
        folder_path = self._path(district, sub=folder)
        partial = posixpath.join(folder_path, f".{name}.part")

        async def op(sftp: asyncssh.SFTPClient) -> None:
            await sftp.makedirs(folder_path, exist_ok=True)
            async with sftp.open(partial, "wb") as out:
                await out.write(data)
            try:
                await sftp.posix_rename(partial, path)
            except asyncssh.SFTPOpUnsupported:
                if await self._lstat(sftp, path) is not None:
                    await sftp.remove(path)
                await sftp.rename(partial, path)

        self._call(f"put {name}", op)


def open_sftp(parts: SplitResult, port: int | None, settings: Settings) -> SftpDrop:
    """The SftpDrop an sftp:// URL names, its key read and checked before any connection."""
    host = parts.hostname
    if not host:
        raise DropMisconfigured("an sftp:// drop_url needs a host: sftp://user@host:port/base")
    if parts.password is not None:
        raise DropMisconfigured(
            "an sftp:// drop_url must not contain a password: the drop uses key authentication "
            "only (set ssh_key)"
        )
    if not parts.username:
        raise DropMisconfigured("an sftp:// drop_url needs a user: sftp://user@host:port/base")
    known_hosts, ssh_key = _key_files(settings)
    path = unquote(parts.path)
    base = posixpath.normpath(path) if path else "."  # no path: the login folder
    return SftpDrop(
        host=host,
        port=port or 22,
        username=unquote(parts.username),
        base=base,
        ssh_key=ssh_key,
        known_hosts=known_hosts,
        settings=settings,
        client_key=_read_client_key(ssh_key),
    )


def _key_files(settings: Settings) -> tuple[Path, Path]:
    """The known_hosts and private key files, both set and present."""
    if settings.known_hosts is None:
        raise DropMisconfigured(
            "an sftp:// drop needs known_hosts (DEMOGRAPHICS_KNOWN_HOSTS): a file pinning the "
            "server's host key, e.g. from `ssh-keyscan -p PORT HOST` checked with its admin"
        )
    if settings.ssh_key is None:
        raise DropMisconfigured(
            "an sftp:// drop needs ssh_key (DEMOGRAPHICS_SSH_KEY): the private key file to log "
            "in with"
        )
    known_hosts = settings.known_hosts.expanduser()
    ssh_key = settings.ssh_key.expanduser()
    if not known_hosts.is_file():
        raise DropMisconfigured(f"the known_hosts file {known_hosts} does not exist")
    if not ssh_key.is_file():
        raise DropMisconfigured(f"the SSH key file {ssh_key} does not exist")
    return known_hosts, ssh_key


def _read_client_key(ssh_key: Path) -> asyncssh.SSHKey:
    import asyncssh

    try:
        return asyncssh.read_private_key(ssh_key)
    except (OSError, asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
        raise DropMisconfigured(
            f"the SSH key {ssh_key} cannot be used: {short_reason(exc)} (an unencrypted "
            "private key is needed for the nightly job)"
        ) from None

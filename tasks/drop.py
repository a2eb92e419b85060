"""The district file drop: list, fetch and delete the CSV files districts upload.

Each district has its own folder `<base>/<district>/`; every `*.csv` in it (suffix in any case)
is a file to process, oldest first. The drop is a local folder (`file:///...`, the default) or
an SFTP server (`sftp://user@host:port/base`), reached with one private key and a pinned host
key only.

The drop is written by people outside the project, so nothing in it is trusted: names are
checked before they become paths, links are never followed, sizes are capped before and while
reading, and a download lives only in a private (0700) staging folder that is always removed
(`clean_staging` removes the ones a killed worker left).
Messages and log lines carry file names (escaped) and counts, never file contents.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import math
import os
import posixpath
import re
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import SplitResult, unquote, urlsplit

from schemas.districts import DISTRICT_CODE_RULE, is_district_code
from tasks.errors import DemographicsError
from tasks.settings import Settings

if TYPE_CHECKING:
    import asyncssh

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_NAME_LENGTH = 255
CONNECT_TIMEOUT_SECONDS = 15.0
LOGIN_TIMEOUT_SECONDS = 30.0
KEEPALIVE_SECONDS = 15.0
KEEPALIVE_COUNT_MAX = 4
CHUNK_BYTES = 256 * 1024
STAGING_PREFIX = "demographics-"
# what tempfile.mkdtemp(prefix=STAGING_PREFIX) makes: the prefix and 8 of its name characters
_STAGING_NAME = re.compile(re.escape(STAGING_PREFIX) + r"[a-z0-9_]{8}")
_STAGED_FILES = {"download.csv"}

REASON_UNSAFE_NAME = "unsafe name"
REASON_LINK = "a link"
REASON_DIRECTORY = "a directory"
REASON_NOT_REGULAR = "not a regular file"


# --- what the drop holds ------------------------------------------------------------------


@dataclass(frozen=True)
class DropFile:
    name: str
    size: int
    modified: datetime  # aware, UTC


@dataclass(frozen=True)
class RefusedEntry:
    name: str  # printable-escaped (control characters shown as \xNN), safe to log
    reason: str  # starts with one of the REASON_* constants


@dataclass
class DropListing:
    """A district folder sorted into what may be taken now and what must be left or cleared."""

    ready: list[DropFile] = field(default_factory=list)  # oldest first
    settling: list[DropFile] = field(default_factory=list)  # may still be uploading
    too_large: list[DropFile] = field(default_factory=list)  # settled, over max_file_bytes
    expired: list[DropFile] = field(default_factory=list)  # past retention_days, any size
    refused: list[RefusedEntry] = field(default_factory=list)  # never touched


@dataclass(frozen=True)
class FetchedFile:
    name: str
    data: bytes = field(repr=False)  # student data: never in a repr
    size: int
    modified: datetime
    sha256: str


class DropError(DemographicsError):
    """Base of the drop's errors; the message is safe to print (no file contents)."""


class DropUnavailable(DropError):
    """Transient: the drop could not be reached or the connection broke; worth retrying later."""

    transient = True


class HostKeyRefused(DropError):
    """The SFTP server's host key is unknown or changed; never retried."""


class DropRefused(DropError):
    """This file (or district) cannot be taken: unsafe name, not a regular file, too large, gone."""


class DropMisconfigured(DropError):
    """The settings cannot work: a bad URL, an sftp:// drop without known_hosts or key, ..."""


class FileGone(DropRefused):
    """The file left the drop after it was listed (the district removed or renamed it); there is
    nothing to take or delete, and nothing to retry."""


class FileChanged(DropRefused):
    """The file is not the one that was read (another upload replaced it): it is left in the drop
    so that the next run processes the new version instead of deleting it unread."""


class Drop(Protocol):
    """Either backend; every method checks the district code and the file name first."""

    description: str

    def list(self, district: str, now: datetime | None = None) -> DropListing: ...

    def fetch(self, district: str, name: str) -> FetchedFile: ...

    def delete(
        self, district: str, name: str, expect: DropFile | FetchedFile | None = None
    ) -> bool: ...

    def put(self, district: str, name: str, data: bytes) -> None: ...


# --- names --------------------------------------------------------------------------------


def escape_name(name: str, limit: int = 120) -> str:
    """The name with every unprintable character shown as an escape, so it is safe to log.

    Bytes that were not UTF-8 (decoded as surrogates) show as `\\xNN`, like control characters.
    Over `limit` characters the middle is elided.
    """
    out = []
    for ch in name:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    shown = "".join(out)
    if len(shown) > limit:
        half = (limit - 3) // 2
        shown = f"{shown[:half]}...{shown[-half:]}"
    return shown


def _is_csv(name: str) -> bool:
    return name[-4:].lower() == ".csv" and name[-4:].isascii()


def _name_problem(name: str) -> str | None:
    if not name:
        return "the name is empty"
    if len(name) > MAX_NAME_LENGTH or len(name.encode("utf-8", "surrogateescape")) > 255:
        return f"the name is longer than {MAX_NAME_LENGTH} characters"
    if "\x00" in name:
        return "the name contains a NUL character"
    if not name.isprintable():
        return "the name contains a control or other unprintable character"
    if "/" in name or "\\" in name:
        return "the name contains a path separator ('/' or '\\')"
    if ".." in name:
        return "the name contains '..'"
    if name.startswith("."):
        return "the name starts with '.'"
    if name.startswith("-"):
        return "the name starts with '-'"
    if not _is_csv(name):
        return "the name does not end in .csv"
    return None


def check_name(name: str) -> str:
    """Return the name if it is safe to use as one path component of a drop file.

    Raises DropRefused (naming the problem, the name escaped) otherwise.
    """
    problem = _name_problem(name)
    if problem:
        raise DropRefused(f"refusing the file '{escape_name(name)}': {problem}")
    return name


def check_district(code: str) -> str:
    """Return the district code if it is safe as a folder name (the store's own rule). The
    refusal does not repeat what was given: it may be anything, a student's email too."""
    if not is_district_code(code):
        raise DropRefused(f"refusing a district code that is not valid: {DISTRICT_CODE_RULE}")
    return code


# --- sorting a folder ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """One directory entry as lstat saw it, before sorting."""

    name: str
    mode: int | None
    size: int | None
    mtime: float | None


def _sort_entries(entries: list[_Entry], settings: Settings, now: datetime | None) -> DropListing:
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        raise ValueError("`now` must be a timezone-aware datetime")
    expire_before = now - timedelta(days=settings.retention_days)
    settle_after = now - timedelta(seconds=settings.settle_seconds)
    listing = DropListing()
    for entry in entries:
        if not _is_csv(entry.name):
            continue  # README.txt, partial uploads (.part), ...: not ours
        problem = _name_problem(entry.name)
        if problem:
            reason = f"{REASON_UNSAFE_NAME}: {problem.removeprefix('the name ')}"
        elif entry.mode is None or entry.size is None or entry.mtime is None:
            reason = f"{REASON_NOT_REGULAR}: the server gave no type, size or time for it"
        elif stat.S_ISLNK(entry.mode):
            reason = REASON_LINK
        elif stat.S_ISDIR(entry.mode):
            reason = REASON_DIRECTORY
        elif not stat.S_ISREG(entry.mode):
            reason = REASON_NOT_REGULAR
        else:
            reason = None
        if reason is not None:
            listing.refused.append(RefusedEntry(escape_name(entry.name), reason))
            continue
        assert entry.size is not None and entry.mtime is not None
        file = DropFile(entry.name, entry.size, datetime.fromtimestamp(entry.mtime, UTC))
        if file.modified < expire_before:
            listing.expired.append(file)
        elif file.modified > settle_after:
            listing.settling.append(file)
        elif file.size > settings.max_file_bytes:
            listing.too_large.append(file)
        else:
            listing.ready.append(file)
    for files in (listing.ready, listing.settling, listing.too_large, listing.expired):
        files.sort(key=lambda f: (f.modified, f.name))
    listing.refused.sort(key=lambda r: r.name)
    return listing


def _log_listing(description: str, district: str, listing: DropListing) -> None:
    logger.info(
        "%s: district %s: %d ready, %d settling, %d too large, %d expired, %d refused",
        description,
        district,
        len(listing.ready),
        len(listing.settling),
        len(listing.too_large),
        len(listing.expired),
        len(listing.refused),
    )
    for entry in listing.refused:
        logger.warning(
            "%s: district %s: left %s alone (%s)", description, district, entry.name, entry.reason
        )


# --- fetching through a private staging folder --------------------------------------------


def megabytes(size: float) -> str:
    """A size for a person: precise enough to tell two small limits apart."""
    mb = size / (1024 * 1024)
    if mb >= 100:
        return f"{mb:,.0f} MB"
    if mb >= 1:
        return f"{mb:.1f} MB"
    return f"{mb:.3f} MB"


def _too_large(name: str, size: int, limit: int, *, at_least: bool = False) -> DropRefused:
    what = f"more than {megabytes(limit)}" if at_least else megabytes(size)
    return DropRefused(
        f"{name} is {what}, over the limit of {megabytes(limit)} (max_file_mb); it was not read"
    )


def _gone(name: str) -> FileGone:
    return FileGone(f"{name} is no longer in the drop")


def _whole_seconds(when: datetime) -> int:
    """A time at the precision SFTP reports (whole seconds), so both backends compare alike."""
    return math.floor(when.timestamp())


def _check_unchanged(
    name: str, expect: DropFile | FetchedFile, size: int | None, mtime: float | None
) -> None:
    """Raise FileChanged unless the entry still has the size and time of the file that was read:
    deleting a newer upload would lose it unread."""
    if (
        size is None
        or mtime is None
        or size != expect.size
        or _whole_seconds(datetime.fromtimestamp(mtime, UTC)) != _whole_seconds(expect.modified)
    ):
        raise FileChanged(
            f"{name} changed since it was read (size or time differs); left for the next run"
        )


def _open_staged(path: Path) -> int:
    return os.open(
        path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
    )


class _Staged:
    """The private (0600) file a download is written to, counting and capping what arrives.

    A local write failure (disk full) is a DropError of its own, not a broken connection.
    """

    def __init__(self, path: Path, name: str, limit: int):
        self.name = name
        self.limit = limit
        self.total = 0
        try:
            self._out = os.fdopen(_open_staged(path), "wb")
        except OSError as exc:
            raise self._failed(exc) from None

    def _failed(self, exc: OSError) -> DropError:
        reason = exc.strerror or type(exc).__name__
        return DropError(f"cannot write {self.name} to the staging folder: {reason}")

    def write(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if self.total > self.limit:
            raise _too_large(self.name, self.total, self.limit, at_least=True)
        try:
            self._out.write(chunk)
        except OSError as exc:
            raise self._failed(exc) from None

    def close(self) -> None:
        try:
            self._out.close()
        except OSError as exc:
            raise self._failed(exc) from None


def _fetch_staged(
    settings: Settings, name: str, download: Callable[[Path], datetime]
) -> FetchedFile:
    """Run `download` into a fresh private folder, read the result, and always remove the folder.

    `download` writes the file to the path it is given (at most max_file_bytes, else it raises)
    and returns the file's modification time.
    """
    try:
        folder = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=settings.staging_dir)
    except OSError as exc:
        raise DropMisconfigured(
            f"cannot make a staging folder in {settings.staging_dir or tempfile.gettempdir()}: "
            f"{exc.strerror or type(exc).__name__}"
        ) from None
    try:
        os.chmod(folder, 0o700)
        staged = Path(folder) / "download.csv"  # the one name clean_staging accepts
        modified = download(staged)
        data = staged.read_bytes()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if os.path.lexists(folder):
            logger.error("could not remove the staging folder %s; remove it by hand", folder)
    if len(data) > settings.max_file_bytes:  # the downloads stop early; this is a last guard
        raise _too_large(name, len(data), settings.max_file_bytes)
    logger.info("fetched %s (%d bytes)", name, len(data))
    return FetchedFile(
        name=name,
        data=data,
        size=len(data),
        modified=modified,
        sha256=hashlib.sha256(data).hexdigest(),
    )


def clean_staging(settings: Settings, older_than_seconds: float = 3600.0) -> int:
    """Remove staging folders a killed worker left behind (its `finally` never ran), since they
    may hold a district file; return how many were removed.

    Only folders this module makes are touched: named as mkdtemp names them, owned by this
    user, holding nothing but a download, and untouched for `older_than_seconds` (a download in
    progress keeps writing, so it stays). Links are never followed.
    """
    where = settings.staging_dir or Path(tempfile.gettempdir())
    try:
        parent = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise DropMisconfigured(
            f"cannot open the staging folder {where}: {exc.strerror or type(exc).__name__}"
        ) from None
    cutoff = time.time() - older_than_seconds
    removed = 0
    try:
        with os.scandir(parent) as it:
            names = [e.name for e in it if _STAGING_NAME.fullmatch(e.name)]
        for name in names:
            try:
                if not _is_stale_staging(parent, name, cutoff):
                    continue
                shutil.rmtree(name, dir_fd=parent)  # never follows links (fd-based)
            except FileNotFoundError:
                continue  # removed meanwhile
            except OSError as exc:
                logger.warning(
                    "could not remove the stale staging folder %s: %s",
                    Path(where) / name,
                    exc.strerror or type(exc).__name__,
                )
                continue
            removed += 1
            logger.warning("removed the stale staging folder %s", Path(where) / name)
    finally:
        os.close(parent)
    return removed


def _is_stale_staging(parent: int, name: str, cutoff: float) -> bool:
    """Whether `name` in `parent` is one of our staging folders, last touched before `cutoff`."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        folder = os.open(name, flags, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return False  # a link or a file: not ours
        raise
    try:
        st = os.fstat(folder)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            return False
        newest = st.st_mtime
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name not in _STAGED_FILES:
                    return False
                entry_st = entry.stat(follow_symlinks=False)
                if not stat.S_ISREG(entry_st.st_mode):
                    return False
                newest = max(newest, entry_st.st_mtime)
        return newest < cutoff
    finally:
        os.close(folder)


# --- the local folder -----------------------------------------------------------------------


class LocalDrop:
    """A drop in a local folder (a mounted share, or `home/drop` for the demo and tests)."""

    def __init__(self, base: Path, settings: Settings, *, base_may_be_missing: bool = False):
        self.base = base
        self.settings = settings
        self.description = base.as_uri()
        self._base_may_be_missing = base_may_be_missing

    def _open_folder(self, district: str) -> int | None:
        """A descriptor of the district folder (never through a link); None when it is missing."""
        check_district(district)
        folder = self.base / district
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(folder, flags)
        except FileNotFoundError:
            if not self._base_may_be_missing and not self.base.is_dir():
                raise DropMisconfigured(
                    f"the drop folder {self.base} does not exist (check drop_url)"
                ) from None
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise DropMisconfigured(
                    f"the drop's entry for district {district} ({folder}) is a link or not a "
                    "folder; it is not read"
                ) from None
            raise DropMisconfigured(
                f"cannot open the drop folder {folder}: {exc.strerror or type(exc).__name__}"
            ) from None

    def list(self, district: str, now: datetime | None = None) -> DropListing:
        """Sort the district's files by what may be done with them now (see DropListing)."""
        fd = self._open_folder(district)
        entries: list[_Entry] = []
        if fd is not None:
            try:
                with os.scandir(fd) as it:
                    for item in it:
                        try:
                            st = item.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue  # removed while we looked
                        entries.append(_Entry(item.name, st.st_mode, st.st_size, st.st_mtime))
            except OSError as exc:
                raise DropMisconfigured(
                    f"cannot read the drop folder {self.base / district}: "
                    f"{exc.strerror or type(exc).__name__}"
                ) from None
            finally:
                os.close(fd)
        listing = _sort_entries(entries, self.settings, now)
        _log_listing(self.description, district, listing)
        return listing

    def fetch(self, district: str, name: str) -> FetchedFile:
        """Copy the file through a private staging folder and return its bytes and sha256."""
        check_name(name)
        limit = self.settings.max_file_bytes

        def download(staged: Path) -> datetime:
            folder = self._open_folder(district)
            if folder is None:
                raise _gone(name)
            try:
                flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                source = os.open(name, flags, dir_fd=folder)
            except FileNotFoundError:
                raise _gone(name) from None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise DropRefused(
                        f"{name} is {REASON_LINK}; links are never followed"
                    ) from None
                raise DropRefused(
                    f"{name} cannot be read: {exc.strerror or type(exc).__name__}"
                ) from None
            finally:
                os.close(folder)
            try:
                st = os.fstat(source)
                if not stat.S_ISREG(st.st_mode):
                    raise DropRefused(f"{name} is {REASON_NOT_REGULAR}")
                if st.st_size > limit:
                    raise _too_large(name, st.st_size, limit)
                out = _Staged(staged, name, limit)
                try:
                    while chunk := os.read(source, CHUNK_BYTES):
                        out.write(chunk)
                finally:
                    out.close()
                return datetime.fromtimestamp(st.st_mtime, UTC)
            except OSError as exc:
                raise DropRefused(
                    f"{name} cannot be read: {exc.strerror or type(exc).__name__}"
                ) from None
            finally:
                os.close(source)

        return _fetch_staged(self.settings, name, download)

    def delete(
        self, district: str, name: str, expect: DropFile | FetchedFile | None = None
    ) -> bool:
        """Remove the file; False when it was already gone. Links and folders are refused.

        With `expect` (the file as listed or fetched), only that file is removed: FileChanged
        when its size or time differ (a newer upload), FileGone when it is no longer there.
        """
        check_name(name)
        folder = self._open_folder(district)
        if folder is None:
            if expect is not None:
                raise _gone(name)
            return False
        try:
            st = os.stat(name, dir_fd=folder, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                kind = REASON_LINK if stat.S_ISLNK(st.st_mode) else REASON_NOT_REGULAR
                raise DropRefused(f"{name} is {kind}; it is not deleted")
            if expect is not None:
                _check_unchanged(name, expect, st.st_size, st.st_mtime)
            os.unlink(name, dir_fd=folder)
        except FileNotFoundError:
            if expect is not None:
                raise _gone(name) from None
            return False
        except OSError as exc:
            raise DropRefused(
                f"{name} cannot be deleted: {exc.strerror or type(exc).__name__}"
            ) from None
        finally:
            os.close(folder)
        logger.info("%s: district %s: deleted %s", self.description, district, name)
        return True

    def put(self, district: str, name: str, data: bytes) -> None:
        """Place a file as a district would (for the demo and tests); it appears complete."""
        check_district(district)
        check_name(name)
        folder = self.base / district
        partial = folder / f".{name}.part"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with os.fdopen(_open_staged(partial), "wb") as out:
                out.write(data)
            os.replace(partial, folder / name)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise DropError(
                f"cannot put {name} in {folder}: {exc.strerror or type(exc).__name__}"
            ) from None


# --- the SFTP server --------------------------------------------------------------------------


def _run_coroutine(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine on a private event loop, in a fresh thread if this one already runs one."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sftp-drop") as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


def _short_reason(exc: BaseException) -> str:
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
            f"the known_hosts file {known_hosts} cannot be read: {_short_reason(exc)}"
        ) from None
    algorithms: list[bytes] = []
    ca = False
    for address in addresses or [""]:
        keys, ca_keys, *_ = entries.match(host, address, None if port == 22 else port)
        ca = ca or bool(ca_keys)
        for key in keys:
            algorithms.extend(key.sig_algorithms)
    return HostKeyPins(bool(algorithms) or ca, host_key_algorithms(algorithms, ca=ca))


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

    def _path(self, district: str, name: str | None = None) -> str:
        folder = posixpath.join(self.base, check_district(district))
        return folder if name is None else posixpath.join(folder, check_name(name))

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
        """The configured key, loaded here: asyncssh given a path also loads files beside it."""
        import asyncssh

        try:
            return asyncssh.read_private_key(self.ssh_key)
        except (OSError, asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
            raise DropMisconfigured(
                f"the SSH key {self.ssh_key} cannot be used: {_short_reason(exc)}"
            ) from None

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
                last, reason = exc, _short_reason(exc)
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
                f"{_short_reason(exc)}"
            )
        if isinstance(exc, asyncssh.PermissionDenied):
            return DropMisconfigured(
                f"the SFTP drop at {self.address} refused the key {self.ssh_key} for user "
                f"{self.username} (check ssh_key and the server's authorized keys)"
            )
        if isinstance(exc, asyncssh.KeyImportError | asyncssh.KeyEncryptionError):
            return DropMisconfigured(
                f"the SSH key {self.ssh_key} cannot be used: {_short_reason(exc)}"
            )
        if isinstance(exc, asyncssh.IllegalUserName | asyncssh.ProtocolNotSupported):
            return DropMisconfigured(
                f"the SFTP drop at {self.address} refused the session: {_short_reason(exc)}"
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
                f"the SFTP drop at {self.address} could not {action}: {_short_reason(exc)}"
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

    async def _folder_exists(self, sftp: asyncssh.SFTPClient, district: str) -> bool:
        """Whether the district folder is there; a link or a file in its place is refused."""
        attrs = await self._lstat(sftp, self._path(district))
        if attrs is None:
            if self.base != "." and await self._lstat(sftp, self.base) is None:
                raise DropMisconfigured(
                    f"the SFTP drop at {self.address} has no folder {self.base} (check drop_url)"
                )
            return False
        if attrs.permissions is None or not stat.S_ISDIR(attrs.permissions):
            raise DropMisconfigured(
                f"the drop's entry for district {district} ({self.description}/{district}) is a "
                "link or not a folder; it is not read"
            )
        return True

    def list(self, district: str, now: datetime | None = None) -> DropListing:
        """Sort the district's files by what may be done with them now (see DropListing)."""
        folder = self._path(district)

        async def op(sftp: asyncssh.SFTPClient) -> list[_Entry]:
            if not await self._folder_exists(sftp, district):
                return []
            entries = []
            # bytes in, bytes out: names that are not UTF-8 are listed (and refused), not fatal
            async for item in sftp.scandir(folder.encode("utf-8")):
                name = bytes(item.filename).decode("utf-8", "surrogateescape")
                if name in (".", ".."):
                    continue
                attrs = item.attrs
                if attrs.permissions is None and _is_csv(name) and not _name_problem(name):
                    attrs = await self._lstat(sftp, posixpath.join(folder, name)) or attrs
                mtime = None if attrs.mtime is None else float(attrs.mtime)
                entries.append(_Entry(name, attrs.permissions, attrs.size, mtime))
            return entries

        listing = _sort_entries(self._call(f"list district {district}", op), self.settings, now)
        _log_listing(self.description, district, listing)
        return listing

    def fetch(self, district: str, name: str) -> FetchedFile:
        """Download the file through a private staging folder; return its bytes and sha256."""
        import asyncssh

        path = self._path(district, name)
        limit = self.settings.max_file_bytes

        async def op(sftp: asyncssh.SFTPClient, staged: Path) -> datetime:
            attrs = await self._lstat(sftp, path)
            if attrs is None:
                raise _gone(name)
            _check_regular(name, attrs, limit)
            try:
                async with sftp.open(path, "rb") as source:
                    # SFTP opens follow links: check that what was opened is what lstat saw
                    opened = await source.stat()
                    _check_regular(name, opened, limit)
                    if (opened.size, opened.mtime) != (attrs.size, attrs.mtime):
                        raise DropRefused(f"{name} changed while being fetched; try again later")
                    out = _Staged(staged, name, limit)
                    try:
                        while chunk := await source.read(CHUNK_BYTES):
                            out.write(chunk)
                    finally:
                        out.close()
            except (asyncssh.SFTPNoSuchFile, asyncssh.SFTPNoSuchPath):
                raise _gone(name) from None
            except asyncssh.SFTPPermissionDenied:
                raise DropRefused(f"{name} cannot be read: permission denied") from None
            assert attrs.mtime is not None
            return datetime.fromtimestamp(attrs.mtime, UTC)

        def download(staged: Path) -> datetime:
            return self._call(f"fetch {name}", lambda sftp: op(sftp, staged))

        return _fetch_staged(self.settings, name, download)

    def delete(
        self, district: str, name: str, expect: DropFile | FetchedFile | None = None
    ) -> bool:
        """Remove the file; False when it was already gone. Links and folders are refused.

        With `expect` (the file as listed or fetched), only that file is removed: FileChanged
        when its size or time differ (a newer upload), FileGone when it is no longer there.
        """
        import asyncssh

        path = self._path(district, name)
        removing = False  # a remove was sent: if the connection broke, it may have been done

        def missing() -> bool:
            if removing:
                return True  # gone after our own remove: the retry finds it done
            if expect is not None:
                raise _gone(name)
            return False

        async def op(sftp: asyncssh.SFTPClient) -> bool:
            nonlocal removing
            attrs = await self._lstat(sftp, path)
            if attrs is None:
                return missing()
            if attrs.permissions is None or not stat.S_ISREG(attrs.permissions):
                link = attrs.permissions is not None and stat.S_ISLNK(attrs.permissions)
                kind = REASON_LINK if link else REASON_NOT_REGULAR
                raise DropRefused(f"{name} is {kind}; it is not deleted")
            if expect is not None:
                mtime = None if attrs.mtime is None else float(attrs.mtime)
                _check_unchanged(name, expect, attrs.size, mtime)
            try:
                removing = True
                await sftp.remove(path)
            except (asyncssh.SFTPNoSuchFile, asyncssh.SFTPNoSuchPath):
                removing = False
                return missing()
            except asyncssh.SFTPPermissionDenied:
                raise DropRefused(f"{name} cannot be deleted: permission denied") from None
            return True

        deleted = self._call(f"delete {name}", op)
        if deleted:
            logger.info("%s: district %s: deleted %s", self.description, district, name)
        return deleted

    def put(self, district: str, name: str, data: bytes) -> None:
        """Upload a file as a district would (for the demo and tests); it appears complete."""
        import asyncssh

        folder = self._path(district)
        path = self._path(district, name)
        partial = posixpath.join(folder, f".{name}.part")

        async def op(sftp: asyncssh.SFTPClient) -> None:
            await sftp.makedirs(folder, exist_ok=True)
            async with sftp.open(partial, "wb") as out:
                await out.write(data)
            try:
                await sftp.posix_rename(partial, path)
            except asyncssh.SFTPOpUnsupported:
                if await self._lstat(sftp, path) is not None:
                    await sftp.remove(path)
                await sftp.rename(partial, path)

        self._call(f"put {name}", op)


def _check_regular(name: str, attrs: asyncssh.SFTPAttrs, limit: int) -> None:
    mode = attrs.permissions
    if mode is not None and stat.S_ISLNK(mode):
        raise DropRefused(f"{name} is {REASON_LINK}; links are never followed")
    if mode is None or not stat.S_ISREG(mode) or attrs.size is None or attrs.mtime is None:
        raise DropRefused(f"{name} is {REASON_NOT_REGULAR}")
    if attrs.size > limit:
        raise _too_large(name, attrs.size, limit)


# --- choosing the backend ---------------------------------------------------------------------


def open_drop(settings: Settings) -> Drop:
    """The drop `settings.drop` names: a LocalDrop for file://, an SftpDrop for sftp://.

    Raises DropMisconfigured for a URL or key setup that cannot work, before any connection.
    """
    url = settings.drop
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise DropMisconfigured(f"drop_url is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if parts.query or parts.fragment:
        raise DropMisconfigured("drop_url must not have a query (?...) or fragment (#...)")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise DropMisconfigured("a file:// drop_url must be a local folder: file:///path")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise DropMisconfigured("a file:// drop_url needs an absolute path: file:///path")
        return LocalDrop(
            Path(os.path.normpath(path)), settings, base_may_be_missing=settings.drop_url is None
        )
    if scheme == "sftp":
        return _open_sftp(parts, port, settings)
    raise DropMisconfigured(
        f"drop_url must start with sftp:// or file://, not '{escape_name(parts.scheme)}:'"
    )


def _open_sftp(parts: SplitResult, port: int | None, settings: Settings) -> SftpDrop:
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
    import asyncssh

    try:
        asyncssh.read_private_key(ssh_key)
    except (OSError, asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
        raise DropMisconfigured(
            f"the SSH key {ssh_key} cannot be used: {_short_reason(exc)} (an unencrypted "
            "private key is needed for the nightly job)"
        ) from None
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
    )

"""What the drop holds, its errors, and the checks both backends share.

Everything here is pure or nearly (the listing is logged): names are checked before they
become paths, a folder's entries are sorted into what may be taken, and a delete decides from
what lstat saw; the backends (local.py, sftp.py) supply only the file system primitives.
"""

from __future__ import annotations

import logging
import math
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from schemas.districts import DISTRICT_CODE_RULE, is_district_code
from tasks.errors import DemographicsError
from tasks.settings import Settings

# One logger for the whole package, named as the module it was, so log lines read the same.
logger = logging.getLogger("tasks.drop")

MAX_NAME_LENGTH = 255
CHUNK_BYTES = 256 * 1024

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
    other: list[DropFile] = field(default_factory=list)  # plain files of another kind (.xlsx)


@dataclass(frozen=True)
class FetchedFile:
    name: str
    data: bytes = field(repr=False)  # student data: never in a repr
    size: int
    modified: datetime
    sha256: str


@dataclass(frozen=True)
class Entry:
    """One directory entry as lstat (or fstat) saw it; None where the server gave nothing."""

    name: str
    mode: int | None
    size: int | None
    mtime: float | None


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
    """Either backend; every method checks the district code, the folder (one of FOLDERS)
    and the file name first."""

    description: str

    def list(
        self, district: str, now: datetime | None = None, *, folder: str = ""
    ) -> DropListing: ...

    def fetch(self, district: str, name: str, *, folder: str = "") -> FetchedFile: ...

    def delete(
        self,
        district: str,
        name: str,
        expect: DropFile | FetchedFile | None = None,
        *,
        folder: str = "",
    ) -> bool: ...

    def put(self, district: str, name: str, data: bytes, *, folder: str = "") -> None: ...


# --- names --------------------------------------------------------------------------------

# The folders of a district's drop, `<base>/<district>/<folder>`, and the names taken in each:
# demographics files in the district folder itself, a OneRoster export (its CSV files, or one
# .zip of them) in roster/, files to check without syncing in preview/.
FOLDERS: dict[str, tuple[str, ...]] = {
    "": (".csv",),
    "roster": (".csv", ".zip"),
    "preview": (".csv",),
}


def check_folder(folder: str) -> str:
    """Return the folder if it is one of FOLDERS; never a path a caller made up."""
    if folder not in FOLDERS:
        raise DropRefused("refusing a drop folder that is not roster/ or preview/")
    return folder


def not_a_folder(description: str, district: str, folder: str) -> None:
    """Log that a district's subfolder is a file or a link: it is read as empty."""
    logger.warning(
        "%s: district %s: %s is not a folder (a file or a link); read as empty",
        description,
        district,
        folder,
    )


def where(district: str, folder: str) -> str:
    """How log lines and messages name a district folder: `d1` or `d1/roster`."""
    return f"{district}/{folder}" if folder else district


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


def has_suffix(name: str, suffixes: tuple[str, ...]) -> bool:
    """Whether the name ends in one of the suffixes, in any case."""
    return any(name[-len(x) :].lower() == x and name[-len(x) :].isascii() for x in suffixes)


def name_problem(name: str, suffixes: tuple[str, ...] = (".csv",)) -> str | None:
    """Why the name is not safe as one path component of a drop file; None when it is."""
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
    if suffixes and not has_suffix(name, suffixes):
        return f"the name does not end in {' or '.join(suffixes)}"
    return None


def check_name(name: str, folder: str = "", *, any_kind: bool = False) -> str:
    """Return the name if it is safe to use as one path component of a file in the folder
    (of a kind the folder takes, unless `any_kind`: retention deletes an .xlsx too).

    Raises DropRefused (naming the problem, the name escaped) otherwise.
    """
    problem = name_problem(name, () if any_kind else FOLDERS[check_folder(folder)])
    if problem:
        raise DropRefused(f"refusing the file '{escape_name(name)}': {problem}")
    return name


def check_district(code: str) -> str:
    """Return the district code if it is safe as a folder name (the store's own rule). The
    refusal does not repeat what was given: it may be anything, a student's email too."""
    if not is_district_code(code):
        raise DropRefused(f"refusing a district code that is not valid: {DISTRICT_CODE_RULE}")
    return code


def check_file(district: str, name: str, folder: str = "", *, any_kind: bool = False) -> None:
    """The checks every operation on one file starts with: the district code, the folder,
    then the name."""
    check_district(district)
    check_folder(folder)
    check_name(name, folder, any_kind=any_kind)


# --- sorting a folder ---------------------------------------------------------------------


def _refusal(entry: Entry, suffixes: tuple[str, ...]) -> str | None:
    """Why an entry with a name of ours is left alone (a REASON_* and detail); None when it
    may be taken."""
    problem = name_problem(entry.name, suffixes)
    if problem:
        return f"{REASON_UNSAFE_NAME}: {problem.removeprefix('the name ')}"
    if entry.mode is None or entry.size is None or entry.mtime is None:
        return f"{REASON_NOT_REGULAR}: the server gave no type, size or time for it"
    if stat.S_ISLNK(entry.mode):
        return REASON_LINK
    if stat.S_ISDIR(entry.mode):
        return REASON_DIRECTORY
    if not stat.S_ISREG(entry.mode):
        return REASON_NOT_REGULAR
    return None


def sort_entries(
    entries: Iterable[Entry],
    settings: Settings,
    now: datetime | None,
    suffixes: tuple[str, ...] = (".csv",),
) -> DropListing:
    """Sort a drop folder's entries into a DropListing, judged against `now` (aware)."""
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        raise ValueError("`now` must be a timezone-aware datetime")
    expire_before = now - timedelta(days=settings.retention_days)
    settle_after = now - timedelta(seconds=settings.settle_seconds)
    listing = DropListing()
    for entry in entries:
        if not has_suffix(entry.name, suffixes):
            if _is_other(entry):
                listing.other.append(_drop_file(entry))
            continue  # partial uploads, hidden files, folders: not ours
        reason = _refusal(entry, suffixes)
        if reason is not None:
            listing.refused.append(RefusedEntry(escape_name(entry.name), reason))
            continue
        file = _drop_file(entry)
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
    listing.other.sort(key=lambda f: f.name)
    return listing


# Names upload tools give a file while writing it (WinSCP, browsers, rsync's start with '.').
PARTIAL_SUFFIXES = (".part", ".filepart", ".partial", ".tmp", ".crdownload")


def _is_other(entry: Entry) -> bool:
    """A plain file of a kind the folder does not take (an .xlsx, a .txt): the data managers
    are told once, and retention deletes it. Not an upload in progress, nor a hidden file."""
    return (
        name_problem(entry.name, ()) is None
        and not has_suffix(entry.name, PARTIAL_SUFFIXES)
        and entry.mode is not None
        and stat.S_ISREG(entry.mode)
        and entry.size is not None
        and entry.mtime is not None
    )


def _drop_file(entry: Entry) -> DropFile:
    assert entry.size is not None and entry.mtime is not None
    return DropFile(entry.name, entry.size, datetime.fromtimestamp(entry.mtime, UTC))


def listed(
    description: str,
    district: str,
    entries: Iterable[Entry],
    settings: Settings,
    now: datetime | None,
    folder: str = "",
) -> DropListing:
    """The sorted listing, logged (counts, and each refused name escaped)."""
    listing = sort_entries(entries, settings, now, FOLDERS[folder])
    district = where(district, folder)
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
    return listing


# --- what may be fetched or deleted -------------------------------------------------------


def megabytes(size: float) -> str:
    """A size for a person: precise enough to tell two small limits apart."""
    mb = size / (1024 * 1024)
    if mb >= 100:
        return f"{mb:,.0f} MB"
    if mb >= 1:
        return f"{mb:.1f} MB"
    return f"{mb:.3f} MB"


def os_reason(exc: OSError) -> str:
    """The OS's few words on a local failure (never file contents)."""
    return exc.strerror or type(exc).__name__


def too_large(name: str, size: int, limit: int, *, at_least: bool = False) -> DropRefused:
    what = f"more than {megabytes(limit)}" if at_least else megabytes(size)
    return DropRefused(
        f"{name} is {what}, over the limit of {megabytes(limit)} (max_file_mb); it was not read"
    )


def gone(name: str) -> FileGone:
    return FileGone(f"{name} is no longer in the drop")


def check_regular(name: str, entry: Entry, limit: int) -> None:
    """Refuse to read anything but a regular file of at most `limit` bytes; never a link."""
    mode = entry.mode
    if mode is not None and stat.S_ISLNK(mode):
        raise DropRefused(f"{name} is {REASON_LINK}; links are never followed")
    if mode is None or not stat.S_ISREG(mode) or entry.size is None or entry.mtime is None:
        raise DropRefused(f"{name} is {REASON_NOT_REGULAR}")
    if entry.size > limit:
        raise too_large(name, entry.size, limit)


def _whole_seconds(when: datetime) -> int:
    """A time at the precision SFTP reports (whole seconds), so both backends compare alike."""
    return math.floor(when.timestamp())


def check_unchanged(
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


def check_deletable(name: str, entry: Entry, expect: DropFile | FetchedFile | None) -> None:
    """Refuse to delete a link, a folder or anything not regular, or (with `expect`) a file
    that is not the one listed or fetched."""
    if entry.mode is None or not stat.S_ISREG(entry.mode):
        link = entry.mode is not None and stat.S_ISLNK(entry.mode)
        kind = REASON_LINK if link else REASON_NOT_REGULAR
        raise DropRefused(f"{name} is {kind}; it is not deleted")
    if expect is not None:
        check_unchanged(name, expect, entry.size, entry.mtime)


# `remove(check)`: look the file up without following links, pass what was seen to `check`
# (which raises when it must stay), remove it; True when removed, False when it was not there.
Remover = Callable[[Callable[[Entry], None]], bool]


def delete_file(
    description: str,
    district: str,
    name: str,
    expect: DropFile | FetchedFile | None,
    remove: Remover,
    folder: str = "",
) -> bool:
    """The delete both backends share; each supplies only `remove` (see Remover).

    False when the file was already gone; with `expect`, FileGone instead (the file that was
    read is no longer there) and FileChanged when another file took its name.
    """
    if not remove(lambda entry: check_deletable(name, entry, expect)):
        if expect is not None:
            raise gone(name)
        return False
    logger.info("%s: district %s: deleted %s", description, where(district, folder), name)
    return True

"""Fetching through a private staging folder, and clearing the ones a killed worker left.

A download lives only in a private (0700) folder made for it, as one 0600 file, counted and
capped while it arrives; the folder is always removed, and `clean_staging` removes the ones
whose `finally` never ran.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import TracebackType

from tasks.drop.model import (
    DropError,
    DropMisconfigured,
    FetchedFile,
    logger,
    os_reason,
    too_large,
)
from tasks.settings import Settings

STAGING_PREFIX = "demographics-"
# what tempfile.mkdtemp(prefix=STAGING_PREFIX) makes: the prefix and 8 of its name characters
_STAGING_NAME = re.compile(re.escape(STAGING_PREFIX) + r"[a-z0-9_]{8}")
_STAGED_FILES = {"download.csv"}


def open_private(path: Path) -> int:
    """A new (or emptied) 0600 file for writing, never through a link."""
    return os.open(
        path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
    )


class Staged:
    """The private (0600) file a download is written to, counting and capping what arrives.

    A local write failure (disk full) is a DropError of its own, not a broken connection.
    Used as a context manager: the file is closed on the way out.
    """

    def __init__(self, path: Path, name: str, limit: int):
        self.name = name
        self.limit = limit
        self.total = 0
        try:
            self._out = os.fdopen(open_private(path), "wb")
        except OSError as exc:
            raise self._failed(exc) from None

    def _failed(self, exc: OSError) -> DropError:
        return DropError(f"cannot write {self.name} to the staging folder: {os_reason(exc)}")

    def write(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if self.total > self.limit:
            raise too_large(self.name, self.total, self.limit, at_least=True)
        try:
            self._out.write(chunk)
        except OSError as exc:
            raise self._failed(exc) from None

    def close(self) -> None:
        try:
            self._out.close()
        except OSError as exc:
            raise self._failed(exc) from None

    def __enter__(self) -> Staged:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def fetch_staged(
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
            f"{os_reason(exc)}"
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
        raise too_large(name, len(data), settings.max_file_bytes)
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
            f"cannot open the staging folder {where}: {os_reason(exc)}"
        ) from None
    cutoff = time.time() - older_than_seconds
    try:
        with os.scandir(parent) as it:
            names = [e.name for e in it if _STAGING_NAME.fullmatch(e.name)]
        return sum(_remove_if_stale(parent, Path(where), name, cutoff) for name in names)
    finally:
        os.close(parent)


def _remove_if_stale(parent: int, where: Path, name: str, cutoff: float) -> bool:
    """Remove `name` in `parent` if it is a stale staging folder; whether it was removed."""
    try:
        if not _is_stale_staging(parent, name, cutoff):
            return False
        shutil.rmtree(name, dir_fd=parent)  # never follows links (fd-based)
    except FileNotFoundError:
        return False  # removed meanwhile
    except OSError as exc:
        logger.warning(
            "could not remove the stale staging folder %s: %s", where / name, os_reason(exc)
        )
        return False
    logger.warning("removed the stale staging folder %s", where / name)
    return True


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

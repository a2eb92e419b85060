"""The drop in a local folder (`file:///...`): a mounted share, or `home/drop` for the demo.

Every path is opened relative to the district folder's descriptor, never through a link.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from tasks.drop.model import (
    CHUNK_BYTES,
    REASON_LINK,
    DropError,
    DropFile,
    DropListing,
    DropMisconfigured,
    DropRefused,
    Entry,
    FetchedFile,
    check_district,
    check_file,
    check_folder,
    check_regular,
    delete_file,
    gone,
    listed,
    not_a_folder,
    os_reason,
)
from tasks.drop.staging import Staged, fetch_staged, open_private
from tasks.settings import Settings


class LocalDrop:
    """A drop in a local folder (a mounted share, or `home/drop` for the demo and tests)."""

    def __init__(self, base: Path, settings: Settings, *, base_may_be_missing: bool = False):
        self.base = base
        self.settings = settings
        self.description = base.as_uri()
        self._base_may_be_missing = base_may_be_missing

    def _open_folder(self, district: str, sub: str = "") -> int | None:
        """A descriptor of the district folder or its subfolder (never through a link); None
        when it is missing."""
        check_district(district)
        check_folder(sub)
        fd = self._open_district(district)
        if fd is None or not sub:
            return fd
        try:
            return os.open(sub, _FOLDER_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                # The district's own upload (a file or link named roster): its folder is
                # empty, and the entry is told about and expires with the district's files.
                not_a_folder(self.description, district, sub)
                return None
            raise _bad_folder(self.base / district / sub, exc) from None
        finally:
            os.close(fd)

    def _open_district(self, district: str) -> int | None:
        folder = self.base / district
        try:
            return os.open(folder, _FOLDER_FLAGS)
        except FileNotFoundError:
            if not self._base_may_be_missing and not self.base.is_dir():
                raise DropMisconfigured(
                    f"the drop folder {self.base} does not exist (check drop_url)"
                ) from None
            return None
        except OSError as exc:
            raise _bad_folder(folder, exc) from None

    def list(self, district: str, now: datetime | None = None, *, folder: str = "") -> DropListing:
        """Sort the folder's files by what may be done with them now (see DropListing)."""
        fd = self._open_folder(district, folder)
        entries: list[Entry] = []
        if fd is not None:
            try:
                entries = _scan(fd)
            except OSError as exc:
                raise DropMisconfigured(
                    f"cannot read the drop folder {self.base / district / folder}: {os_reason(exc)}"
                ) from None
            finally:
                os.close(fd)
        return listed(self.description, district, entries, self.settings, now, folder)

    def fetch(self, district: str, name: str, *, folder: str = "") -> FetchedFile:
        """Copy the file through a private staging folder and return its bytes and sha256."""
        check_file(district, name, folder)
        limit = self.settings.max_file_bytes

        def download(staged: Path) -> datetime:
            source = self._open_source(district, name, folder)
            try:
                st = os.fstat(source)
                check_regular(name, Entry(name, st.st_mode, st.st_size, st.st_mtime), limit)
                with Staged(staged, name, limit) as out:
                    while chunk := os.read(source, CHUNK_BYTES):
                        out.write(chunk)
                return datetime.fromtimestamp(st.st_mtime, UTC)
            except OSError as exc:
                raise DropRefused(f"{name} cannot be read: {os_reason(exc)}") from None
            finally:
                os.close(source)

        return fetch_staged(self.settings, name, download)

    def _open_source(self, district: str, name: str, sub: str) -> int:
        """A descriptor of the file to read; links are refused, not followed."""
        folder = self._open_folder(district, sub)
        if folder is None:
            raise gone(name)
        try:
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            return os.open(name, flags, dir_fd=folder)
        except FileNotFoundError:
            raise gone(name) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise DropRefused(f"{name} is {REASON_LINK}; links are never followed") from None
            raise DropRefused(f"{name} cannot be read: {os_reason(exc)}") from None
        finally:
            os.close(folder)

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
        check_file(district, name, folder, any_kind=True)

        def remove(check: Callable[[Entry], None]) -> bool:
            fd = self._open_folder(district, folder)
            if fd is None:
                return False
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                check(Entry(name, st.st_mode, st.st_size, st.st_mtime))
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise DropRefused(f"{name} cannot be deleted: {os_reason(exc)}") from None
            finally:
                os.close(fd)
            return True

        return delete_file(self.description, district, name, expect, remove, folder)

    def put(self, district: str, name: str, data: bytes, *, folder: str = "") -> None:
        """Place a file as a district would (for the demo and tests); it appears complete."""
        check_file(district, name, folder)
        folder_path = self.base / district / folder
        partial = folder_path / f".{name}.part"
        try:
            folder_path.mkdir(parents=True, exist_ok=True)
            with os.fdopen(open_private(partial), "wb") as out:
                out.write(data)
            os.replace(partial, folder_path / name)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise DropError(f"cannot put {name} in {folder_path}: {os_reason(exc)}") from None


_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _bad_folder(folder: Path, exc: OSError) -> DropMisconfigured:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return DropMisconfigured(
            f"the drop's entry {folder} is a link or not a folder; it is not read"
        )
    return DropMisconfigured(f"cannot open the drop folder {folder}: {os_reason(exc)}")


def _scan(fd: int) -> list[Entry]:
    """The folder's entries as lstat sees them (links not followed)."""
    entries = []
    with os.scandir(fd) as it:
        for item in it:
            try:
                st = item.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed while we looked
            entries.append(Entry(item.name, st.st_mode, st.st_size, st.st_mtime))
    return entries

"""The district file drop: list, fetch and delete the CSV files districts upload.

Each district has its own folder `<base>/<district>/`; every `*.csv` in it (suffix in any case)
is a file to process, oldest first. Its `roster/` holds a OneRoster export (CSV files or one
.zip), its `preview/` files to check without syncing (`FOLDERS`).

The drop is a local folder (`file:///...`, the default) or an SFTP server
(`sftp://user@host:port/base`), reached with one private key and a pinned host key only.

The drop is written by people outside the project, so nothing in it is trusted: names are
checked before they become paths, links are never followed, sizes are capped before and while
reading, and a download lives only in a private (0700) staging folder that is always removed
(`clean_staging` removes the ones a killed worker left).
Messages and log lines carry file names (escaped) and counts, never file contents.

The package: `model` (what the drop holds, its errors, the checks both backends share),
`staging`, `local`, `sftp` and `hostkeys` (the SFTP server's pinned keys). Its public names are
all importable from here.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tasks.drop.hostkeys import HostKeyPins, addresses_of, host_key_algorithms, read_host_key_pins
from tasks.drop.local import LocalDrop
from tasks.drop.model import (
    CHUNK_BYTES,
    FOLDERS,
    MAX_NAME_LENGTH,
    REASON_DIRECTORY,
    REASON_LINK,
    REASON_NOT_REGULAR,
    REASON_UNSAFE_NAME,
    Drop,
    DropError,
    DropFile,
    DropListing,
    DropMisconfigured,
    DropRefused,
    DropUnavailable,
    FetchedFile,
    FileChanged,
    FileGone,
    HostKeyRefused,
    RefusedEntry,
    check_district,
    check_folder,
    check_name,
    escape_name,
    megabytes,
    where,
)
from tasks.drop.sftp import (
    CONNECT_TIMEOUT_SECONDS,
    KEEPALIVE_COUNT_MAX,
    KEEPALIVE_SECONDS,
    LOGIN_TIMEOUT_SECONDS,
    SftpDrop,
    open_sftp,
)
from tasks.drop.staging import STAGING_PREFIX, clean_staging
from tasks.settings import Settings

__all__ = [
    "CHUNK_BYTES",
    "CONNECT_TIMEOUT_SECONDS",
    "FOLDERS",
    "KEEPALIVE_COUNT_MAX",
    "KEEPALIVE_SECONDS",
    "LOGIN_TIMEOUT_SECONDS",
    "MAX_NAME_LENGTH",
    "REASON_DIRECTORY",
    "REASON_LINK",
    "REASON_NOT_REGULAR",
    "REASON_UNSAFE_NAME",
    "STAGING_PREFIX",
    "Drop",
    "DropError",
    "DropFile",
    "DropListing",
    "DropMisconfigured",
    "DropRefused",
    "DropUnavailable",
    "FetchedFile",
    "FileChanged",
    "FileGone",
    "HostKeyPins",
    "HostKeyRefused",
    "LocalDrop",
    "RefusedEntry",
    "SftpDrop",
    "addresses_of",
    "check_district",
    "check_folder",
    "check_name",
    "clean_staging",
    "escape_name",
    "host_key_algorithms",
    "megabytes",
    "open_drop",
    "read_host_key_pins",
    "where",
]


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
        return open_sftp(parts, port, settings)
    raise DropMisconfigured(
        f"drop_url must start with sftp:// or file://, not '{escape_name(parts.scheme)}:'"
    )

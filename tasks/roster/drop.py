"""A roster arriving by the drop: which files of `<district>/roster/` make the roster to load,
what is inside a .zip of them, the SHA-256 that recognises the same roster again, and the guard
that holds a roster which would deactivate too many students. Pure: no drop, no database.

A OneRoster bulk export is a set of CSV files (or one .zip of them) replaced whole every night.
The newest upload wins: when the newest ready file is a .zip, that .zip is the roster and every
other file in the folder is superseded; otherwise the loose CSV files are the roster and any
.zip is superseded. A set waits while one of its files may still be uploading or a required
file has not arrived: an export is often copied one file at a time.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field

from schemas.roster import ROSTER_FILES, RosterIssue, SchoolLoss
from tasks.drop import DropFile, DropListing, escape_name, megabytes


@dataclass(frozen=True)
class RosterPlan:
    """What the roster folder holds, judged: the files to take now, why the set waits (None
    when it does not), and the files a newer upload supersedes."""

    take: list[DropFile] = field(default_factory=list)
    waiting: str | None = None
    superseded: list[DropFile] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.take and self.waiting is None


def is_zip(name: str) -> bool:
    return name.lower().endswith(".zip")


def plan_roster(listing: DropListing) -> RosterPlan:
    """Judge a listing of `<district>/roster/` (files past retention are left to retention)."""
    files = sorted([*listing.ready, *listing.too_large], key=lambda f: (f.modified, f.name))
    if listing.settling:
        names = ", ".join(f.name for f in listing.settling)
        return RosterPlan(waiting=f"{names} may still be uploading")
    if not files:
        return RosterPlan()
    newest = files[-1]
    if is_zip(newest.name):
        return RosterPlan(take=[newest], superseded=files[:-1])
    loose = [f for f in files if not is_zip(f.name)]
    superseded = [f for f in files if is_zip(f.name)]
    have = {f.name.lower() for f in loose}
    missing = [name for name in ROSTER_FILES if name not in have]
    if missing:
        return RosterPlan(waiting=f"{', '.join(missing)} has not arrived")
    return RosterPlan(take=loose, superseded=superseded)


def roster_name(take: list[DropFile]) -> str:
    """How the runs list and the emails name a roster: its .zip, or its folder."""
    if len(take) == 1 and is_zip(take[0].name):
        return f"roster/{take[0].name}"
    return f"roster/ ({len(take)} files)"


# A OneRoster export holds a dozen files; more is not a roster.
MAX_MEMBERS = 100
_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


def unpack(name: str, data: bytes, limit: int) -> tuple[dict[str, bytes], list[RosterIssue]]:
    """The CSV files inside a .zip, by file name (the folders inside are ignored), at most
    `limit` bytes unpacked in all, counted as they are unpacked (the sizes a .zip claims are
    not trusted); or the issues that stop it from being read."""
    shown = escape_name(name)

    def refused(code: str, message: str) -> tuple[dict[str, bytes], list[RosterIssue]]:
        return {}, [RosterIssue(shown, "error", code, message)]

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if _is_roster_member(m)]
    except (zipfile.BadZipFile, ValueError):
        return refused("not_a_zip", f"{shown} is not a readable .zip file; export it again")
    if len(members) > MAX_MEMBERS:
        return refused("not_a_roster", f"{shown} holds more than {MAX_MEMBERS} CSV files")
    if any(m.flag_bits & 0x1 for m in members):
        return refused("encrypted_zip", f"{shown} is password-protected; export it without one")
    if any(m.compress_type not in _METHODS for m in members):
        return refused("not_a_zip", f"{shown} is compressed in a way not read here; use Deflate")
    files: dict[str, bytes] = {}
    left = limit
    for member in members:
        base = posixpath.basename(member.filename).lower()
        if base in files:
            return refused("duplicate_file", f"{shown} holds {base} twice; export it again")
        try:
            content = _read_member(archive, member, left)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            return refused("not_a_zip", f"{shown} is damaged ({base}); export it again")
        if content is None:
            return refused(
                "too_large",
                f"{shown} unpacks to more than {megabytes(limit)}, over the limit (max_file_mb)",
            )
        files[base] = content
        left -= len(content)
    return files, []


def _read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, left: int) -> bytes | None:
    """The member's bytes, unpacked in chunks; None as soon as they pass `left`."""
    chunks, size = [], 0
    with archive.open(member) as stream:
        while chunk := stream.read(64 * 1024):
            size += len(chunk)
            if size > left:
                return None
            chunks.append(chunk)
    return b"".join(chunks)


def _is_roster_member(member: zipfile.ZipInfo) -> bool:
    """A CSV file, not a folder, nor the resource forks a Mac adds (__MACOSX/, ._name)."""
    base = posixpath.basename(member.filename)
    return (
        not member.is_dir()
        and base.lower().endswith(".csv")
        and not base.startswith(".")
        and not member.filename.startswith("__MACOSX/")
    )


def holds_file(held_name: str, file_name: str) -> bool:
    """Whether a file of the roster folder is one of the held roster's (named as
    `roster_name` names it): its .zip, or any CSV of a roster of loose files."""
    if held_name.endswith(" files)"):
        return file_name.lower().endswith(".csv")
    return held_name == f"roster/{file_name}"


def roster_sha256(files: Mapping[str, bytes]) -> str:
    """The roster's SHA-256: of its files' names and contents, whether they came loose or in
    a .zip, so the same export uploaded again is recognised however it was packed."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{hashlib.sha256(files[name]).hexdigest()}\n".encode())
    return digest.hexdigest()


def guard_reason(losses: list[SchoolLoss], limit: float) -> str | None:
    """Why a roster must wait for a data manager, or None: it would deactivate more than
    `limit` of the district's active students, or every active student of a school. A broken
    export (a school missing, a truncated users.csv) must never deactivate a district."""
    active = sum(s.active for s in losses)
    leaving = sum(s.leaving for s in losses)
    emptied = [s.school for s in losses if s.active and s.leaving == s.active]
    if emptied:
        return (
            f"it would deactivate every active student of {', '.join(sorted(emptied))} "
            f"({leaving} of {active} in the district)"
        )
    if active and leaving > limit * active:
        return (
            f"it would deactivate {leaving} of the district's {active} active students "
            f"({leaving / active:.1%}), more than its roster limit of {limit:.0%}"
        )
    return None

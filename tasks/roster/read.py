"""Read a roster's files into frames, and check them (tasks/roster/rules.py); a OneRoster 1.2
roster is read as the 1.1 one it amounts to (tasks/roster/oneroster12.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from schemas.issues import Severity
from schemas.roster import ROSTER_FILES, ROSTER_FILES_12, RosterIssue
from tasks.read import FIELDS, ROW, ParsedFile, column_key, read_demographics
from tasks.roster.oneroster12 import as_oneroster_11, roster_version
from tasks.roster.rules import check_files, issue_order

# A file's columns: (required, optional used).
Columns = tuple[tuple[str, ...], tuple[str, ...]]


@dataclass
class RosterSnapshot:
    """The four files, checked: one frame per file with OneRoster column names and `__row`."""

    frames: dict[str, pl.DataFrame] = field(default_factory=dict)
    issues: list[RosterIssue] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(1 for i in self.issues if i.severity == "error")


def read_roster(directory: Path) -> RosterSnapshot:
    """Read and check the files of a roster folder. Never raises for any content."""
    issues: list[RosterIssue] = []
    files = {}
    for name in (*ROSTER_FILES_12, "manifest.csv"):
        if name in ROSTER_FILES or (directory / name).exists():
            data = _read_bytes(directory / name, name, issues)
            if data is not None:
                files[name] = data
    return read_roster_files(files, issues)


def required_files(files: Mapping[str, bytes]) -> tuple[str, ...]:
    """The files a roster of this version needs (roles.csv too for 1.2, by its manifest)."""
    version = roster_version(files, [])
    return tuple(ROSTER_FILES_12 if version == "1.2" else ROSTER_FILES)


def read_roster_files(
    files: Mapping[str, bytes], issues: list[RosterIssue] | None = None
) -> RosterSnapshot:
    """Check a roster given as its files' bytes by name (from a folder, the drop or a .zip);
    a missing file is an issue. `issues`: found before (a file that could not be read)."""
    snapshot = RosterSnapshot(issues=list(issues or []))
    version = roster_version(files, snapshot.issues)
    if version is not None:
        _read_files(files, version, snapshot)
    snapshot.issues.sort(key=issue_order)
    return snapshot


def _read_files(files: Mapping[str, bytes], version: str, snapshot: RosterSnapshot) -> None:
    spec = ROSTER_FILES_12 if version == "1.2" else ROSTER_FILES
    frames = {}
    for name, columns in spec.items():
        if name not in files:
            if not any(i.file == name for i in snapshot.issues):
                snapshot.issues.append(_missing(name))
            continue
        frame = _read_file(files[name], name, snapshot.issues, columns, version)
        if frame is not None:
            frames[name] = frame
    if len(frames) < len(spec):
        return
    if version == "1.2":
        frames = as_oneroster_11(frames, snapshot.issues)
    snapshot.frames = frames
    snapshot.issues.extend(check_files(frames))


def _missing(name: str) -> RosterIssue:
    return RosterIssue(name, "error", "missing_file", f"{name} is missing from the roster folder")


def _read_file(
    data: bytes, name: str, issues: list[RosterIssue], columns: Columns, version: str
) -> pl.DataFrame | None:
    """One file as a frame of the columns used, or None (with the issue why) if it cannot be."""
    parsed = read_demographics(data, name)
    for issue in parsed.issues:
        issues.append(
            RosterIssue(
                name,
                "error" if issue.severity is Severity.ERROR else "warning",
                issue.code.value,
                issue.message,
                row=issue.row,
            )
        )
    if parsed.stopped:
        return None
    positions = _column_positions(parsed.header, name, issues, columns, version)
    if positions is None:
        return None
    return _complete_rows(parsed, positions, name, issues, columns)


def _read_bytes(path: Path, name: str, issues: list[RosterIssue]) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        issues.append(_missing(name))
    except OSError as exc:
        issues.append(
            RosterIssue(name, "error", "unreadable_file", f"cannot read {name}: {exc.strerror}")
        )
    return None


def _column_positions(
    header: list[str], name: str, issues: list[RosterIssue], columns: Columns, version: str
) -> dict[str, int] | None:
    """Where each used column is (headers matched ignoring case and spaces), or None if one
    appears twice or a required one is missing."""
    required, optional = columns
    wanted = {c.casefold(): c for c in (*required, *optional)}
    positions: dict[str, int] = {}
    for index, raw in enumerate(header):
        canonical = wanted.get(raw.strip().casefold())
        if canonical is None:
            continue
        if canonical in positions:
            issues.append(
                RosterIssue(
                    name,
                    "error",
                    "duplicate_column",
                    f"the column {canonical} appears twice "
                    f"(columns {positions[canonical] + 1} and {index + 1})",
                    column=canonical,
                )
            )
            return None
        positions[canonical] = index
    missing = [c for c in required if c not in positions]
    if missing:
        issues.append(
            RosterIssue(
                name,
                "error",
                "missing_column",
                f"{name} has no {', '.join(missing)} column; a OneRoster {version} {name} needs "
                f"{', '.join(required)}",
            )
        )
        return None
    return positions


def _complete_rows(
    parsed: ParsedFile,
    positions: dict[str, int],
    name: str,
    issues: list[RosterIssue],
    columns: Columns,
) -> pl.DataFrame:
    """The used columns under their OneRoster names (absent optional ones empty); a row whose
    field count differs from the header's is an issue and left out."""
    required, optional = columns
    frame = parsed.records.select(
        ROW,
        FIELDS,
        *(
            pl.col(column_key(positions[c])).alias(c)
            if c in positions
            else pl.lit(None, dtype=pl.String).alias(c)
            for c in (*required, *optional)
        ),
    )
    width = len(parsed.header)
    bad = frame.filter(pl.col(FIELDS) != width)
    for row, count in bad.select(ROW, FIELDS).iter_rows():
        issues.append(
            RosterIssue(
                name,
                "error",
                "wrong_field_count",
                f"this row has {count} fields but the header has {width}",
                row=row,
            )
        )
    return frame.filter(pl.col(FIELDS) == width).drop(FIELDS)

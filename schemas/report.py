"""The validation / sync report, shaped exactly as the contract's JSON report.

Issues are held as a polars DataFrame (a million-row file can carry a hundred thousand issues;
building one Python object per issue would cost more than validating the file). `Issue` is the
typed view of one row of it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import polars as pl

from schemas.columns import DEFAULT_GENDER_CODES, KNOWN_COLUMNS
from schemas.issues import FILE_STOPPING, Code, Severity

REPORT_VERSION = 1
# Where the issues go in the JSON text (a string no report holds: reports hold no NUL).
_ISSUES_SLOT = "\x00issues\x00"
MAX_VALUE_CHARS = 80

ISSUE_SCHEMA: dict[str, pl.DataType] = {
    "row": pl.Int64(),
    "column": pl.String(),
    "severity": pl.String(),
    "code": pl.String(),
    "message": pl.String(),
    "value": pl.String(),
}
ISSUE_COLUMNS = tuple(ISSUE_SCHEMA)
COLUMN_RANK = {name: rank for rank, name in enumerate(KNOWN_COLUMNS)}

SyncStatus = Literal["succeeded", "rejected", "held", "failed", "preview"]


@dataclass(frozen=True)
class Issue:
    """One finding: where it is, how bad, which code, what to do, and the offending value."""

    code: Code
    message: str
    row: int | None = None
    column: str | None = None
    value: str | None = None

    @property
    def severity(self) -> Severity:
        return self.code.severity

    def as_dict(self) -> dict[str, Any]:
        return {
            "row": self.row,
            "column": self.column,
            "severity": self.severity.value,
            "code": self.code.value,
            "message": self.message,
            "value": cut_value(self.value),
        }


def cut_value(value: str | None) -> str | None:
    return None if value is None else value[:MAX_VALUE_CHARS]


def issues_frame(issues: Iterable[Issue]) -> pl.DataFrame:
    return pl.DataFrame([i.as_dict() for i in issues], schema=ISSUE_SCHEMA, orient="row")


def sort_issues(frame: pl.DataFrame) -> pl.DataFrame:
    """File-level issues first, then by row, column in contract order, and code."""
    order = (
        frame["column"]
        .replace_strict(COLUMN_RANK, default=len(COLUMN_RANK), return_dtype=pl.Int32)
        .fill_null(-1)
    )
    return (
        frame.with_columns(_order=order)
        .sort(["row", "_order", "column", "code"], nulls_last=False, maintain_order=True)
        .drop("_order")
    )


@dataclass(frozen=True)
class FileInfo:
    name: str
    sha256: str
    bytes: int
    encoding: str | None


@dataclass(frozen=True)
class Summary:
    rows: int
    valid_rows: int
    error_rows: int
    warning_rows: int
    errors: int
    warnings: int


@dataclass(frozen=True)
class SyncBlock:
    run_id: str | None
    status: SyncStatus
    matched: int
    updated: int
    unchanged: int
    unmatched: int
    # What changes (or would: preview, held), per field: from which value to which, and for
    # how many students; empty when nothing does. Values, never who.
    changes: list[Change] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["changes"] = [c.as_dict() for c in self.changes]
        return doc


@dataclass(frozen=True)
class Change:
    """One kind of change: `students` students' `field` goes from `before` (None: no value
    stored yet) to `after`."""

    field: str
    before: str | None
    after: str | None
    students: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "from": self.before,
            "to": self.after,
            "students": self.students,
        }


@dataclass(frozen=True)
class Advice:
    """One (code, column) of the issues: how many, the first rows, and what to do about the
    pattern seen (tasks/advice.py)."""

    code: str
    column: str | None
    count: int
    rows: list[int]
    fix: str


@dataclass
class Report:
    file: FileInfo
    summary: Summary
    issues: pl.DataFrame = field(repr=False)
    district: str | None = None
    sync: SyncBlock | None = None
    # Each row's SSID and email as the file had them (`row`, `SSID`, `email`), so the emailed
    # issues.csv names the student behind a row once the source file is deleted. Student
    # data: in memory only, never in the JSON report, a log or Prefect.
    students: pl.DataFrame | None = field(default=None, repr=False)
    advice: list[Advice] = field(default_factory=list, repr=False)
    gender_codes: tuple[str, ...] = DEFAULT_GENDER_CODES  # the district's, for the advice

    @property
    def has_errors(self) -> bool:
        return self.summary.errors > 0

    @property
    def stopped(self) -> bool:
        """A file-level error stops the whole file: nothing in it can be applied."""
        stopping = [code.value for code in FILE_STOPPING]
        return bool(self.issues["code"].is_in(stopping).any())

    @property
    def exit_code(self) -> int:
        """The contract's exit status: 0 clean, 1 errors found."""
        return 1 if self.has_errors else 0

    def issue_list(self, limit: int | None = None) -> list[Issue]:
        frame = self.issues if limit is None else self.issues.head(limit)
        return [
            Issue(
                code=Code(r["code"]),
                message=r["message"],
                row=r["row"],
                column=r["column"],
                value=r["value"],
            )
            for r in frame.iter_rows(named=True)
        ]

    def counts_by_code(self) -> list[tuple[str, str, int]]:
        """(code, severity, count), errors first, most frequent first."""
        if self.issues.is_empty():
            return []
        counts = (
            self.issues.group_by("code", "severity")
            .len()
            .sort(["severity", "len", "code"], descending=[False, True, False])
        )
        return [(r[0], r[1], r[2]) for r in counts.iter_rows()]

    def to_dict(self, with_issues: bool = True) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "report_version": REPORT_VERSION,
            "district": self.district,
            "file": asdict(self.file),
            "summary": asdict(self.summary),
            "advice": [asdict(a) for a in self.advice],
            "issues": self.issues.select(ISSUE_COLUMNS).to_dicts() if with_issues else [],
        }
        if self.sync is not None:
            doc["sync"] = self.sync.as_dict()
        return doc

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON. Its issues (a hundred thousand for a million-row file with 1 %
        bad cells) are written by polars, one per line, not as a Python dict each: 0.9 s of
        the 2.7 s a report took went to that."""
        if indent is None or self.issues.is_empty():
            return json.dumps(self.to_dict(), ensure_ascii=False, indent=indent)
        doc = self.to_dict(with_issues=False)
        doc["issues"] = _ISSUES_SLOT
        text = json.dumps(doc, ensure_ascii=False, indent=indent)
        pad = " " * (2 * indent)
        lines = self.issues.select(ISSUE_COLUMNS).write_ndjson().rstrip("\n")
        issues = f"[\n{pad}{lines.replace(chr(10), ',' + chr(10) + pad)}\n{' ' * indent}]"
        before, _slot, after = text.partition(json.dumps(_ISSUES_SLOT))
        return before + issues + after

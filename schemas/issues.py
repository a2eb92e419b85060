"""The issue codes of the CSV contract, with their severity and scope.

The table here is the single place a code's severity and scope are decided; the validator,
the report and the tests all read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


class Scope(StrEnum):
    FILE = "file"
    COLUMN = "column"
    ROW = "row"
    CELL = "cell"


@dataclass(frozen=True)
class CodeInfo:
    severity: Severity
    scope: Scope


class Code(StrEnum):
    EMPTY_FILE = "empty_file"
    MALFORMED_CSV = "malformed_csv"
    UNREADABLE_ENCODING = "unreadable_encoding"
    DUPLICATE_COLUMN = "duplicate_column"
    NO_IDENTIFIER_COLUMN = "no_identifier_column"
    TOO_MANY_ERRORS = "too_many_errors"
    UNKNOWN_COLUMN = "unknown_column"
    NON_UTF8_ENCODING = "non_utf8_encoding"
    NO_DATA_ROWS = "no_data_rows"
    NON_COMMA_DELIMITER = "non_comma_delimiter"
    SYNC_HELD = "sync_held"
    WRONG_FIELD_COUNT = "wrong_field_count"
    MISSING_IDENTIFIER = "missing_identifier"
    INVALID_SSID = "invalid_ssid"
    INVALID_EMAIL = "invalid_email"
    INVALID_GENDER = "invalid_gender"
    INVALID_FLAG = "invalid_flag"
    VALUE_TOO_LONG = "value_too_long"
    NORMALIZED_VALUE = "normalized_value"
    DUPLICATE_ROW = "duplicate_row"
    CONFLICTING_DUPLICATE = "conflicting_duplicate"
    IDENTIFIER_CONFLICT = "identifier_conflict"
    NO_MATCHING_STUDENT = "no_matching_student"
    EMAIL_MISMATCH = "email_mismatch"

    @property
    def severity(self) -> Severity:
        return CODES[self].severity

    @property
    def scope(self) -> Scope:
        return CODES[self].scope


_E, _W = Severity.ERROR, Severity.WARNING
CODES: dict[Code, CodeInfo] = {
    Code.EMPTY_FILE: CodeInfo(_E, Scope.FILE),
    Code.MALFORMED_CSV: CodeInfo(_E, Scope.FILE),
    Code.UNREADABLE_ENCODING: CodeInfo(_E, Scope.FILE),
    Code.DUPLICATE_COLUMN: CodeInfo(_E, Scope.FILE),
    Code.NO_IDENTIFIER_COLUMN: CodeInfo(_E, Scope.FILE),
    Code.TOO_MANY_ERRORS: CodeInfo(_E, Scope.FILE),
    Code.UNKNOWN_COLUMN: CodeInfo(_W, Scope.COLUMN),
    Code.NON_UTF8_ENCODING: CodeInfo(_W, Scope.FILE),
    Code.NO_DATA_ROWS: CodeInfo(_W, Scope.FILE),
    Code.NON_COMMA_DELIMITER: CodeInfo(_W, Scope.FILE),
    Code.SYNC_HELD: CodeInfo(_W, Scope.FILE),
    Code.WRONG_FIELD_COUNT: CodeInfo(_E, Scope.ROW),
    Code.MISSING_IDENTIFIER: CodeInfo(_E, Scope.ROW),
    Code.INVALID_SSID: CodeInfo(_E, Scope.CELL),
    Code.INVALID_EMAIL: CodeInfo(_E, Scope.CELL),
    Code.INVALID_GENDER: CodeInfo(_E, Scope.CELL),
    Code.INVALID_FLAG: CodeInfo(_E, Scope.CELL),
    Code.VALUE_TOO_LONG: CodeInfo(_E, Scope.CELL),
    Code.NORMALIZED_VALUE: CodeInfo(_W, Scope.CELL),
    Code.DUPLICATE_ROW: CodeInfo(_W, Scope.ROW),
    Code.CONFLICTING_DUPLICATE: CodeInfo(_E, Scope.ROW),
    Code.IDENTIFIER_CONFLICT: CodeInfo(_E, Scope.ROW),
    Code.NO_MATCHING_STUDENT: CodeInfo(_W, Scope.ROW),
    Code.EMAIL_MISMATCH: CodeInfo(_W, Scope.ROW),
}

# Codes that stop a whole file: nothing of it is applied.
FILE_STOPPING: frozenset[Code] = frozenset(
    code for code, info in CODES.items() if info.scope is Scope.FILE and info.severity is _E
)

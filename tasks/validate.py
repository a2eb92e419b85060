"""Validate a read file against the contract: header, row, cell and duplicate rules.

Everything here is vectorised over the whole file (a district file can hold a million rows):
cell rules run through the pandera model in one lazy validation, the rest as polars
expressions. Messages say what is wrong and how to fix it, and never quote a student value;
the offending value travels only in the issue's `value` field.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

import pandera.polars as pa
import polars as pl

from schemas.cells import (
    CODE_BY_COLUMN,
    SSID_DECIMAL,
    SSID_LOST_ZEROS,
    SSID_SCIENTIFIC,
    cells_model,
)
from schemas.columns import (
    CASE_NORMALIZED_COLUMNS,
    DEFAULT_GENDER_CODES,
    DEMOGRAPHIC_COLUMNS,
    FLAG_COLUMNS,
    IDENTIFIER_COLUMNS,
    KNOWN_COLUMNS,
    MAX_TEXT_LENGTH,
    canonical_column,
    resembled_column,
)
from schemas.issues import FILE_STOPPING, Code, Severity
from schemas.report import (
    ISSUE_COLUMNS,
    ISSUE_SCHEMA,
    MAX_VALUE_CHARS,
    Issue,
    Report,
    Summary,
    issues_frame,
    sort_issues,
)
from tasks.advice import advise
from tasks.read import FIELDS, ROW, ParsedFile, column_key, read_demographics

MAX_ROWS_LISTED = 10


@dataclass
class Validation:
    """The report, plus the rows that passed, normalised, for the write path.

    `rows` is built on first use: a file-only validation never needs it, and filtering a
    million-row frame copies every column.
    """

    report: Report
    columns: list[str] = field(default_factory=list)
    _normalized: pl.DataFrame | None = field(default=None, repr=False)
    _skipped: pl.Series | None = field(default=None, repr=False)

    @property
    def normalized(self) -> pl.DataFrame | None:
        """Every complete row (errors included), codes upper-cased (a sync then makes its
        values categorical: tasks/match.py); None if the file stopped."""
        return self._normalized

    @cached_property
    def rows(self) -> pl.DataFrame:
        if self._normalized is None or self._skipped is None:
            return pl.DataFrame(schema={ROW: pl.UInt32, **{c: pl.String for c in self.columns}})
        return self._normalized.filter(~pl.col(ROW).is_in(self._skipped.implode())).select(
            ROW, *self.columns
        )


def validate_bytes(
    data: bytes,
    name: str,
    gender_codes: tuple[str, ...] = DEFAULT_GENDER_CODES,
    district: str | None = None,
    judge_duplicates: bool = True,
) -> Validation:
    """Read and validate one file's bytes. Never raises for any content.

    A sync passes `judge_duplicates=False`: there, two rows are the same student when they
    match the same student, which only the roster can tell (see `tasks.match`).
    """
    return validate_parsed(read_demographics(data, name), gender_codes, district, judge_duplicates)


def validate_parsed(
    parsed: ParsedFile,
    gender_codes: tuple[str, ...] = DEFAULT_GENDER_CODES,
    district: str | None = None,
    judge_duplicates: bool = True,
) -> Validation:
    gender_codes = tuple(code.upper() for code in gender_codes)
    issues: list[Issue] = list(parsed.issues)
    if parsed.stopped:
        return _finish(parsed, issues, [], 0, [], district, True, None, gender_codes)

    known, header_issues = _map_header(parsed.header)
    issues.extend(header_issues)
    stopped = any(i.code in FILE_STOPPING for i in issues)
    records = parsed.records
    if records.height == 0:
        issues.append(Issue(Code.NO_DATA_ROWS, "the file has a header but no data rows"))

    frame = records.select(
        ROW, FIELDS, *(pl.col(column_key(index)).alias(name) for name, index in known.items())
    )
    columns = [name for name in KNOWN_COLUMNS if name in known]
    width = len(parsed.header)
    frames: list[pl.DataFrame] = [_wrong_field_count(frame, width)]
    # Filtering or upper-casing copies whole columns: do it only where something changes.
    if (frame[FIELDS] != width).any():
        complete = frame.filter(pl.col(FIELDS) == width).drop(FIELDS)
    else:
        complete = frame.drop(FIELDS)
    normalized = _upper_case_codes(complete, [c for c in CASE_NORMALIZED_COLUMNS if c in known])
    identifiers = [c for c in IDENTIFIER_COLUMNS if c in known]
    cell_issues = _cell_issues(complete, normalized, gender_codes)
    frames.append(cell_issues)
    frames.append(_normalized_value(complete, normalized, gender_codes))
    if identifiers:
        frames.append(_missing_identifier(complete, identifiers))
        if judge_duplicates:
            frames.append(_duplicates(normalized, identifiers, cell_issues))
    return _finish(
        parsed, issues, frames, records.height, columns, district, stopped, normalized, gender_codes
    )


def _upper_case_codes(complete: pl.DataFrame, coded: list[str]) -> pl.DataFrame:
    """Y/N and gender codes in upper case; only columns holding a lower-case letter change."""
    if not coded or complete.height == 0:
        return complete
    lower = complete.select(pl.col(c).str.contains(r"\p{Ll}").any() for c in coded).row(0)
    return complete.with_columns(
        pl.col(c).str.to_uppercase() for c, has in zip(coded, lower, strict=True) if has
    )


def _map_header(header: list[str]) -> tuple[dict[str, int], list[Issue]]:
    """Known column -> position, plus the header-level issues."""
    issues: list[Issue] = []
    positions: dict[str, list[int]] = {}
    for index, raw in enumerate(header):
        key = raw.strip().casefold()
        if not key:
            issues.append(
                Issue(
                    Code.UNKNOWN_COLUMN,
                    f"column {index + 1} has no header; the column is ignored",
                    column=raw,
                )
            )
            continue
        positions.setdefault(key, []).append(index)
    known: dict[str, int] = {}
    duplicated: set[str] = set()
    for key, indexes in positions.items():
        name = canonical_column(key)
        where = ", ".join(str(i + 1) for i in indexes[:-1]) + f" and {indexes[-1] + 1}"
        if len(indexes) > 1:
            label = f"the column '{name}'" if name else "the same header"
            issues.append(
                Issue(
                    Code.DUPLICATE_COLUMN,
                    f"{label} appears in columns {where} (headers are compared ignoring case "
                    "and spaces); keep one of them and remove the others",
                )
            )
            duplicated.add(name or key)
        elif name:
            known[name] = indexes[0]
        else:
            issues.append(_unknown_column(indexes[0], header[indexes[0]]))
    if not any(c in known or c in duplicated for c in IDENTIFIER_COLUMNS):
        issues.append(Issue(Code.NO_IDENTIFIER_COLUMN, _no_identifier_message(header)))
    return known, _accepted_headers_once(issues)


def _accepted_headers_once(issues: list[Issue]) -> list[Issue]:
    """The accepted headers, listed once: with the unknown column the report shows first
    (issues of one kind on no row are shown by column)."""
    unknown = [i for i in issues if i.code is Code.UNKNOWN_COLUMN]
    if not unknown:
        return issues
    first = min(unknown, key=lambda i: i.column or "")
    listed = replace(first, message=f"{first.message}. The accepted headers are {ACCEPTED}")
    return [listed if i is first else i for i in issues]


ACCEPTED = ", ".join(KNOWN_COLUMNS)


def _unknown_column(index: int, raw: str) -> Issue:
    """An unknown header, told the column it resembles if any."""
    meant = resembled_column(raw)
    said = f"column {index + 1}'s header is not a column of the demographics file"
    if meant:
        said += (
            f"; it resembles {meant}: if the column holds {meant}, name its header {meant} "
            "(headers are matched by name)"
        )
    return Issue(Code.UNKNOWN_COLUMN, said + "; the column is ignored", column=raw)


def _no_identifier_message(header: list[str]) -> str:
    looks_like_data = any(h.strip().isdigit() or "@" in h for h in header)
    if looks_like_data:
        return (
            "the first row looks like data, not a header: add a header row naming the "
            "columns, with SSID and/or email"
        )
    return (
        "the file has neither an SSID nor an email column, so no row can be matched to a "
        "student; name the identifier column 'SSID' or 'email'"
    )


def issue_rows(
    frame: pl.DataFrame,
    code: Code,
    message: pl.Expr,
    column: str | None = None,
    value: pl.Expr | None = None,
) -> pl.DataFrame:
    """Issues for every row of `frame`, built as one polars select."""
    return frame.select(
        pl.col(ROW).cast(pl.Int64).alias("row"),
        pl.lit(column, dtype=pl.String).alias("column"),
        pl.lit(code.severity.value).alias("severity"),
        pl.lit(code.value).alias("code"),
        message.alias("message"),
        (value if value is not None else pl.lit(None, dtype=pl.String))
        .str.slice(0, MAX_VALUE_CHARS)
        .alias("value"),
    )


def _wrong_field_count(frame: pl.DataFrame, width: int) -> pl.DataFrame:
    wrong = frame.filter(pl.col(FIELDS) != width)
    return issue_rows(
        wrong,
        Code.WRONG_FIELD_COUNT,
        pl.format(
            "this row has {} fields but the header has {}: look for a delimiter inside a "
            "value that is not quoted, or a missing value; the row is skipped",
            pl.col(FIELDS),
            pl.lit(width),
        ),
    )


def _missing_identifier(complete: pl.DataFrame, identifiers: list[str]) -> pl.DataFrame:
    missing = complete.filter(pl.all_horizontal(pl.col(identifiers).is_null()))
    named = " nor an ".join(identifiers) if len(identifiers) > 1 else f"no {identifiers[0]}"
    prefix = "neither an " if len(identifiers) > 1 else ""
    return issue_rows(
        missing,
        Code.MISSING_IDENTIFIER,
        pl.lit(
            f"the row has {prefix}{named}, so it cannot be matched to a student; "
            "fill one in or remove the row"
        ),
    )


def _ssid_message() -> pl.Expr:
    value = pl.col("value")
    digits = value.str.len_chars()
    text_hint = (
        "format the SSID column as Text before typing or pasting, or export it again from "
        "the student information system without opening it in Excel"
    )
    return (
        pl.when(value.str.contains(SSID_LOST_ZEROS))
        .then(
            pl.format(
                "SSID has {} digits, not 10: it looks like Excel dropped its leading zeros "
                "(it read the SSID as a number). Pad it back to 10 digits (in Excel: "
                '=TEXT(A2,"0000000000") where A2 is the SSID cell), or ' + text_hint,
                digits,
            )
        )
        .when(value.str.contains(SSID_SCIENTIFIC))
        .then(
            pl.lit(
                "SSID is in scientific notation (like 1.23457E+09): Excel turned it into a "
                "number and its digits are lost; " + text_hint
            )
        )
        .when(value.str.contains(SSID_DECIMAL))
        .then(pl.lit("SSID has a decimal point: it was saved as a number; " + text_hint))
        .when(value.str.contains(r"^[0-9]{11,}$"))
        .then(pl.format("SSID has {} digits; it must have exactly 10", digits))
        .otherwise(
            pl.lit("SSID must be exactly 10 digits (0-9), with no spaces, dashes or letters")
        )
    )


def _cell_messages(column: str, gender_codes: tuple[str, ...]) -> pl.Expr:
    if column == "SSID":
        return _ssid_message()
    if column == "email":
        return pl.lit(
            "email is not a valid address (expected something like name@school.org, with no spaces)"
        )
    if column == "gender":
        allowed = (
            " or ".join([", ".join(gender_codes[:-1]), gender_codes[-1]])
            if len(gender_codes) > 1
            else gender_codes[0]
        )
        return pl.lit(f"gender must be {allowed}")
    if column in FLAG_COLUMNS:
        return pl.lit(f"{column} must be Y or N")
    return pl.format(
        "{} has {} characters; at most {} are allowed",
        pl.lit(column),
        pl.col("value").str.len_chars(),
        pl.lit(MAX_TEXT_LENGTH),
    )


def _cell_issues(
    complete: pl.DataFrame, normalized: pl.DataFrame, gender_codes: tuple[str, ...]
) -> pl.DataFrame:
    """Run the pandera model; turn its failure cases into issues with the raw values."""
    checked = [c for c in normalized.columns if c in CODE_BY_COLUMN]
    if not checked or normalized.height == 0:
        return pl.DataFrame(schema=ISSUE_SCHEMA)
    try:
        cells_model(gender_codes).validate(normalized.select(checked), lazy=True)
    except pa.errors.SchemaErrors as exc:
        # Only the structured failure cases are read: the exception text holds raw values.
        failures = exc.failure_cases
    else:
        return pl.DataFrame(schema=ISSUE_SCHEMA)
    if failures["index"].null_count():
        raise RuntimeError("cell validation failed on the frame's structure, not on a cell")
    failures = failures.select("column", pl.col("index").cast(pl.UInt32)).unique(
        maintain_order=True
    )
    parts = []
    for (column,), group in failures.group_by("column", maintain_order=True):
        index = group["index"]
        rows = pl.DataFrame(
            {ROW: complete[ROW].gather(index), "value": complete[column].gather(index)}
        )
        parts.append(
            issue_rows(
                rows,
                CODE_BY_COLUMN[str(column)],
                _cell_messages(str(column), gender_codes),
                column=str(column),
                value=pl.col("value"),
            )
        )
    return pl.concat(parts)


def _normalized_value(
    complete: pl.DataFrame, normalized: pl.DataFrame, gender_codes: tuple[str, ...]
) -> pl.DataFrame:
    parts = [pl.DataFrame(schema=ISSUE_SCHEMA)]
    for column in CASE_NORMALIZED_COLUMNS:
        if column not in complete.columns:
            continue
        allowed = list(gender_codes) if column == "gender" else ["Y", "N"]
        changed = complete.select(ROW, pl.col(column).alias("value")).filter(
            (pl.col("value") != normalized[column]) & normalized[column].is_in(allowed)
        )
        parts.append(
            issue_rows(
                changed,
                Code.NORMALIZED_VALUE,
                pl.format(
                    "{} was accepted as upper case ({})",
                    pl.lit(column),
                    pl.col("value").str.to_uppercase(),
                ),
                column=column,
                value=pl.col("value"),
            )
        )
    return pl.concat(parts)


def _has_repeats(values: pl.Series) -> bool:
    present = values.drop_nulls()
    return present.n_unique() < present.len()


def _duplicates(
    normalized: pl.DataFrame, identifiers: list[str], cell_issues: pl.DataFrame
) -> pl.DataFrame:
    """Same student twice: identical -> duplicate_row on later rows; else conflicting on all.

    Without a database, two rows are the same student when they share an SSID, or have no
    SSID and the same email ignoring case. Rows whose identifier is itself invalid are left
    out: they already carry an error and cannot be said to be anyone.
    """
    ssid = pl.col("SSID") if "SSID" in identifiers else pl.lit(None, dtype=pl.String)
    email = (
        pl.col("email").str.to_lowercase()
        if "email" in identifiers
        else pl.lit(None, dtype=pl.String)
    )
    # Cheap pre-filter on the raw columns; keys are built only for the few candidates.
    masks: list[pl.Series] = []
    if "SSID" in identifiers:
        # Valid SSIDs are 10 digits: hashing them as integers is several times faster.
        as_number = normalized["SSID"].cast(pl.UInt64, strict=False)
        masks.append(as_number.is_not_null() & as_number.is_duplicated())
    if "email" in identifiers and ("SSID" not in identifiers or normalized["SSID"].has_nulls()):
        email_only = normalized.select(pl.when(ssid.is_null()).then(email))[:, 0]
        if _has_repeats(email_only):
            masks.append(email_only.is_not_null() & email_only.is_duplicated())
    candidates = [m for m in masks if m.any()]
    if not candidates:
        return pl.DataFrame(schema=ISSUE_SCHEMA)
    mask = candidates[0]
    for other in candidates[1:]:
        mask = mask | other
    keyed = normalized[mask.arg_true()]
    bad = cell_issues.filter(pl.col("column").is_in(identifiers))
    bad_ssid = bad.filter(pl.col("column") == "SSID")["row"].cast(pl.UInt32)
    bad_email = bad.filter(pl.col("column") == "email")["row"].cast(pl.UInt32)
    keyed = keyed.filter(
        ~(
            (pl.col(ROW).is_in(bad_ssid.implode()) & ssid.is_not_null())
            | (pl.col(ROW).is_in(bad_email.implode()) & ssid.is_null())
        )
    ).with_columns(
        pl.when(ssid.is_not_null())
        .then(pl.lit("s:") + ssid)
        .otherwise(pl.lit("e:") + email)
        .alias("_key")
    )
    return judge_duplicates(
        keyed.filter(pl.col("_key").is_not_null() & pl.col("_key").is_duplicated()),
        "_key",
        "the same student",
    )[0]


def judge_duplicates(
    repeated_rows: pl.DataFrame, key: str, who: str
) -> tuple[pl.DataFrame, pl.Series]:
    """Rows whose `key` (the student) repeats -> duplicate_row / conflicting_duplicate issues,
    and the row numbers of later identical copies (applied once, so skipped).

    "Identical values" means the demographic values that would be applied, as validate and
    sync both judge it: the identifiers only say who the row is about.
    """
    value_columns = [c for c in DEMOGRAPHIC_COLUMNS if c in repeated_rows.columns]
    signature = (
        pl.concat_str([pl.col(c).fill_null("\x00") for c in value_columns], separator="\x1f")
        if value_columns
        else pl.lit("")
    )
    groups = repeated_rows.with_columns(signature.alias("_sig")).with_columns(
        pl.col("_sig").n_unique().over(key).alias("_variants"),
        pl.col(ROW).min().over(key).alias("_first"),
        pl.col(ROW)
        .sort()
        .head(MAX_ROWS_LISTED)
        .cast(pl.String)
        .str.join(", ")
        .over(key)
        .alias("_rows"),
        pl.len().over(key).alias("_count"),
    )
    repeated = groups.filter((pl.col("_variants") == 1) & (pl.col(ROW) != pl.col("_first")))
    conflicting = groups.filter(pl.col("_variants") > 1)
    more = pl.when(pl.col("_count") > MAX_ROWS_LISTED).then(pl.lit(", ...")).otherwise(pl.lit(""))
    issues = pl.concat(
        [
            issue_rows(
                repeated,
                Code.DUPLICATE_ROW,
                pl.format(
                    f"{who} with the same values as row {{}}; this copy is ignored",
                    pl.col("_first"),
                ),
            ),
            issue_rows(
                conflicting,
                Code.CONFLICTING_DUPLICATE,
                pl.format(
                    f"{who} appears in rows {{}}{{}} with different values; none of these rows "
                    "is applied until they agree or all but one are removed",
                    pl.col("_rows"),
                    more,
                ),
            ),
        ]
    )
    return issues, repeated[ROW].cast(pl.UInt32)


def _finish(
    parsed: ParsedFile,
    issues: list[Issue],
    frames: list[pl.DataFrame],
    rows: int,
    columns: list[str],
    district: str | None,
    stopped: bool,
    normalized: pl.DataFrame | None = None,
    gender_codes: tuple[str, ...] = DEFAULT_GENDER_CODES,
) -> Validation:
    issue_table = sort_issues(pl.concat([issues_frame(issues), *frames]).select(ISSUE_COLUMNS))
    summary = summarize(issue_table, rows)
    report = Report(
        file=parsed.info,
        summary=summary,
        issues=issue_table,
        district=district,
        students=None if normalized is None else _students(normalized),
        advice=advise(issue_table, gender_codes),
        gender_codes=gender_codes,
    )
    if stopped or normalized is None:
        return Validation(report=report, columns=columns)
    return Validation(
        report=report,
        columns=columns,
        _normalized=normalized,
        _skipped=skipped_rows(issue_table),
    )


def _students(normalized: pl.DataFrame) -> pl.DataFrame:
    """Each row's SSID and email as the file had them (no copy: the columns are shared)."""
    return normalized.select(
        pl.col(ROW).cast(pl.Int64).alias("row"),
        *(
            pl.col(c) if c in normalized.columns else pl.lit(None, dtype=pl.String).alias(c)
            for c in IDENTIFIER_COLUMNS
        ),
    )


def skipped_rows(issue_table: pl.DataFrame) -> pl.Series:
    """Rows not applied: any error, or a later copy of an identical row (applied once)."""
    return issue_table.filter(
        pl.col("row").is_not_null()
        & ((pl.col("severity") == Severity.ERROR.value) | (pl.col("code") == Code.DUPLICATE_ROW))
    )["row"].cast(pl.UInt32)


def summarize(issue_table: pl.DataFrame, rows: int) -> Summary:
    """The report's counts: rows with errors, rows with warnings, and issues by severity."""
    row_issues = issue_table.filter(pl.col("row").is_not_null())
    error_rows = (
        row_issues.filter(pl.col("severity") == Severity.ERROR.value)["row"].n_unique()
        if rows
        else 0
    )
    warning_rows = (
        row_issues.filter(pl.col("severity") == Severity.WARNING.value)["row"].n_unique()
        if rows
        else 0
    )
    errors = int((issue_table["severity"] == Severity.ERROR.value).sum())
    return Summary(
        rows=rows,
        valid_rows=rows - error_rows,
        error_rows=error_rows,
        warning_rows=warning_rows,
        errors=errors,
        warnings=issue_table.height - errors,
    )


def with_issues(report: Report, extra: list[pl.DataFrame]) -> Report:
    """The report with more issues (found by matching or the safeguards), counts redone."""
    table = sort_issues(pl.concat([report.issues, *extra]).select(ISSUE_COLUMNS))
    return Report(
        students=report.students,
        advice=advise(table, report.gender_codes),
        gender_codes=report.gender_codes,
        file=report.file,
        summary=summarize(table, report.summary.rows),
        issues=table,
        district=report.district,
        sync=report.sync,
    )

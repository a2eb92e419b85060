"""Match a validated file's rows to the district's active students, and work out the changes.

The district's students and their current values are fetched once (one COPY) and matched in
polars: a million-row file is matched in a fraction of a second, and only the rows that
change anything are sent back to the database. The caller holds the district's lock, so the
values read here are still the stored ones when the changes are written.

Rules (csv-contract.md, Matching and Duplicates):
- SSID first when the row has one, else email (ignoring case); never across districts.
- SSID found, email present and pointing to a different student: `identifier_conflict`.
- SSID found, email present, differs from the student's and belongs to no one: `email_mismatch`.
- No student found (or an email shared by several students): `no_matching_student`.
- Two rows matched to the same student: identical values -> `duplicate_row` on the later;
  different values -> `conflicting_duplicate` on all of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, replace

import polars as pl
import psycopg
from psycopg import sql

from schemas.cells import SSID_PATTERN
from schemas.columns import DEMOGRAPHIC_COLUMNS, FLAG_COLUMNS
from schemas.issues import Code, Severity
from schemas.report import ISSUE_SCHEMA
from tasks.db import copy_out, hash_joins_off
from tasks.read import ROW
from tasks.validate import issue_rows, judge_duplicates

VALUE_COLUMNS = DEMOGRAPHIC_COLUMNS
STUDENT_ID = "student_id"


def read_students(conn: psycopg.Connection, district_id: int) -> pl.DataFrame:
    """The district's active students with their stored values, as `parse_students` gives
    them, from one COPY parsed in slices of whole lines as they arrive: neither the CSV text
    nor a string frame of the whole roster is ever held. Mostly the server's work, so it can
    overlap validation in a thread."""
    # Flags come as PostgreSQL writes booleans (t/f): turning them into Y/N on the server was
    # 40 % of the COPY's time (5M students: 11.9 s against 7.1 s); the file's Y/N are put in
    # the same terms instead (`compact_values`).
    values = sql.SQL(", ").join(sql.Identifier("d", c) for c in VALUE_COLUMNS)
    # COPY takes no parameters: the district's id goes in as a literal (an int, never text).
    query = sql.SQL(
        "COPY (SELECT s.student_id, s.ssid, s.email, d.student_id IS NOT NULL, {}"
        " FROM core.students s LEFT JOIN core.student_demographics d USING (student_id)"
        " WHERE s.district_id = {} AND s.active) TO STDOUT (FORMAT csv)"
    ).format(values, sql.Literal(int(district_id)))
    # Students to their values by key in key order: a hash of a million students cost the
    # server 0.2-0.3 s more. Read from libpq (`copy_out`): psycopg's Copy took as much CPU as
    # the server, CPU the validation beside it needs.
    with hash_joins_off(conn), closing(copy_out(conn, query)) as rows:
        return parse_stream(rows)


# The roster's CSV is parsed 16 MB at a time (about 150,000 students).
_SLICE_BYTES = 16 << 20


def parse_stream(
    chunks: Iterable[bytes | bytearray | memoryview], slice_bytes: int = _SLICE_BYTES
) -> pl.DataFrame:
    """The roster COPY's CSV, as it arrives in chunks, parsed a slice of whole records at a
    time (`parse_students`). Slices are parsed in a thread while the next one is read: the
    server does not wait for the parse (at a million students, 0.4 s of a 1.8 s read)."""
    parsed: list[Future[pl.DataFrame]] = []
    pending = bytearray()
    with ThreadPoolExecutor(max_workers=1) as parser:
        for chunk in chunks:
            pending += chunk
            if len(pending) >= slice_bytes:
                cut = _whole_lines(pending)
                if cut:
                    if parsed:  # one slice parsed while the next is read, no more
                        parsed[-1].result()
                    parsed.append(parser.submit(parse_students, bytes(pending[:cut])))
                    del pending[:cut]
        parsed.append(parser.submit(parse_students, bytes(pending)))
        parts = [part.result() for part in parsed]
    return pl.concat(parts, rechunk=True) if len(parts) > 1 else parts[0]


def _whole_lines(data: bytearray) -> int:
    """Where the last complete CSV record ends (0 if none can be told): after a newline with
    an even number of quotes before it, so no quoted value is cut."""
    cut = data.rfind(b"\n") + 1
    return cut if data.count(b'"', 0, cut) % 2 == 0 else 0


_CSV_SCHEMA = {
    STUDENT_ID: pl.Int64,
    "ssid": pl.String,
    "email": pl.String,
    "has_row": pl.String,
    # Stored values are a handful of codes: categorical, 4 bytes a student, not a string's 16.
    **{f"old_{c}": pl.Categorical for c in VALUE_COLUMNS},
}
_STUDENT_SCHEMA = {
    STUDENT_ID: pl.Int64,
    "_ssid_key": pl.UInt64,
    "email": pl.String,
    "has_row": pl.Boolean,
    **{f"old_{c}": pl.Categorical for c in VALUE_COLUMNS},
}


def parse_students(data: bytes) -> pl.DataFrame:
    """Rows of the roster COPY (student_id, ssid, email, has a values row, the stored values;
    booleans as t/f) -> the frame matching uses: the SSID only as its key (a 10-digit SSID as
    a number, else null), values categorical."""
    if not data:
        return pl.DataFrame(schema=_STUDENT_SCHEMA)
    frame = pl.read_csv(
        data,
        has_header=False,
        new_columns=list(_CSV_SCHEMA),
        schema_overrides=_CSV_SCHEMA,
        infer_schema=False,
    )
    return frame.select(
        STUDENT_ID,
        pl.when(pl.col("ssid").str.contains(SSID_PATTERN))
        .then(pl.col("ssid").cast(pl.UInt64, strict=False))
        .alias("_ssid_key"),
        "email",
        pl.col("has_row") == "t",
        *(f"old_{c}" for c in VALUE_COLUMNS),
    )


# A flag as the file gives it, and as the roster's COPY gives a stored one.
_AS_STORED = {"Y": "t", "N": "f"}
_AS_FILE = {"t": "Y", "f": "N"}


def compact_values(normalized: pl.DataFrame) -> pl.DataFrame:
    """The file's value columns in the terms of the stored ones (flags t/f), as categoricals:
    a million rows of Y/N take 4 MB this way, 16 MB as strings. Anything but Y/N (a row with
    an error, never applied) stays as it was. Columns already categorical are left alone."""
    return normalized.with_columns(
        (pl.col(c).replace(_AS_STORED) if c in FLAG_COLUMNS else pl.col(c)).cast(pl.Categorical)
        for c in VALUE_COLUMNS
        if c in normalized.columns and normalized.schema[c] != pl.Categorical
    )


def _as_file(values: pl.Series, column: str) -> pl.Series:
    """Values as the file and the history write them (flags Y/N)."""
    values = values.cast(pl.String)
    return values.replace(_AS_FILE) if column in FLAG_COLUMNS else values


@dataclass
class Matched:
    """The outcome of matching and diffing one file against the roster."""

    issues: pl.DataFrame  # issues found by matching, in the report's issue schema
    matched: int  # students the file would apply to (one per student)
    unmatched: int  # rows with no_matching_student
    updated: int  # students whose stored values change
    overwriting: int  # students with a stored (non-empty) value that changes
    on_record: int  # active students with any value on record
    values_changed: int
    delta: pl.DataFrame  # student_id, has_row, the 10 final values: only students that change
    history: pl.DataFrame  # student_id, field, old_value, new_value: one row per change

    @property
    def unchanged(self) -> int:
        return self.matched - self.updated


# Per file row, in the frame `_match_rows` builds: the SSID the row gives, and whether the
# roster has exactly one active student with it.
_SSID_USED = pl.col("_ssid").is_not_null()
_FOUND_BY_SSID = pl.col("_ssid_pos").is_not_null()


def match_file(
    normalized: pl.DataFrame, report_issues: pl.DataFrame, students: pl.DataFrame
) -> Matched:
    """Match every complete row, judge duplicates per student, and diff the rows to apply.

    Pure: `students` is the roster as `parse_students` gives it, read beforehand; the file's
    values are put in its terms (`compact_values`) unless the caller did so already, freeing
    the strings. Matching works on narrow key frames and the diff one column at a time: a
    million-row file has ten value columns, and every whole-frame join or filter would copy
    all of them.
    """
    normalized = compact_values(normalized)
    columns = [c for c in VALUE_COLUMNS if c in normalized.columns]
    keys = _match_rows(normalized, report_issues, students)
    # Duplicates are judged on the student each row matched, over the values it would apply.
    matched_mask = keys.select(pl.col("_pos").is_not_null() & ~pl.col("_conflict")).to_series()
    duplicate_issues, later_copies = _duplicates(normalized, keys, matched_mask, columns)
    issues = pl.concat([pl.DataFrame(schema=ISSUE_SCHEMA), *_match_issues(keys), duplicate_issues])

    errors = pl.concat(
        [
            report_issues.filter(pl.col("severity") == Severity.ERROR.value)["row"],
            issues.filter(pl.col("severity") == Severity.ERROR.value)["row"],
        ]
    ).drop_nulls()
    apply_mask = (
        matched_mask
        & ~keys[ROW].is_in(errors.cast(pl.UInt32).implode())
        & ~keys[ROW].is_in(later_copies.implode())
    )
    diffed = _diff(normalized, keys["_pos"], apply_mask, students, columns)
    return replace(diffed, issues=issues, unmatched=int(keys["_unmatched"].sum()))


def _match_rows(
    normalized: pl.DataFrame, report_issues: pl.DataFrame, students: pl.DataFrame
) -> pl.DataFrame:
    """Which student each file row matches: per row (`ROW`), the student's position in
    `students` (`_pos`, null if none) and the flags `_conflict`, `_mismatch`, `_unmatched`.

    An SSID or email with an error in the report is not used to match."""
    keys = _file_keys(normalized, report_issues)
    roster = students.select(
        pl.int_range(pl.len(), dtype=pl.UInt32).alias("_pos"),
        "_ssid_key",
        pl.col("email").alias("_stored_email"),
    )
    # Students whose SSID is unique in the district; a mask, not `unique()`, which would copy
    # the roster (its hash table alone is the size of the roster's keys and emails).
    by_ssid = roster.drop_nulls("_ssid_key")
    shared = by_ssid["_ssid_key"].is_duplicated()
    if shared.any():
        by_ssid = by_ssid.filter(~shared)
    keys = keys.join(
        by_ssid.rename({"_pos": "_ssid_pos"}), on="_ssid_key", how="left", maintain_order="left"
    )
    keys = keys.with_columns(_email_differs(keys))
    # Only rows matched by email, rows whose email differs from the SSID's student, and rows
    # whose SSID is unknown (for the message) need the email index: usually a handful, so it
    # is built for those alone.
    keys = keys.with_columns(
        (
            (~_SSID_USED & pl.col("_email_ok"))
            | (_FOUND_BY_SSID & pl.col("_email_differs"))
            | (pl.col("_ssid_key").is_not_null() & ~_FOUND_BY_SSID & pl.col("_email_ok"))
        ).alias("_need")
    )
    keys = _by_email(keys, roster)
    by_one_email = ~_SSID_USED & pl.col("_email_ok") & (pl.col("_email_count") == 1)
    return keys.with_columns(
        pl.when(_FOUND_BY_SSID)
        .then(pl.col("_ssid_pos"))
        .when(by_one_email)
        .then(pl.col("_email_pos"))
        .alias("_pos"),
        (_FOUND_BY_SSID & pl.col("_need") & (pl.col("_email_count") > 0)).alias("_conflict"),
        (_FOUND_BY_SSID & pl.col("_need") & (pl.col("_email_count") == 0)).alias("_mismatch"),
        (
            (_SSID_USED & pl.col("_ssid_key").is_not_null() & ~_FOUND_BY_SSID)
            | (~_SSID_USED & pl.col("_email_ok") & (pl.col("_email_count") != 1))
        ).alias("_unmatched"),
    )


def _email_differs(keys: pl.DataFrame) -> pl.Series:
    """Per row: it has a usable email that is not the stored one of the student its SSID
    found, ignoring case. Only the rows that differ as given are lower-cased: a million rows
    of emails lower-cased twice would cost two copies of the column."""
    given = keys.select(
        pl.col("_email_ok") & (pl.col("_email") != pl.col("_stored_email")).fill_null(True)
    ).to_series()
    rows = given.arg_true()
    differ = keys.select(
        pl.col("_email").gather(rows).str.to_lowercase()
        != pl.col("_stored_email").gather(rows).str.to_lowercase()
    ).to_series()
    return given.scatter(rows.filter(~differ.fill_null(True)), False).alias("_email_differs")


def _file_keys(normalized: pl.DataFrame, report_issues: pl.DataFrame) -> pl.DataFrame:
    """The file's identifiers per row, and which of them may be used to match."""
    bad = report_issues.filter(pl.col("severity") == Severity.ERROR.value)
    bad_ssid = bad.filter(pl.col("column") == "SSID")["row"].cast(pl.UInt32)
    bad_email = bad.filter(pl.col("column") == "email")["row"].cast(pl.UInt32)
    has_ssid = "SSID" in normalized.columns
    has_email = "email" in normalized.columns
    return normalized.select(
        ROW,
        (pl.col("SSID") if has_ssid else pl.lit(None, dtype=pl.String)).alias("_ssid"),
        (pl.col("email") if has_email else pl.lit(None, dtype=pl.String)).alias("_email"),
    ).with_columns(
        pl.when(~pl.col(ROW).is_in(bad_ssid.implode()))
        .then(pl.col("_ssid").cast(pl.UInt64, strict=False))
        .alias("_ssid_key"),
        (pl.col("_email").is_not_null() & ~pl.col(ROW).is_in(bad_email.implode())).alias(
            "_email_ok"
        ),
    )


def _by_email(keys: pl.DataFrame, roster: pl.DataFrame) -> pl.DataFrame:
    """For the rows that `_need` it: the first student with the row's email (ignoring case)
    and how many have it (`_email_pos`, `_email_count`, 0 for none)."""
    wanted = keys.filter("_need").select(ROW, pl.col("_email").str.to_lowercase().alias("_key"))
    if wanted.height:
        by_email = (
            roster.select("_pos", pl.col("_stored_email").str.to_lowercase().alias("_key"))
            .filter(pl.col("_key").is_in(wanted["_key"].implode()))
            .group_by("_key")
            .agg(pl.col("_pos").first().alias("_email_pos"), pl.len().alias("_email_count"))
        )
        wanted = wanted.join(by_email, on="_key", how="left")
    else:
        wanted = wanted.with_columns(
            pl.lit(None, dtype=pl.UInt32).alias("_email_pos"),
            pl.lit(None, dtype=pl.UInt32).alias("_email_count"),
        )
    return keys.join(
        wanted.select(ROW, "_email_pos", "_email_count"), on=ROW, how="left", maintain_order="left"
    ).with_columns(pl.col("_email_count").fill_null(0))


_NO_MATCH_MESSAGE = (
    pl.when(_SSID_USED & (pl.col("_email_count") > 0))
    .then(
        pl.lit(
            "no active student of the district has this SSID (the email belongs to a "
            "student with a different SSID on record: check the SSID); the row is "
            "skipped"
        )
    )
    .when(_SSID_USED)
    .then(
        pl.lit(
            "no active student of the district has this SSID; the row is skipped (a "
            "student new to the district can be matched once a roster that includes "
            "them is loaded; then upload their rows again in a new file)"
        )
    )
    .when(pl.col("_email_count") > 1)
    .then(
        pl.format(
            "{} active students share this email, so it cannot tell which one is meant; "
            "add the SSID; the row is skipped",
            pl.col("_email_count"),
        )
    )
    .otherwise(pl.lit("no active student of the district has this email; the row is skipped"))
)


def _match_issues(keys: pl.DataFrame) -> list[pl.DataFrame]:
    """The matching issues of the rows `_match_rows` flagged, one frame per code."""
    return [
        issue_rows(
            keys.filter("_conflict"),
            Code.IDENTIFIER_CONFLICT,
            pl.lit(
                "the SSID and the email belong to two different students; check which one is "
                "right, correct the other, and upload the row again"
            ),
            value=pl.col("_email"),
        ),
        issue_rows(
            keys.filter("_mismatch"),
            Code.EMAIL_MISMATCH,
            pl.lit(
                "the email differs from the one on record for the student with this SSID; the "
                "row is applied by SSID and the email on record is not changed"
            ),
            value=pl.col("_email"),
        ),
        issue_rows(
            keys.filter("_unmatched"),
            Code.NO_MATCHING_STUDENT,
            _NO_MATCH_MESSAGE,
            value=pl.when(_SSID_USED).then(pl.col("_ssid")).otherwise(pl.col("_email")),
        ),
    ]


def _duplicates(
    normalized: pl.DataFrame, keys: pl.DataFrame, matched: pl.Series, columns: list[str]
) -> tuple[pl.DataFrame, pl.Series]:
    positions = keys["_pos"].filter(matched)
    if positions.n_unique() == positions.len():
        return pl.DataFrame(schema=ISSUE_SCHEMA), pl.Series(ROW, [], dtype=pl.UInt32)
    repeated = matched & keys["_pos"].is_in(
        positions.filter(positions.is_duplicated()).unique().implode()
    )
    rows = (
        normalized.filter(repeated)
        .select(ROW, *(pl.col(c).cast(pl.String) for c in columns))
        .with_columns(keys["_pos"].filter(repeated).alias("_student"))
    )
    return judge_duplicates(rows, "_student", "the same student (matched by the roster)")


_HISTORY_SCHEMA = {
    STUDENT_ID: pl.Int64,
    "field": pl.String,
    "old_value": pl.String,
    "new_value": pl.String,
}


def _diff(
    normalized: pl.DataFrame,
    positions: pl.Series,
    apply_mask: pl.Series,
    students: pl.DataFrame,
    columns: list[str],
) -> Matched:
    """Compare the rows to apply with the stored values, one column at a time.

    `positions` gives, per file row, the matched student's row in `students`. Only values that
    differ are written; an empty cell never changes anything. The issues and the unmatched
    count are the caller's to fill in.
    """
    on_record = int(
        students.select(
            pl.any_horizontal(pl.col(f"old_{c}").is_not_null() for c in VALUE_COLUMNS).sum()
        ).item()
        or 0
    )
    rows = apply_mask.arg_true()  # file rows applied (one per student)
    pos = positions.gather(rows)  # their students
    changes = pl.Series("changes", [False] * len(rows), dtype=pl.Boolean)
    overwrites = changes
    changed: dict[str, pl.Series] = {}
    for c in columns:
        new = normalized[c].gather(rows)
        old = students[f"old_{c}"].gather(pos)
        mask = new.is_not_null() & (new != old).fill_null(True)
        changed[c] = mask
        changes = changes | mask
        overwrites = overwrites | (mask & old.is_not_null())
    changing = changes.arg_true()
    delta, history = _delta_and_history(
        normalized,
        students,
        rows.gather(changing),
        pos.gather(changing),
        {c: mask.gather(changing) for c, mask in changed.items()},
    )
    return Matched(
        issues=pl.DataFrame(schema=ISSUE_SCHEMA),
        matched=len(rows),
        unmatched=0,
        updated=len(changing),
        overwriting=int(overwrites.sum()),
        on_record=on_record,
        values_changed=history.height,
        delta=delta,
        history=history,
    )


def _delta_and_history(
    normalized: pl.DataFrame,
    students: pl.DataFrame,
    rows: pl.Series,
    pos: pl.Series,
    changed: dict[str, pl.Series],
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The final values of the students that change (file `rows`, students at `pos`) and one
    history row per changed value; `changed` holds, per file column, which of them change."""
    delta_columns = {
        STUDENT_ID: students[STUDENT_ID].gather(pos),
        "has_row": students["has_row"].gather(pos),
    }
    history: list[pl.DataFrame] = [pl.DataFrame(schema=_HISTORY_SCHEMA)]
    for c in VALUE_COLUMNS:
        old = students[f"old_{c}"].gather(pos)
        if c not in changed:
            delta_columns[c] = old
            continue
        new = normalized[c].gather(rows)
        mask = changed[c]
        delta_columns[c] = new.zip_with(mask, old)
        history.append(
            pl.DataFrame(
                {
                    STUDENT_ID: delta_columns[STUDENT_ID].filter(mask),
                    "field": pl.Series([c] * int(mask.sum()), dtype=pl.String),
                    "old_value": _as_file(old.filter(mask), c),
                    "new_value": _as_file(new.filter(mask), c),
                },
                schema=_HISTORY_SCHEMA,
            )
        )
    return pl.DataFrame(delta_columns), pl.concat(history)

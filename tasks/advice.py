"""Advice: the issues grouped by code and column, each with what to do about the pattern seen.

A file exported the usual ways has the same mistake on many rows ("Male" for M on 240 rows,
SSIDs that lost their leading zeros to Excel): a person needs to read the pattern once, with
its fix, then see which rows. One entry per (code, column): how many issues, the first rows,
and a fix sentence naming what was seen. A value is quoted in a fix only when it is one of the
known words people use for a code (Male, Yes, TRUE), never an arbitrary cell. Pure.
"""

from __future__ import annotations

import re

import polars as pl

from schemas.cells import SSID_DECIMAL, SSID_LOST_ZEROS, SSID_SCIENTIFIC
from schemas.report import Advice

MAX_ROWS = 10  # the rows an entry lists; the issues table and issues.csv have them all

# Words people write for gender and for yes/no flags, lower case; a cell holding one of them
# is told the code to use instead.
GENDER_WORDS = frozenset({"male", "female", "man", "woman", "boy", "girl", "m.", "f."})
FLAG_WORDS = frozenset({"yes", "no", "true", "false", "1", "0", "y.", "n.", "t", "f", "x"})

# How an SSID a spreadsheet mangled looks, and what to do about each (validate.py's messages
# say the same on each row; here it is said once).
_TEXT_HINT = (
    "format the SSID column as Text before typing or pasting, or export the file again from "
    "the student information system without opening it in Excel"
)
SSID_PATTERNS: tuple[tuple[str, str, str], ...] = (
    # (regex, short form for a table row, fix for the advice: {n} is how many)
    (
        SSID_LOST_ZEROS,
        "lost its leading zeros (see What to fix)",
        "{n} lost leading zeros (Excel read the column as numbers): pad them back to 10 "
        'digits (in Excel: =TEXT(A2,"0000000000") where A2 is the SSID cell), or ' + _TEXT_HINT,
    ),
    (
        SSID_SCIENTIFIC,
        "in scientific notation (see What to fix)",
        "{n} in scientific notation (like 1.23457E+09): Excel turned them into numbers and "
        "their digits are lost; " + _TEXT_HINT,
    ),
    (
        SSID_DECIMAL,
        "has a decimal point (see What to fix)",
        "{n} with a decimal point: they were saved as numbers; " + _TEXT_HINT,
    ),
)


def advise(issues: pl.DataFrame, gender_codes: tuple[str, ...]) -> list[Advice]:
    """One entry per (code, column) of the issues, errors first, then in the order the report
    shows them; the unknown columns are one entry (the table names each)."""
    if issues.is_empty():
        return []
    unknown = pl.col("code") == "unknown_column"
    groups = (
        issues.with_columns(pl.when(unknown).then(None).otherwise("column").alias("column"))
        .group_by("code", "column", maintain_order=True)
        .agg(
            pl.len().alias("count"),
            pl.col("row").drop_nulls().head(MAX_ROWS).alias("rows"),
            pl.col("value").alias("values"),
            pl.col("message").first().alias("message"),
            pl.col("message").n_unique().alias("messages"),
            (pl.col("severity") == "error").any().alias("error"),
        )
        .sort("error", descending=True, maintain_order=True)
    )
    return [
        Advice(
            code,
            column,
            count,
            list(rows),
            _fix(code, column, values, message if messages == 1 else "", gender_codes),
        )
        for code, column, count, rows, values, message, messages, _error in groups.iter_rows()
    ]


# What to do about a code whose messages differ row by row (each row's says which rows, how
# many fields): said in general, once; the table has each row's own message.
GENERAL_FIXES = {
    "unknown_column": "columns whose headers are not columns of the demographics file are "
    "ignored; the table names each one and the column it resembles, if any",
    "wrong_field_count": "rows whose number of fields differs from the header's are skipped: "
    "look for a delimiter inside a value that is not quoted, or a missing value",
    "duplicate_row": "rows repeating an earlier row of the same student with the same values: "
    "the copies are ignored",
    "conflicting_duplicate": "the same student appears in several rows with different values: "
    "none of those rows is applied until they agree or all but one are removed",
    "no_matching_student": "rows that match no active student of the district: check each "
    "row's SSID and email against the roster",
    "normalized_value": "codes written in lower case were accepted as upper case",
}


def _fix(
    code: str, column: str | None, values: list[str | None], message: str, codes: tuple[str, ...]
) -> str:
    """The pattern seen and what to do, in one sentence or two."""
    if code == "invalid_ssid":
        return _ssid_fix(values) or message
    if code == "invalid_gender":
        return _words_fix(values, GENDER_WORDS, "gender", " and ".join(codes)) or message
    if code == "invalid_flag" and column:
        return _words_fix(values, FLAG_WORDS, column, "Y and N") or message
    if code == "invalid_email":
        return (
            f"{_some(len(values), 'email')} not a valid address: use an address like "
            "name@school.org, with no spaces, or leave the cell empty"
        )
    return message or GENERAL_FIXES.get(
        code, f"{_some(len(values), 'issue')}: each row's message in the table says what to do"
    )


def _words_fix(values: list[str | None], words: frozenset[str], column: str, use: str) -> str:
    """When most bad cells are words for the codes: which words, and the codes to use."""
    seen = [v for v in values if v is not None and v.strip().casefold() in words]
    if not seen or len(seen) * 2 < len(values):
        return ""
    shown = sorted({v.strip() for v in seen}, key=str.casefold)[:4]
    return (
        f"The file uses words for {column} ({', '.join(shown)}) in {_some(len(seen), 'row')}: "
        f"use the codes {use} instead"
    )


def _ssid_fix(values: list[str | None]) -> str:
    frame = pl.DataFrame({"value": values}, schema={"value": pl.String})
    said = []
    for pattern, _short, fix in SSID_PATTERNS:
        n = frame.filter(pl.col("value").str.contains(pattern)).height
        if n:
            said.append(fix.format(n=_some(n, "SSID")))
    rest = len(values) - sum(
        frame.filter(pl.col("value").str.contains(p)).height for p, _s, _f in SSID_PATTERNS
    )
    if rest:
        said.append(
            f"{_some(rest, 'SSID')} not 10 digits: an SSID is exactly 10 digits (0-9), with no "
            "spaces, dashes or letters"
        )
    return ". ".join(said)


def _some(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def short_message(code: str, value: str | None, message: str) -> str:
    """A table row's message when the advice explains its pattern at length: the short form."""
    if code != "invalid_ssid" or value is None:
        return message
    for pattern, short, _fix in SSID_PATTERNS:
        if re.search(pattern, value):  # the regexes polars ran, on one value
            return f"SSID {short}"
    return message

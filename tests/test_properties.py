"""Properties: any bytes give a report, never an exception; quoted CSV round-trips exactly;
the fast polars reader never disagrees with the strict standard-library reader."""

from __future__ import annotations

import csv
import io
import os

import polars as pl
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from test_codes import assert_well_formed

from schemas.issues import Code
from tasks.read import FIELDS, ROW, _records_fast, _records_strict, read_demographics
from tasks.validate import validate_bytes

PROFILE = settings(
    max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
ALPHABET = 'aZ09 \t,;"\r\né\u2019@.-'
HEADERS = ["SSID", "email", "gender", "race", "english_learner", "notes", "Email", " ssid "]


@PROFILE
@given(st.binary(max_size=600))
@example(b"x\x01\x01\x01\x80")  # starts like a zlib stream: polars once tried to inflate it
def test_any_bytes_give_a_well_formed_report(data: bytes) -> None:
    report = validate_bytes(data, "fuzz.csv").report.to_dict()
    assert_well_formed(report)


csv_like_text = st.lists(st.text(alphabet=ALPHABET, max_size=40), min_size=0, max_size=12).map(
    lambda lines: "\n".join(lines)
)


@PROFILE
@given(
    header=st.lists(st.sampled_from(HEADERS), min_size=1, max_size=5),
    body=csv_like_text,
    bom=st.booleans(),
    crlf=st.booleans(),
)
def test_csv_shaped_text_gives_a_well_formed_report(
    header: list[str], body: str, bom: bool, crlf: bool
) -> None:
    text = ",".join(header) + "\n" + body
    if crlf:
        text = text.replace("\n", "\r\n")
    data = (("\ufeff" if bom else "") + text).encode("utf-8")
    report = validate_bytes(data, "fuzz.csv").report.to_dict()
    assert_well_formed(report)


@PROFILE
@given(
    width=st.integers(min_value=1, max_value=5),
    rows=st.lists(
        st.lists(st.text(alphabet=ALPHABET, max_size=12), min_size=1, max_size=7), max_size=15
    ),
    terminator=st.sampled_from(["\n", "\r\n"]),
)
def test_quoted_csv_round_trips_with_spreadsheet_row_numbers(
    width: int, rows: list[list[str]], terminator: str
) -> None:
    # csv.writer quotes a CR only when CR is part of its line terminator; an unquoted lone CR
    # is a line break to every spreadsheet, so such a file would rightly number rows apart.
    assume(terminator == "\r\n" or not any("\r" in v for r in rows for v in r))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=terminator)
    writer.writerow([f"c{i}" for i in range(width)])
    writer.writerows(rows)
    parsed = read_demographics(out.getvalue().encode(), "rt.csv")
    assert parsed.issues == []
    expected = []
    for number, values in enumerate(rows, start=2):
        stripped = [v.strip(" \t\r\n") or None for v in values[:width]]
        stripped += [None] * (width - len(stripped))
        if any(v is not None for v in stripped):
            expected.append((number, min(len(values), 10**6), *stripped))
    got = parsed.records.select(ROW, FIELDS, *[f"c{i}" for i in range(width)]).rows()
    # An empty row is written as '""' for one column, or as delimiters only: both blank.
    assert [(r[0], *r[2:]) for r in got] == [(e[0], *e[2:]) for e in expected]
    assert [r[1] for r in got] == [e[1] for e in expected]


@PROFILE
@given(text=csv_like_text.filter(lambda t: t.strip() != ""), delimiter=st.sampled_from(",;\t"))
def test_fast_reader_never_disagrees_with_the_strict_reader(text: str, delimiter: str) -> None:
    body = text.encode("utf-8")
    if not body.split(b"\n", 1)[0].strip():
        return  # read_demographics strips leading blank lines before either reader runs
    fast = _records_fast(body, delimiter)
    strict = _records_strict(body, delimiter, header_row=1)
    if fast is None:
        return  # the strict reader decides; nothing to compare
    assert not hasattr(strict, "code"), f"fast accepted what strict rejects: {strict}"
    fast_header, fast_rows, fast_lead = fast
    strict_header, strict_rows, strict_lead = strict
    assert fast_lead == strict_lead == 0
    assert fast_header == strict_header
    columns = [c for c in fast_rows.columns if c != FIELDS]

    def normal(frame: pl.DataFrame) -> list[tuple]:
        trimmed = frame.with_columns(pl.col(c).str.strip_chars().replace("", None) for c in columns)
        blank = pl.all_horizontal(pl.col(columns).is_null()) if columns else pl.lit(True)
        return (
            trimmed.with_columns(pl.when(blank).then(None).otherwise(pl.col(FIELDS)).alias(FIELDS))
            .select(FIELDS, *columns)
            .rows()
        )

    assert normal(fast_rows) == normal(strict_rows)


def test_strict_reader_is_used_when_polars_refuses() -> None:
    parsed = read_demographics(b'SSID,race\n0012345678,"a"b\n', "x.csv")
    assert [i.code for i in parsed.issues] == [Code.MALFORMED_CSV]


def test_ordinary_exports_take_the_fast_reader() -> None:
    # The agreement property above only compares when the fast reader accepts a file; this
    # keeps a change that quietly sent every file to the slow strict reader from passing.
    excel = (
        b"\xef\xbb\xbfSSID,race,ethnicity\r\n"
        b'0012345678,"Asian, White",x\r\n'
        b'0012345679,"two\r\nlines","He said ""hi"""\r\n'
        b",,\r\n\r\n"
        b"0012345670,White\r\n"
    )
    quoted_everything = b'"SSID";"race"\n"0012345678";"White"\n"";""\n'
    for body, delimiter, rows in ((excel, ",", 5), (quoted_everything, ";", 2)):
        fast = _records_fast(body, delimiter)
        assert fast is not None
        header, records, _ = fast
        assert header[0] == "SSID"
        assert records.height == rows
    assert _records_fast(excel, ",")[1][FIELDS].to_list() == [3, 3, 3, 1, 2]

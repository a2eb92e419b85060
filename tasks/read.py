"""Read a demographics CSV into text columns, with spreadsheet row numbers.

The contract asks for things a plain `read_csv` does not give: row numbers as a spreadsheet
shows them (blank lines count, a quoted line break does not start a row), the field count of
every row (a short row must not pass as one with empty cells), and a row number when the file
cannot be parsed. The fast path gets them from polars alone: one pass splits physical lines and
works out, with quote parity, which lines form one record and how many fields each has; a second
pass parses the values. If the two passes disagree, or polars refuses the file, the standard
library's strict CSV reader decides (slower, but exact, and it names the row that breaks).
Nothing is ever parsed as a number.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from schemas.issues import FILE_STOPPING, Code
from schemas.report import FileInfo, Issue
from tasks.errors import DemographicsError

DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab"}
ROW = "__row"
FIELDS = "__fields"
_LINE = "line"
_REGEX_ESCAPES = {",": ",", ";": ";", "\t": "\\t"}
# The standard library refuses fields over 128 KiB by default; a cell that size is already
# an error, but it must be reported as one, not as a broken file.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class SourceUnreadable(DemographicsError):
    """The file could not be opened or read at all (missing, a directory, no permission)."""


@dataclass
class ParsedFile:
    """A file read as text.

    `records` holds one row per non-blank data row: `__row` (the spreadsheet row number),
    `__fields` (how many fields the row had) and `c0`..`c{n-1}`, one per header cell, the
    values trimmed, empty as null. `header` holds the header cells as the file wrote them.
    """

    info: FileInfo
    delimiter: str = ","
    header: list[str] = field(default_factory=list)
    header_row: int = 1
    records: pl.DataFrame = field(default_factory=pl.DataFrame)
    issues: list[Issue] = field(default_factory=list)

    @property
    def stopped(self) -> bool:
        """True when the file could not be read into rows at all."""
        return any(i.code in FILE_STOPPING for i in self.issues)


def read_source(path: Path) -> bytes:
    """Read a local file's bytes, turning OS errors into one clear, value-free message."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SourceUnreadable(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SourceUnreadable(f"{path}: is a directory, not a file") from None
    except PermissionError:
        raise SourceUnreadable(f"{path}: permission denied") from None
    except OSError as exc:
        raise SourceUnreadable(f"{path}: cannot be read ({exc.strerror or 'I/O error'})") from None


def column_key(index: int) -> str:
    return f"c{index}"


def read_demographics(data: bytes, name: str, sha256: str | None = None) -> ParsedFile:
    """Bytes of an uploaded file -> ParsedFile. Never raises for any content. `sha256` is the
    bytes' digest when the caller has it already (a sync checks it before reading)."""
    digest = sha256 or hashlib.sha256(data).hexdigest()
    info = FileInfo(name=name, sha256=digest, bytes=len(data), encoding=None)
    parsed = ParsedFile(info=info)
    text, encoding, problem = _decode(data)
    if problem is not None:
        parsed.issues.append(problem)
        return parsed
    parsed.info = FileInfo(name=name, sha256=info.sha256, bytes=info.bytes, encoding=encoding)
    if encoding == "windows-1252":
        parsed.issues.append(
            Issue(
                Code.NON_UTF8_ENCODING,
                "the file is not UTF-8; it was read as Windows-1252 (what Excel on Windows "
                "writes). To avoid this, save it as 'CSV UTF-8 (Comma delimited)'.",
            )
        )
    # Old Mac exports end lines with CR alone; a file with no LF at all is read that way.
    if b"\n" not in text and b"\r" in text:
        text = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

    skipped, body = _split_leading_blank_lines(text)
    if not body or body.isspace():
        parsed.issues.append(Issue(Code.EMPTY_FILE, _empty_message(data)))
        return parsed
    parsed.header_row = skipped + 1
    newline = body.find(b"\n")
    first_line = body if newline < 0 else body[:newline]
    parsed.delimiter = _detect_delimiter(first_line)
    if parsed.delimiter != ",":
        label = DELIMITER_NAMES[parsed.delimiter]
        parsed.issues.append(
            Issue(
                Code.NON_COMMA_DELIMITER,
                f"the header row has no comma, so the file was read with {label}s as the "
                "delimiter; save it as 'CSV UTF-8 (Comma delimited)' to avoid this",
            )
        )

    table = _records_fast(body, parsed.delimiter)
    if table is None:
        table = _records_strict(body, parsed.delimiter, parsed.header_row)
        if isinstance(table, Issue):
            parsed.issues.append(table)
            return parsed
    header_values, records, lead = table
    parsed.header = header_values
    parsed.header_row += lead
    first_row = parsed.header_row + 1
    rows = pl.int_range(first_row, first_row + records.height, dtype=pl.UInt32, eager=True)
    records = records.with_columns(_align_chunks(rows, records[:, 0]).alias(ROW))
    value_cols = [column_key(i) for i in range(len(header_values))]
    records = _trim(records, value_cols)
    # Blank rows (empty lines, or delimiters only) are skipped; filtering copies every column,
    # so it is done only when there is one.
    blank = records.select(pl.all_horizontal(pl.col(value_cols).is_null()))[:, 0]
    if blank.any():
        records = records.filter(~blank)
    parsed.records = records.select(ROW, FIELDS, *value_cols)
    return parsed


def _trim(records: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """Strip spaces around values; empty becomes null. Only columns that need it are copied:
    stripping allocates a whole new column, and most exports have nothing to strip."""
    if not columns or records.height == 0:
        return records
    padded = records.select(
        (pl.col(c).str.contains(r"^\s|\s$") | (pl.col(c) == "")).any() for c in columns
    ).row(0)
    return records.with_columns(
        pl.col(c).str.strip_chars().replace("", None)
        for c, pad in zip(columns, padded, strict=True)
        if pad
    )


def _empty_message(data: bytes) -> str:
    if not data:
        return "the file is empty (0 bytes)"
    return "the file has no header row: it holds only blank lines"


# The first bytes of a workbook saved by Excel (or LibreOffice): .xlsx/.xlsm/.ods are zips,
# .xls is an OLE2 compound file.
WORKBOOKS = ((b"PK\x03\x04", ".xlsx"), (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", ".xls"))


def _decode(data: bytes) -> tuple[bytes, str | None, Issue | None]:
    """UTF-8 (BOM or not), else Windows-1252; returns UTF-8 bytes (a BOM may lead)."""
    if not data or data.isspace():
        return data, None, Issue(Code.EMPTY_FILE, _empty_message(data))
    # A workbook is told as one, whatever its name: it is a zip (.xlsx) or an OLE2 file (.xls)
    # and holds NUL bytes, so this comes before the checks that would call it binary.
    for signature, kind in WORKBOOKS:
        if data.startswith(signature):
            return data, None, _unreadable(f"it looks like an Excel workbook ({kind}), not a CSV; ")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in data[:4]:
        return data, None, _unreadable("it looks like UTF-16 (Excel's 'Unicode Text'); ")
    if b"\x00" in data:
        return data, None, _unreadable("it holds NUL bytes, so it is not a text file; ")
    # A UTF-8 file keeps its BOM: polars skips it, and not slicing it off saves a copy.
    # (The slice below is short-lived; an ASCII check is far cheaper than decoding.)
    bom = data.startswith(codecs.BOM_UTF8)
    if (data[len(codecs.BOM_UTF8) :] if bom else data).isascii():
        return data, "utf-8", None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        return data, "utf-8", None
    try:
        text = data.removeprefix(codecs.BOM_UTF8).decode("windows-1252")
    except UnicodeDecodeError:
        return data, None, _unreadable("")
    return text.encode("utf-8"), "windows-1252", None


def _unreadable(hint: str) -> Issue:
    return Issue(
        Code.UNREADABLE_ENCODING,
        f"the file is neither UTF-8 nor Windows-1252 text: {hint}"
        "save it as 'CSV UTF-8 (Comma delimited)' and upload it again",
    )


def _split_leading_blank_lines(text: bytes) -> tuple[int, bytes]:
    """Blank lines before the header still count as spreadsheet rows."""
    skipped = 0
    start = len(codecs.BOM_UTF8) if text.startswith(codecs.BOM_UTF8) else 0
    while True:
        end = text.find(b"\n", start)
        line = text[start:] if end < 0 else text[start:end]
        if line.strip() or end < 0:
            # No blank line before the header: hand on the very same bytes, BOM and all.
            return skipped, text if skipped == 0 and line.strip() else text[start:]
        skipped += 1
        start = end + 1


def _detect_delimiter(header_line: bytes) -> str:
    header_line = re.sub(rb'"[^"]*"', b"", header_line)  # a comma inside quotes is no delimiter
    if b"," in header_line:
        return ","
    if b";" in header_line:
        return ";"
    if b"\t" in header_line:
        return "\t"
    return ","


# polars decompresses input that starts like a gzip, zlib or zstd stream; text may start so
# too ("x^..." is a zlib header), and must be read as the text it is.
_COMPRESSED_STARTS = (b"\x1f\x8b", b"x\x01", b"x^", b"x\x9c", b"x\xda", b"\x28\xb5\x2f\xfd")


def _records_fast(body: bytes, delimiter: str) -> tuple[list[str], pl.DataFrame, int] | None:
    """Header and records via polars; None when the strict reader must decide."""
    if body.startswith(_COMPRESSED_STARTS):
        return None
    try:
        lines = pl.read_csv(
            body,
            has_header=False,
            separator="\x00",  # never present: _decode refuses NUL bytes
            quote_char=None,
            infer_schema=False,
            empty_string_is_null=False,
            new_columns=[_LINE],
        )[_LINE].fill_null("")
        field_counts = _field_counts(body, lines, delimiter)
        if field_counts is None:
            return None
        del lines
        width = int(field_counts[0])
        values = pl.read_csv(
            body,
            has_header=False,
            separator=delimiter,
            quote_char='"',
            infer_schema=False,
            truncate_ragged_lines=True,
            schema={column_key(i): pl.String for i in range(width)},
            missing_columns="insert",
        )
    except (pl.exceptions.PolarsError, OSError):  # OSError: polars' own decompression
        return None
    if values.height != field_counts.len() or values.width != width:
        return None
    header = [v if v is not None else "" for v in values.row(0)]
    if width == 1 and not header[0].strip():
        return None  # a quoted blank header: the strict reader decides where the header is
    # Empty and missing cells both come back null; __fields tells a short row from empty cells.
    records = values.slice(1)
    records = records.with_columns(
        _align_chunks(field_counts.slice(1), records[:, 0]).alias(FIELDS)
    )
    return header, records, 0


def _align_chunks(series: pl.Series, like: pl.Series) -> pl.Series:
    """`series` cut into the same chunks as `like` (zero-copy slices).

    polars reads a file in parallel into many chunks; an expression over columns whose chunks
    differ makes polars copy every column into one chunk first (here ~200 MB per million rows).
    """
    lengths = [chunk.len() for chunk in like.get_chunks()]
    if len(lengths) <= 1:
        return series
    series = series.rechunk()
    parts, offset = [], 0
    for length in lengths:
        parts.append(series.slice(offset, length))
        offset += length
    return pl.concat(parts, rechunk=False)


def _field_counts(body: bytes, lines: pl.Series, delimiter: str) -> pl.Series | None:
    """Fields per record, from physical lines and quote parity; None if quoting is unusual."""
    line = pl.col(_LINE)
    quoted_file = b'"' in body
    # One select, so polars runs the scans side by side.
    stats = pl.DataFrame({_LINE: lines}).select(
        line,
        (line.str.count_matches(delimiter, literal=True).cast(pl.UInt32) + 1).alias("fields"),
        # polars drops the CR of each CRLF; a CR left in a line is a lone one.
        (line.str.contains("\r", literal=True) if b"\r" in body else pl.lit(False)).alias("cr"),
        (line.str.count_matches('"', literal=True) if quoted_file else pl.lit(0)).alias("q"),
    )
    if quoted_file:
        ends_quoted = (stats["q"].cum_sum() % 2).cast(pl.Boolean)
        if ends_quoted[-1]:
            return None  # an unterminated quote: the strict reader names its row
        starts = ~ends_quoted.shift(1, fill_value=False)
        if not starts.all():  # a quoted line break: join the lines of each record
            stats = (
                stats.with_columns(id=starts.cast(pl.UInt32).cum_sum())
                .group_by("id", maintain_order=True)
                .agg(line.str.join("\n"), pl.col("q").sum(), pl.col("cr").any())
                .with_columns(
                    fields=line.str.count_matches(delimiter, literal=True).cast(pl.UInt32) + 1
                )
            )
    if stats["cr"].any():
        return None  # a lone CR: spreadsheets and RFC readers differ from polars there
    counts = stats["fields"]
    quoted = stats["q"] > 0
    if not quoted.any():
        return counts
    # Lines with quotes must follow RFC 4180 exactly (a quoted value is a whole field), else
    # polars and the strict reader may read them differently; fields are then counted with
    # the same grammar, so a delimiter inside quotes does not count.
    d = _REGEX_ESCAPES[delimiter]
    value = rf'(?:"(?:[^"]|"")*"|[^"{d}]*)'
    checked = stats.filter(quoted).select(
        (~line.str.contains(rf"^{value}(?:{d}{value})*$")).any().alias("odd"),
        # Every field ends in a delimiter or the end of the line; regex iteration skips an
        # empty match right after a previous one, hence the trailing-delimiter term.
        (
            line.str.count_matches(rf"{value}(?:{d}|$)").cast(pl.UInt32)
            + line.str.ends_with(delimiter).cast(pl.UInt32)
        ).alias("fields"),
    )
    if checked["odd"][0]:
        return None
    return counts.scatter(quoted.arg_true(), checked["fields"])


def _records_strict(
    body: bytes, delimiter: str, header_row: int
) -> tuple[list[str], pl.DataFrame, int] | Issue:
    """The standard library's strict reader: exact RFC 4180, and the row where it breaks."""
    reader = csv.reader(
        io.StringIO(body.decode("utf-8-sig"), newline=""), delimiter=delimiter, strict=True
    )
    rows: list[list[str]] = []
    try:
        rows.extend(reader)
    except csv.Error as exc:
        row = header_row + len(rows)
        return Issue(Code.MALFORMED_CSV, _malformed_message(str(exc)), row=row)
    # A lone CR can hide blank rows before the header from the line-based look-ahead.
    lead = next((i for i, r in enumerate(rows) if len(r) > 1 or (r and r[0].strip())), None)
    if lead is None:
        return Issue(Code.EMPTY_FILE, _empty_message(body))
    header, data = rows[lead], rows[lead + 1 :]
    width = len(header)
    columns: dict[str, list[str | None]] = {
        column_key(i): [r[i] if i < len(r) else None for r in data] for i in range(width)
    }
    frame = pl.DataFrame(
        {**columns, FIELDS: [max(len(r), 1) for r in data]},
        schema={**{k: pl.String for k in columns}, FIELDS: pl.UInt32},
    )
    return header, frame, lead


def _malformed_message(reason: str) -> str:
    """The csv module's reasons, in a data manager's words (they carry no cell values)."""
    if "unexpected end of data" in reason or "EOF" in reason:
        what = 'a quoted value is never closed (a " without its closing ")'
    elif "expected after" in reason:
        what = "a quoted value is followed by more text before the next delimiter"
    elif "field larger than" in reason:
        what = "a value is far too long (probably an unclosed quote)"
    else:
        what = "the row is not valid CSV"
    return (
        f"the file cannot be read as CSV from this row on: {what}. Check the quotes in this "
        "row; if a value contains a quote, write it as two quotes inside a quoted value"
    )

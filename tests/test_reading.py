"""Reading: encodings, delimiters, line endings, quoting and spreadsheet row numbers."""

from __future__ import annotations

import pytest
from conftest import HEADER, codes, issues_with, report_of, row, validate_file

from tasks.read import ROW, column_key, read_demographics


def test_leading_zeros_and_every_value_stay_text() -> None:
    content = f"{HEADER}\n{row(ssid='0000000042', ethnicity='007', race='1e5')}\n"
    result = validate_file(content)
    assert result.report.summary.errors == 0
    first = result.rows.row(0, named=True)
    assert first["SSID"] == "0000000042"
    assert first["ethnicity"] == "007"
    assert first["race"] == "1e5"


def test_utf8_bom_is_not_part_of_the_first_header() -> None:
    content = "\ufeff" + f"{HEADER}\n{row()}\n"
    report = report_of(content)
    assert report["issues"] == []
    assert report["file"]["encoding"] == "utf-8"
    assert report["summary"]["valid_rows"] == 1


def test_windows_1252_is_read_with_a_warning() -> None:
    # "Pérez-Ñúñez" and a right single quote as Excel on Windows writes them.
    race = "Pérez-Ñúñez\u2019s"
    content = f"{HEADER}\n{row(race=race)}\n".encode("cp1252")
    result = validate_file(content)
    report = result.report.to_dict()
    assert report["file"]["encoding"] == "windows-1252"
    assert codes(report) == ["non_utf8_encoding"]
    assert issues_with(report, "non_utf8_encoding")[0]["row"] is None
    assert result.rows["race"][0] == race


def test_bytes_that_are_neither_utf8_nor_cp1252_are_unreadable() -> None:
    # 0x81 and 0x8d are undefined in Windows-1252; the lone 0xff is invalid UTF-8.
    content = f"{HEADER}\n".encode() + b"\x81\x8d\xff,x\n"
    report = report_of(content)
    assert codes(report) == ["unreadable_encoding"]
    assert report["summary"]["rows"] == 0
    assert report["file"]["encoding"] is None


def test_utf16_excel_unicode_text_is_unreadable_with_a_hint() -> None:
    content = f"{HEADER}\n{row()}\n".encode("utf-16")
    report = report_of(content)
    assert codes(report) == ["unreadable_encoding"]
    assert "UTF-16" in report["issues"][0]["message"]


def test_semicolon_delimiter_from_european_excel() -> None:
    content = HEADER.replace(",", ";") + "\r\n" + row().replace(",", ";") + "\r\n"
    result = validate_file(content)
    assert codes(result.report.to_dict()) == ["non_comma_delimiter"]
    assert result.rows["SSID"][0] == "0012345678"
    assert result.rows["race"][0] == "White"


def test_tab_delimiter() -> None:
    values = ["0012345678", "a@b.org", "M", "Not Hispanic", "Asian, White", *"NNNNNNN"]
    content = HEADER.replace(",", "\t") + "\n" + "\t".join(values) + "\n"
    result = validate_file(content)
    assert codes(result.report.to_dict()) == ["non_comma_delimiter"]
    assert result.rows["race"][0] == "Asian, White"


def test_header_with_a_comma_keeps_comma_even_if_semicolons_appear() -> None:
    content = "SSID,race\n0012345678,a;b\n"
    result = validate_file(content)
    assert codes(result.report.to_dict()) == []
    assert result.rows["race"][0] == "a;b"


def test_a_quoted_comma_in_a_semicolon_header_is_not_the_delimiter() -> None:
    content = '"Student, ID";SSID;gender\n"a, b";0012345678;F\n'
    result = validate_file(content)
    assert codes(result.report.to_dict()) == ["non_comma_delimiter", "unknown_column"]
    assert result.rows.row(0, named=True) == {"__row": 2, "SSID": "0012345678", "gender": "F"}


def test_crlf_line_endings_leave_no_carriage_returns_in_values() -> None:
    content = f"{HEADER}\r\n{row()}\r\n{row(ssid='0012345679', email='b@x.org')}\r\n"
    result = validate_file(content)
    assert result.report.summary.errors == 0
    assert result.rows["foster"].to_list() == ["N", "N"]


def test_quoted_fields_with_commas_quotes_and_line_breaks_keep_row_numbers() -> None:
    content = (
        "SSID,race,ethnicity\r\n"
        '0012345678,"Black or African American, White","He said ""hi"""\r\n'
        '0012345679,"two\r\nlines",x\r\n'
        "0012345670,White,bad\r\n"
        'abc,"three\nline\nvalue",y\r\n'
        "42,White,z\r\n"
    )
    result = validate_file(content)
    report = result.report.to_dict()
    # A quoted line break does not start a spreadsheet row: the rows are 2..6.
    assert [(i["row"], i["code"]) for i in report["issues"]] == [
        (5, "invalid_ssid"),
        (6, "invalid_ssid"),
    ]
    assert report["summary"]["rows"] == 5
    race = result.rows.sort("__row")["race"].to_list()
    assert race == ["Black or African American, White", "two\r\nlines", "White"]
    assert result.rows["ethnicity"][0] == 'He said "hi"'


def test_blank_lines_count_as_rows_but_are_skipped() -> None:
    content = f"{HEADER}\n\n{row()}\n   \n\n{row(ssid='123', email='b@x.org')}\n\n"
    report = report_of(content)
    assert report["summary"]["rows"] == 2
    assert [(i["row"], i["code"]) for i in report["issues"]] == [(6, "invalid_ssid")]


def test_rows_of_empty_cells_are_blank_rows() -> None:
    # Excel writes a cleared row as delimiters only.
    content = f"{HEADER}\n,,,,,,,,,,,\n,,\n{row(ssid='12')}\n"
    report = report_of(content)
    assert report["summary"]["rows"] == 1
    assert [(i["row"], i["code"]) for i in report["issues"]] == [(4, "invalid_ssid")]


def test_blank_lines_before_the_header_keep_spreadsheet_numbering() -> None:
    content = f"\n\n{HEADER}\n{row(gender='X')}\n"
    report = report_of(content)
    assert [(i["row"], i["code"]) for i in report["issues"]] == [(4, "invalid_gender")]


def test_spaces_around_values_and_headers_are_removed_silently() -> None:
    content = " SSID , Email ,GENDER\n  0012345678 ,  a@b.org\t,  F \n"
    result = validate_file(content)
    assert result.report.to_dict()["issues"] == []
    assert result.rows.row(0, named=True) == {
        "__row": 2,
        "SSID": "0012345678",
        "email": "a@b.org",
        "gender": "F",
    }


def test_wrong_field_count_short_and_long_rows() -> None:
    content = f"{HEADER}\n{row()}\n0012345679,b@x.org,F\n{row(ssid='0012345670')},extra\n"
    report = report_of(content)
    wrong = issues_with(report, "wrong_field_count")
    assert [(i["row"], i["column"], i["value"]) for i in wrong] == [
        (3, None, None),
        (4, None, None),
    ]
    assert "3 fields" in wrong[0]["message"] and "header has 12" in wrong[0]["message"]
    assert "13 fields" in wrong[1]["message"]
    assert report["summary"]["valid_rows"] == 1


def test_an_empty_trailing_cell_is_not_a_short_row() -> None:
    content = "SSID,gender,race\n0012345678,F,\n0012345679,,\n"
    report = report_of(content)
    assert report["issues"] == []
    assert report["summary"]["valid_rows"] == 2


def test_unterminated_quote_is_malformed_with_its_row() -> None:
    content = f'{HEADER}\n{row()}\n\n0012345679,"b@x.org,F\n{row()}\n{row()}\n'
    report = report_of(content)
    assert codes(report) == ["malformed_csv"]
    assert report["issues"][0]["row"] == 4
    assert report["issues"][0]["column"] is None
    assert "never closed" in report["issues"][0]["message"]
    assert report["summary"]["rows"] == 0


def test_text_after_a_closing_quote_is_malformed() -> None:
    content = 'SSID,race\n0012345678,White\n0012345679,"Asian" x\n'
    report = report_of(content)
    assert codes(report) == ["malformed_csv"]
    assert report["issues"][0]["row"] == 3


def test_a_quote_inside_an_unquoted_value_is_a_literal() -> None:
    content = 'SSID,race\n0012345678,5"10 tall\n0012345679,White\n'
    result = validate_file(content)
    assert result.report.to_dict()["issues"] == []
    assert result.rows["race"].to_list() == ['5"10 tall', "White"]


def test_mac_cr_only_line_endings() -> None:
    content = f"{HEADER}\r{row()}\r{row(ssid='99')}\r"
    report = report_of(content)
    assert [(i["row"], i["code"]) for i in report["issues"]] == [(3, "invalid_ssid")]


def test_file_info_describes_the_bytes() -> None:
    import hashlib

    content = f"{HEADER}\n{row()}\n".encode()
    parsed = read_demographics(content, "x.csv")
    assert parsed.info.sha256 == hashlib.sha256(content).hexdigest()
    assert parsed.info.bytes == len(content)
    assert parsed.info.name == "x.csv"


def test_a_file_that_starts_like_a_compressed_stream_is_read_as_its_text() -> None:
    # "x^" opens a zlib stream, to polars: it must not try to inflate the file.
    parsed = read_demographics(b"x^,SSID,gender\n1,0012345678,F\n2,0023456789,M\n", "odd.csv")
    assert parsed.header == ["x^", "SSID", "gender"]
    assert parsed.records[column_key(1)].to_list() == ["0012345678", "0023456789"]
    assert parsed.records[ROW].to_list() == [2, 3]


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00" + b"\x00" * 64, ".xlsx"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 64, ".xls"),
    ],
)
def test_a_workbook_renamed_csv_is_told_as_a_workbook(data: bytes, kind: str) -> None:
    report = report_of(data)  # named .csv; a workbook holds NUL bytes
    assert codes(report) == ["unreadable_encoding"]
    assert report["issues"][0]["message"] == (
        "the file is neither UTF-8 nor Windows-1252 text: it looks like an Excel workbook "
        f"({kind}), not a CSV; save it as 'CSV UTF-8 (Comma delimited)' and upload it again"
    )


def test_the_json_report_is_exactly_the_report_whatever_the_values() -> None:
    import json

    lines = [
        row(gender="Männlich", race='W\x01hite "x" \\ y'),
        row(ssid="123", email="bad", ethnicity="😀"),
        row(gender="\u2028F"),
    ]
    report = validate_file(f"{HEADER}\n" + "\n".join(lines) + "\n").report
    text = report.to_json()
    assert report.issues.height >= 4
    assert json.loads(text) == report.to_dict()
    assert json.loads(report.to_json(indent=None)) == report.to_dict()
    assert text.splitlines()[-1] == "}" and '  "issues": [' in text

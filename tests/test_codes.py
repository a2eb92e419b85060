"""Every issue code of the contract that a file alone can show, and the report's shape."""

from __future__ import annotations

import pytest
from conftest import HEADER, codes, issues_with, report_of, row, validate_file

from schemas.issues import CODES, Code, Scope

# The contract's table (csv-contract.md, "Issue codes"): code -> (severity, scope).
CONTRACT = {
    "empty_file": ("error", "file"),
    "malformed_csv": ("error", "file"),
    "unreadable_encoding": ("error", "file"),
    "duplicate_column": ("error", "file"),
    "no_identifier_column": ("error", "file"),
    "too_many_errors": ("error", "file"),
    "unknown_column": ("warning", "column"),
    "non_utf8_encoding": ("warning", "file"),
    "no_data_rows": ("warning", "file"),
    "non_comma_delimiter": ("warning", "file"),
    "sync_held": ("warning", "file"),
    "wrong_field_count": ("error", "row"),
    "missing_identifier": ("error", "row"),
    "invalid_ssid": ("error", "cell"),
    "invalid_email": ("error", "cell"),
    "invalid_gender": ("error", "cell"),
    "invalid_flag": ("error", "cell"),
    "value_too_long": ("error", "cell"),
    "normalized_value": ("warning", "cell"),
    "duplicate_row": ("warning", "row"),
    "conflicting_duplicate": ("error", "row"),
    "identifier_conflict": ("error", "row"),
    "no_matching_student": ("warning", "row"),
    "email_mismatch": ("warning", "row"),
}


def test_code_table_matches_the_contract() -> None:
    table = {c.value: (i.severity.value, i.scope.value) for c, i in CODES.items()}
    assert table == CONTRACT
    assert {c.value for c in Code} == set(CONTRACT)


def assert_well_formed(report: dict) -> None:
    """The JSON report's invariants, for any report."""
    assert list(report) == ["report_version", "district", "file", "summary", "advice", "issues"]
    assert report["report_version"] == 1
    assert list(report["file"]) == ["name", "sha256", "bytes", "encoding"]
    summary = report["summary"]
    assert list(summary) == [
        "rows",
        "valid_rows",
        "error_rows",
        "warning_rows",
        "errors",
        "warnings",
    ]
    assert summary["valid_rows"] + summary["error_rows"] == summary["rows"]
    assert summary["errors"] == sum(i["severity"] == "error" for i in report["issues"])
    assert summary["warnings"] == sum(i["severity"] == "warning" for i in report["issues"])
    for issue in report["issues"]:
        assert list(issue) == ["row", "column", "severity", "code", "message", "value"]
        code = Code(issue["code"])
        assert issue["severity"] == code.severity.value
        if code.scope is Scope.FILE and code is not Code.MALFORMED_CSV:
            assert issue["row"] is None
        if code.scope in (Scope.FILE, Scope.ROW):
            assert issue["column"] is None
        if code.scope is Scope.COLUMN:
            assert issue["row"] is None and issue["column"] is not None
        if code.scope is Scope.CELL:
            assert issue["row"] is not None and issue["column"] is not None
            assert issue["value"] is not None
        assert issue["value"] is None or len(issue["value"]) <= 80
        assert issue["message"]


def only(report: dict, code: str) -> dict:
    found = issues_with(report, code)
    assert len(found) == 1, report["issues"]
    assert_well_formed(report)
    return found[0]


def test_empty_file() -> None:
    for content in (b"", b"\n\n  \r\n", b"\xef\xbb\xbf"):
        report = report_of(content)
        assert codes(report) == ["empty_file"]
        assert_well_formed(report)


def test_duplicate_column_after_trimming_and_case() -> None:
    report = report_of(f"SSID,email,Gender, gender \n{row()}\n")
    issue = only(report, "duplicate_column")
    assert "'gender'" in issue["message"] and "columns 3 and 4" in issue["message"]


def test_no_identifier_column() -> None:
    report = report_of("student_id,gender\n0012345678,F\n")
    only(report, "no_identifier_column")
    assert codes(report) == ["no_identifier_column", "unknown_column"]
    assert issues_with(report, "unknown_column")[0]["column"] == "student_id"


def test_headerless_file_is_told_it_needs_a_header() -> None:
    report = report_of(f"{row()}\n{row()}\n")
    issue = only(report, "no_identifier_column")
    assert "looks like data" in issue["message"]
    assert issue["value"] is None


def test_unknown_column_is_named_as_the_file_wrote_it() -> None:
    report = report_of("SSID, Grade Level ,gender\n0012345678,9,F\n")
    issue = only(report, "unknown_column")
    assert issue["column"] == " Grade Level "
    assert issue["row"] is None
    assert report["summary"]["errors"] == 0


def test_columns_without_a_header_are_ignored_not_duplicates() -> None:
    report = report_of("SSID,gender,,\n0012345678,F,,\n")
    assert codes(report) == ["unknown_column", "unknown_column"]
    assert report["summary"]["valid_rows"] == 1


def test_no_data_rows() -> None:
    report = report_of(f"{HEADER}\r\n\r\n")
    only(report, "no_data_rows")
    assert report["summary"]["rows"] == 0
    assert report["summary"]["errors"] == 0


def test_missing_identifier() -> None:
    report = report_of(f"{HEADER}\n{row(ssid='', email='')}\n{row(ssid='', email='b@x.org')}\n")
    issue = only(report, "missing_identifier")
    assert issue["row"] == 2 and issue["column"] is None


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ("12345678", "8 digits, not 10"),
        ("1.23457E+09", "scientific notation"),
        ("1234567890.0", "decimal point"),
        ("12345678901", "11 digits"),
        ("123-456-789", "exactly 10 digits"),
        ("00123A5678", "exactly 10 digits"),
    ],
)
def test_invalid_ssid_says_what_excel_did(value: str, hint: str) -> None:
    report = report_of(f"{HEADER}\n{row(ssid=value)}\n")
    issue = only(report, "invalid_ssid")
    assert (issue["row"], issue["column"], issue["value"]) == (2, "SSID", value)
    assert hint in issue["message"]
    if "Excel" in hint or hint in ("scientific notation", "decimal point") or "not 10" in hint:
        assert "Text" in issue["message"]


@pytest.mark.parametrize(
    "value",
    [
        "jordan",
        "jordan@students",
        "a b@x.org",
        "a@@x.org",
        "@x.org",
        "a@x..org",
        "a.@x.org",
        "a@-x.org",
        "a@x.org.",
        f"{'a' * 250}@x.org",
    ],
)
def test_invalid_email(value: str) -> None:
    report = report_of(f"{HEADER}\n{row(email=value)}\n")
    issue = only(report, "invalid_email")
    assert (issue["row"], issue["column"], issue["value"]) == (2, "email", value[:80])


@pytest.mark.parametrize(
    "value", ["ava.martinez@students.k12.ca.us", "O'Brien+test@sub.example.org", "A@B.CO"]
)
def test_valid_emails(value: str) -> None:
    assert report_of(f"{HEADER}\n{row(email=value)}\n")["issues"] == []


def test_invalid_gender_and_district_codes() -> None:
    content = f"{HEADER}\n{row(gender='Male')}\n{row(ssid='0012345679', gender='x')}\n"
    report = report_of(content)
    assert [(i["row"], i["value"]) for i in issues_with(report, "invalid_gender")] == [
        (2, "Male"),
        (3, "x"),
    ]
    assert issues_with(report, "invalid_gender")[0]["message"] == "gender must be M or F"
    with_x = report_of(content, gender_codes=("M", "F", "X"))
    assert [(i["row"], i["code"]) for i in with_x["issues"]] == [
        (2, "invalid_gender"),
        (3, "normalized_value"),
    ]
    assert issues_with(with_x, "invalid_gender")[0]["message"] == "gender must be M, F or X"


def test_invalid_flag_names_its_column() -> None:
    report = report_of(f"{HEADER}\n{row(flags='Yes,N,1,N,Y,N,')}\n")
    flags = issues_with(report, "invalid_flag")
    assert [(i["column"], i["value"]) for i in flags] == [
        ("english_learner", "Yes"),
        ("gifted_learner", "1"),
    ]
    assert flags[0]["message"] == "english_learner must be Y or N"
    assert_well_formed(report)


def test_value_too_long_counts_characters_after_trimming() -> None:
    ok = "é" * 255
    long = "x" * 256
    report = report_of(f"{HEADER}\n{row(race='  ' + ok + '  ', ethnicity=long)}\n")
    issue = only(report, "value_too_long")
    assert issue["column"] == "ethnicity"
    assert "256 characters" in issue["message"]
    assert issue["value"] == "x" * 80


def test_normalized_value_for_lower_case_codes() -> None:
    result = validate_file(f"{HEADER}\n{row(gender='f', flags='y,n,N,N,N,N,N')}\n")
    report = result.report.to_dict()
    normalized = issues_with(report, "normalized_value")
    assert [(i["column"], i["value"]) for i in normalized] == [
        ("gender", "f"),
        ("english_learner", "y"),
        ("migrant", "n"),
    ]
    assert report["summary"] == {
        "rows": 1,
        "valid_rows": 1,
        "error_rows": 0,
        "warning_rows": 1,
        "errors": 0,
        "warnings": 3,
    }
    stored = result.rows.row(0, named=True)
    assert (stored["gender"], stored["english_learner"], stored["migrant"]) == ("F", "Y", "N")


def test_email_case_is_never_changed_nor_warned() -> None:
    result = validate_file(f"{HEADER}\n{row(email='Ava.Martinez@Example.ORG')}\n")
    assert result.report.to_dict()["issues"] == []
    assert result.rows["email"][0] == "Ava.Martinez@Example.ORG"


def test_duplicate_row_warns_on_later_rows_and_applies_once() -> None:
    same = row()
    content = f"{HEADER}\n{same}\n{row(ssid='0012345679', email='b@x.org')}\n{same}\n{same}\n"
    result = validate_file(content)
    report = result.report.to_dict()
    assert [(i["row"], i["code"]) for i in report["issues"]] == [
        (4, "duplicate_row"),
        (5, "duplicate_row"),
    ]
    assert "row 2" in report["issues"][0]["message"]
    assert report["summary"]["valid_rows"] == 4
    assert sorted(result.rows["__row"].to_list()) == [2, 3]


def test_same_student_by_email_when_no_ssid_ignoring_case() -> None:
    content = (
        f"{HEADER}\n{row(ssid='', email='Kai@x.org')}\n{row(ssid='', email='kai@X.org')}\n"
        f"{row(ssid='0012345678', email='kai@x.org')}\n"
    )
    report = report_of(content)
    # Rows 2 and 3 have no SSID and the same email; row 4 has an SSID: not the same key.
    assert [(i["row"], i["code"]) for i in report["issues"]] == [(3, "duplicate_row")]


def test_identical_values_means_the_values_applied_not_the_identifiers() -> None:
    # Same SSID, another email, same values: the same student twice with the same values.
    content = f"{HEADER}\n{row()}\n{row(email='ava.alt@students.example.org')}\n"
    report = report_of(content)
    assert [(i["row"], i["code"]) for i in report["issues"]] == [(3, "duplicate_row")]
    # A file of identifiers only: every repeat is identical.
    report = report_of("SSID,email\n0012345678,a@x.org\n0012345678,b@x.org\n")
    assert [(i["row"], i["code"]) for i in report["issues"]] == [(3, "duplicate_row")]


def test_conflicting_duplicate_marks_every_row_and_applies_none() -> None:
    content = (
        f"{HEADER}\n{row()}\n{row(ssid='0012345679', email='b@x.org')}\n{row()}\n"
        f"{row(gender='M')}\n"
    )
    result = validate_file(content)
    report = result.report.to_dict()
    conflicts = issues_with(report, "conflicting_duplicate")
    assert [i["row"] for i in conflicts] == [2, 4, 5]
    assert "rows 2, 4, 5" in conflicts[0]["message"]
    assert codes(report) == ["conflicting_duplicate"] * 3
    assert result.rows["__row"].to_list() == [3]
    assert report["summary"]["error_rows"] == 3


def test_a_row_with_an_invalid_ssid_is_not_a_duplicate_of_anything() -> None:
    content = f"{HEADER}\n{row(ssid='123')}\n{row(ssid='123', gender='M')}\n"
    report = report_of(content)
    assert codes(report) == ["invalid_ssid", "invalid_ssid"]


def test_a_row_with_any_error_is_skipped_whole() -> None:
    content = f"{HEADER}\n{row(gender='Q')}\n{row(ssid='0012345679', email='b@x.org')}\n"
    result = validate_file(content)
    assert result.rows["__row"].to_list() == [3]


def test_messages_never_quote_student_values() -> None:
    marker = "ZQXJ"
    content = (
        f"{HEADER}\n"
        f"{row(ssid='12' + marker, email=marker + '@', gender=marker, race=marker * 70)}\n"
        f"{row(flags=marker + ',N,N,N,N,N,N')}\n{row(ssid='', email='')},{marker}\n"
    )
    report = report_of(content)
    assert len(report["issues"]) >= 5
    for issue in report["issues"]:
        assert marker not in issue["message"]
    assert any(marker in (i["value"] or "") for i in report["issues"])


def test_issues_are_ordered_by_row_then_contract_column_order() -> None:
    content = "foster,gender,SSID\nx,Q,12\nN,F,0012345678\n"
    report = report_of(content)
    assert [(i["row"], i["column"]) for i in report["issues"]] == [
        (2, "SSID"),
        (2, "gender"),
        (2, "foster"),
    ]


def test_summary_counts_rows_with_warnings_and_errors() -> None:
    content = (
        f"{HEADER},notes\n"
        f"{row(gender='f')},a\n"  # warning only
        f"{row(ssid='1', email='b@x.org', gender='m')},\n"  # error + warning
        f"{row(ssid='0012345670', email='c@x.org')},\n"  # clean
    )
    report = report_of(content)
    assert report["summary"] == {
        "rows": 3,
        "valid_rows": 2,
        "error_rows": 1,
        "warning_rows": 2,
        "errors": 1,
        "warnings": 3,
    }
    assert_well_formed(report)


def test_file_level_error_lets_nothing_through_but_still_reports_rows() -> None:
    content = "SSID,gender,GENDER\n0012345678,F,F\n12,M,M\n"
    result = validate_file(content)
    report = result.report.to_dict()
    assert codes(report) == ["duplicate_column", "invalid_ssid"]
    assert result.rows.height == 0
    assert result.report.exit_code == 1


def test_an_unknown_header_is_told_the_column_it_resembles_and_the_accepted_headers_once() -> None:
    report = report_of(
        "Student ID,Email Address,English Learner,Special Ed,Grade\n0012345678,a@b.org,Y,N,9\n"
    )
    messages = [i["message"] for i in issues_with(report, "unknown_column")]
    accepted = (
        ". The accepted headers are SSID, email, gender, ethnicity, race, english_learner, "
        "migrant, gifted_learner, special_ed, sed, homeless, foster"
    )
    told = {
        n: f"column {n}'s header is not a column of the demographics file; it resembles "
        f"{meant}: if the column holds {meant}, name its header {meant} (headers are "
        "matched by name); the column is ignored"
        for n, meant in ((1, "SSID"), (2, "email"), (3, "english_learner"), (4, "special_ed"))
    }
    assert messages == [  # shown by header: the first one shown lists the accepted headers
        told[2] + accepted,  # Email Address
        told[3],  # English Learner
        "column 5's header is not a column of the demographics file; the column is ignored",
        told[4],  # Special Ed
        told[1],  # Student ID
    ]
    # Not accepted silently: nothing identifies a student, so the file stops.
    assert "no_identifier_column" in codes(report)


def test_advice_groups_the_issues_by_code_and_column_with_the_fix_for_the_pattern_seen() -> None:
    rows = [
        f"{123456780 + n},s{n}@x.org,{'Male' if n % 2 else 'Female'},x,y,"
        f"{'Yes' if n % 3 else 'No'},N,N,N,N,N,N"
        for n in range(12)
    ]
    rows.append("1.23457E+09,bad,Q,x,y,N,N,N,N,N,N,N")
    report = report_of("\n".join([HEADER, *rows]) + "\n")

    assert [(a["code"], a["column"], a["count"]) for a in report["advice"]] == [
        ("invalid_ssid", "SSID", 13),
        ("invalid_gender", "gender", 13),
        ("invalid_flag", "english_learner", 12),
        ("invalid_email", "email", 1),
    ]
    ssid, gender, flag, email = report["advice"]
    assert ssid["rows"] == list(range(2, 12))  # the first ten
    assert ssid["fix"].startswith(
        "12 SSIDs lost leading zeros (Excel read the column as numbers): pad them back to 10 "
        'digits (in Excel: =TEXT(A2,"0000000000")'
    )
    assert ". 1 SSID in scientific notation (like 1.23457E+09)" in ssid["fix"]
    assert gender["fix"] == (
        "The file uses words for gender (Female, Male) in 12 rows: use the codes M and F instead"
    )
    assert flag["fix"] == (
        "The file uses words for english_learner (No, Yes) in 12 rows: use the codes Y and N "
        "instead"
    )
    assert email["fix"].startswith("1 email not a valid address")
    assert "Q" not in gender["fix"]  # a value is quoted only when it is a known word


def test_advice_puts_errors_first_names_unknown_columns_once_and_says_row_messages_in_general() -> (
    None
):
    extra = [f"extra{n}" for n in range(14)]
    header = ",".join([HEADER, *extra])
    rows = [
        ",".join(["123456789,a@b.org,F,x,y,N,N,N,N,N,N,N", *[""] * 14]),
        "0012345678,c@b.org,F",  # too few fields
        ",".join(["0012345679,d@b.org,F,x,y,N,N,N,N,N,N,N", *[""] * 15]),  # too many
    ]
    advice = report_of("\n".join([header, *rows]) + "\n")["advice"]

    assert [(a["code"], a["column"], a["count"]) for a in advice] == [
        ("invalid_ssid", "SSID", 1),
        ("wrong_field_count", None, 2),
        ("unknown_column", None, 14),  # one entry for all of them, after the errors
    ]
    assert advice[1]["fix"] == (  # the rows' messages differ (3 fields, 28): said in general
        "rows whose number of fields differs from the header's are skipped: look for a "
        "delimiter inside a value that is not quoted, or a missing value"
    )
    assert advice[2]["fix"].startswith("columns whose headers are not columns")

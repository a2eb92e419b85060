"""The sync's decisions as pure functions: the safeguards (`decide`) and the matching and diff
(`match_file`), called on frames and counts, with no database."""

from __future__ import annotations

import polars as pl
import pytest
from conftest import HEADER

from schemas.issues import Code
from schemas.report import ISSUE_SCHEMA, FileInfo, Report, Summary
from tasks.match import Matched, match_file, parse_stream, parse_students
from tasks.sync import Decision, decide
from tasks.validate import validate_bytes, with_issues

# The district defaults (sql/001_core.sql): more than 20 % of rows with errors rejects a file,
# changing more than 25 % of the students with values on record holds it.
LIMITS = {"error_limit": 0.20, "hold_limit": 0.25}


def report(rows: int = 4, error_rows: int = 0) -> Report:
    return Report(
        file=FileInfo(name="upload.csv", sha256="0" * 64, bytes=100, encoding="utf-8"),
        summary=Summary(
            rows=rows,
            valid_rows=rows - error_rows,
            error_rows=error_rows,
            warning_rows=0,
            errors=error_rows,
            warnings=0,
        ),
        issues=pl.DataFrame(schema=ISSUE_SCHEMA),
    )


def matched(
    matched: int = 4,
    updated: int = 1,
    overwriting: int = 0,
    on_record: int = 4,
    values_changed: int = 1,
    unmatched: int = 0,
) -> Matched:
    return Matched(
        issues=pl.DataFrame(schema=ISSUE_SCHEMA),
        matched=matched,
        unmatched=unmatched,
        updated=updated,
        overwriting=overwriting,
        on_record=on_record,
        values_changed=values_changed,
        delta=pl.DataFrame(),
        history=pl.DataFrame(),
    )


def sync(
    the_report: Report | None = None, the_match: Matched | None = None, **kwargs: object
) -> Decision:
    args = {**LIMITS, "mode": "sync", **kwargs}
    return decide(the_report or report(), the_match or matched(), **args)  # type: ignore[arg-type]


# --- the error limit ---------------------------------------------------------------------


def test_errors_up_to_the_limit_are_applied_above_it_the_file_is_rejected_whole() -> None:
    at = sync(report(rows=5, error_rows=1))  # 20 % is not above 20 %
    assert (at.action, at.block.status) == ("apply", "succeeded")
    above = sync(report(rows=9, error_rows=2), matched(matched=7, updated=3))  # 22.2 %
    assert (above.action, above.reason, above.block.status) == (
        "reject",
        "too_many_errors",
        "rejected",
    )
    assert above.message == "the file was rejected: too many rows have errors; nothing was applied"
    assert above.issue is not None and above.issue[0] is Code.TOO_MANY_ERRORS
    assert above.issue[1].startswith(
        "2 of 9 rows (22.2 %) have errors, more than the district's limit of 20 %;"
    )
    # A rejected file changes no one, and its counts say so; it changes no values either.
    block = above.block
    assert (block.matched, block.updated, block.unchanged) == (7, 0, 0)
    assert above.values_changed == 0


def test_the_error_limit_is_the_districts() -> None:
    strict = sync(report(rows=5, error_rows=1), error_limit=0.0, hold_limit=0.25)
    assert strict.action == "reject"
    lenient = sync(report(rows=5, error_rows=5), error_limit=1.0, hold_limit=0.25)
    assert lenient.action == "apply"


def test_an_empty_file_has_no_error_share() -> None:
    assert sync(report(rows=0), matched(matched=0, updated=0, values_changed=0)).action == "apply"


# --- the hold limit ----------------------------------------------------------------------


def test_overwriting_up_to_the_hold_limit_is_applied_above_it_the_sync_is_held() -> None:
    at = sync(the_match=matched(updated=1, overwriting=1, on_record=4))  # 25 %
    assert at.action == "apply"
    above = sync(the_match=matched(updated=2, overwriting=2, on_record=4, values_changed=3))
    assert (above.action, above.reason, above.block.status) == ("hold", "over_hold_limit", "held")
    assert above.message == (
        "the sync is held for approval: it would change too many values on record"
    )
    assert above.issue is not None and above.issue[0] is Code.SYNC_HELD
    assert above.issue[1].startswith(
        "the file would change values on record for 2 of the 4 students with values on record "
        "(50 %), more than the district's hold limit of 25 %; nothing was applied."
    )
    # A held sync reports what it would change, for the data manager who reviews it.
    assert (above.block.updated, above.block.unchanged, above.values_changed) == (2, 2, 3)


def test_filling_empty_values_is_never_held() -> None:
    first_upload = matched(updated=4, overwriting=0, on_record=0, values_changed=12)
    assert sync(the_match=first_upload, error_limit=0.2, hold_limit=0.0).action == "apply"


def test_errors_are_judged_before_the_hold() -> None:
    both = sync(report(rows=4, error_rows=2), matched(updated=2, overwriting=2))
    assert both.reason == "too_many_errors"


# --- approval of a held file ---------------------------------------------------------------

SWEEPING = {"the_match": matched(updated=2, overwriting=2, on_record=4, values_changed=2)}


def test_approving_a_file_held_before_applies_it_and_resolves_every_hold() -> None:
    out = sync(**SWEEPING, approve=True, held_runs=[9, 4])  # newest first
    assert (out.action, out.reason, out.block.status) == ("apply", "approved", "succeeded")
    assert out.message == "applied: 2 values changed for 2 students (approving held run 9)"
    assert out.held_runs == (9, 4) and out.approves_run_id == 9
    assert out.issue is None


def test_approving_a_file_never_held_holds_it_and_says_why() -> None:
    out = sync(**SWEEPING, approve=True)
    assert out.action == "hold"
    assert out.issue is not None
    assert out.issue[1].endswith(
        "or discards it (--approve applies only to a file that was held before; this is the "
        "first time this file is held)"
    )
    plain = sync(**SWEEPING)
    assert plain.issue is not None and plain.issue[1].endswith("or discards it")


def test_held_runs_without_approve_still_hold() -> None:
    assert sync(**SWEEPING, held_runs=[9]).action == "hold"


def test_approve_on_a_file_within_the_limits_approves_nothing() -> None:
    out = sync(approve=True, held_runs=[9])
    assert (out.action, out.reason, out.held_runs, out.approves_run_id) == (
        "apply",
        "within_limits",
        (),
        None,
    )
    assert "approving" not in out.message


# --- preview, nothing to do, a file-level error ------------------------------------------


def test_a_preview_says_what_a_sync_would_do_and_writes_nothing() -> None:
    out = sync(the_match=matched(updated=3, values_changed=5), mode="preview")
    assert (out.action, out.verdict, out.block.status) == ("preview", "apply", "preview")
    assert (
        out.message == "preview: a sync would change 5 values for 3 students; nothing was written"
    )
    assert (out.block.updated, out.block.unchanged) == (3, 1)
    rejected = sync(report(rows=4, error_rows=2), mode="preview")
    assert (rejected.action, rejected.verdict, rejected.block.status) == (
        "preview",
        "reject",
        "preview",
    )
    assert rejected.issue is not None and rejected.issue[0] is Code.TOO_MANY_ERRORS


def test_a_preview_of_a_held_file_is_held_even_when_approving() -> None:
    # Approval is a sync's; a preview does not look up earlier holds nor hint about them.
    out = sync(**SWEEPING, mode="preview", approve=True, held_runs=[9])
    assert (out.verdict, out.block.status, out.held_runs) == ("hold", "preview", ())
    assert out.issue is not None and out.issue[1].endswith("or discards it")


def test_a_file_already_applied_changes_nothing_and_comes_before_the_safeguards() -> None:
    busy = matched(matched=3, updated=2, overwriting=3, on_record=3, values_changed=4)
    out = sync(report(rows=4, error_rows=2), busy, same_as=17)
    assert (out.action, out.reason, out.block.status) == (
        "nothing_to_do",
        "already_applied",
        "succeeded",
    )
    assert out.message == (
        "this file (same SHA-256) was already applied by run 17; nothing was changed"
    )
    assert out.same_as_run_id == 17 and out.values_changed == 0 and out.issue is None
    assert (out.block.matched, out.block.updated, out.block.unchanged) == (3, 0, 3)
    preview = sync(the_match=busy, same_as=17, mode="preview")
    assert preview.message.endswith("already applied by run 17; nothing would change")


@pytest.mark.parametrize("mode", ["sync", "preview"])
def test_a_file_level_error_is_rejected_with_no_counts(mode: str) -> None:
    out = decide(report(), None, **LIMITS, mode=mode, same_as=3)  # type: ignore[arg-type]
    assert (out.verdict, out.reason) == ("reject", "file_error")
    assert out.block.status == ("rejected" if mode == "sync" else "preview")
    assert out.message == (  # a preview speaks of what a sync would do
        "the file has a file-level error and was not applied; fix it and upload it again"
        if mode == "sync"
        else "a sync would not apply the file: it has a file-level error; fix it and upload it "
        "again"
    )
    block = out.block
    assert (block.matched, block.updated, block.unchanged, block.unmatched) == (0, 0, 0, 0)


# --- matching and the diff, on frames ----------------------------------------------------


def roster(*students: tuple[int, str, str, str]) -> pl.DataFrame:
    """(student_id, ssid, email, stored gender) -> the frame `read_students` gives."""
    lines = [
        f"{sid},{ssid},{email},{'t' if gender else 'f'},{gender},,,,,,,,,\n"
        for sid, ssid, email, gender in students
    ]
    return parse_students("".join(lines).encode())


STUDENTS = roster(
    (1, "0000000001", "ana@x.org", "F"),
    (2, "0000000002", "ben@x.org", ""),
    (3, "0000000003", "shared@x.org", ""),
    (4, "0000000004", "shared@x.org", "M"),
)


def match(*rows: str) -> tuple[Report, Matched]:
    data = (HEADER + "\n" + "".join(r + ",,,,,,,\n" for r in rows)).encode()
    validation = validate_bytes(data, "upload.csv", judge_duplicates=False)
    assert validation.normalized is not None
    result = match_file(validation.normalized, validation.report.issues, STUDENTS)
    return with_issues(validation.report, [result.issues]), result


def codes(result: Matched) -> dict[int, str]:
    return dict(result.issues.select("row", "code").iter_rows())


def test_matching_by_ssid_then_by_email_ignoring_case() -> None:
    _, result = match(
        "0000000002,ben@x.org,M,,",  # by SSID
        ",ANA@X.ORG,M,,",  # by email, any case
        "0000000009,,M,,",  # unknown SSID
        ",shared@x.org,M,,",  # an email two students share
        "0000000001,ben@x.org,M,,",  # SSID and email of two students
        "0000000003,new@x.org,M,,",  # an email on record for no one: applied by SSID
    )
    assert codes(result) == {
        4: "no_matching_student",
        5: "no_matching_student",
        6: "identifier_conflict",
        7: "email_mismatch",
    }
    assert (result.matched, result.unmatched) == (3, 2)
    assert sorted(result.delta["student_id"].to_list()) == [1, 2, 3]
    shared = result.issues.filter(pl.col("row") == 5)["message"][0]
    assert shared.startswith("2 active students share this email")


def test_the_diff_writes_only_what_changes_and_counts_what_it_overwrites() -> None:
    _, result = match(
        "0000000001,,F,,",  # the stored value: unchanged
        "0000000002,,M,,",  # fills an empty value
        "0000000004,,F,,",  # overwrites a stored value
        "0000000003,,,,",  # an empty cell changes nothing
    )
    assert (result.matched, result.updated, result.values_changed) == (4, 2, 2)
    assert (result.overwriting, result.on_record) == (1, 2)
    history = result.history.sort("student_id").select("student_id", "old_value", "new_value")
    assert history.rows() == [(2, None, "M"), (4, "M", "F")]


def test_the_same_student_twice_applies_identical_rows_once_and_differing_ones_never() -> None:
    _, same = match("0000000002,,M,,", ",ben@x.org,M,,")
    assert codes(same) == {3: "duplicate_row"}
    assert (same.matched, same.updated) == (1, 1)
    _, differing = match("0000000002,,M,,", ",ben@x.org,F,,")
    assert codes(differing) == {2: "conflicting_duplicate", 3: "conflicting_duplicate"}
    assert (differing.matched, differing.updated) == (0, 0)


def test_matching_feeds_the_hold() -> None:
    checked, result = match("0000000001,,M,,", "0000000004,,F,,")  # both overwrite: 2 of 2
    out = decide(checked, result, **LIMITS, mode="sync")  # type: ignore[arg-type]
    assert (out.action, out.block.updated) == ("hold", 2)


def test_artifact_keys_are_what_prefect_accepts_one_per_district() -> None:
    from tasks.process.outcome import artifact_key

    assert artifact_key("maple-valley") == "demographics-maple-valley"
    assert artifact_key("North_County.2") == "demographics-north-county-2"


def test_a_run_is_named_for_its_district_and_file_never_for_a_typed_email() -> None:
    from tasks.process import district_run_name, file_run_name

    assert district_run_name("maple-valley") == "maple-valley"
    assert file_run_name("maple-valley", "fall 2026.csv") == "maple-valley/fall 2026.csv"
    typed = "ana.student@students.example.org"  # typed into the run form as the district
    assert typed not in district_run_name(typed) + file_run_name(typed, "a.csv")
    assert file_run_name("d1", "bad\x1bname.csv") == "d1/bad\\x1bname.csv"  # escaped


def test_a_preview_speaks_of_what_a_sync_would_do() -> None:
    rejected = sync(report(rows=9, error_rows=2), matched(matched=7, updated=3), mode="preview")
    assert rejected.message == "a sync would reject the file: too many rows have errors"
    held = sync(
        the_match=matched(updated=2, overwriting=2, on_record=4, values_changed=3), mode="preview"
    )
    assert held.message == (
        "a sync would be held for approval: it would change too many values on record"
    )
    assert "nothing was applied" not in rejected.message + held.message


def test_stored_flags_and_the_files_y_and_n_are_the_same_values() -> None:
    """The roster's COPY gives stored booleans as t/f; a file's Y/N for them change nothing,
    the opposite letters change them, and the history speaks Y/N."""
    stored = parse_students(b"1,0000000001,ana@x.org,t,,,,t,f,,,,,\n")

    def diff(flags: str) -> Matched:
        data = f"{HEADER}\n0000000001,,,,,{flags},,,,,\n".encode()
        validation = validate_bytes(data, "upload.csv", judge_duplicates=False)
        assert validation.normalized is not None
        return match_file(validation.normalized, validation.report.issues, stored)

    same = diff("y,N")
    assert (same.matched, same.updated, same.values_changed) == (1, 0, 0)
    flipped = diff("N,Y")
    assert flipped.updated == 1
    assert sorted(flipped.history.select("field", "old_value", "new_value").rows()) == [
        ("english_learner", "Y", "N"),
        ("migrant", "N", "Y"),
    ]
    assert flipped.delta.select("english_learner", "migrant").rows() == [("f", "t")]


def test_the_roster_is_parsed_in_slices_that_never_cut_a_quoted_value() -> None:
    """Slices end after whole CSV records: a quoted email holding a comma, a quote or a line
    break is never cut, and the slices make exactly the frame one parse gives."""
    lines = [
        f'{i},{i:010d},"a{i},""q""\nb@x.org",t,F,,,t,,,,,,f\n'
        if i % 3 == 0
        else f"{i},{i:010d},s{i}@x.org,f,,,,,,,,,,\n"
        for i in range(1, 400)
    ]
    data = "".join(lines).encode()
    chunks = [data[i : i + 7] for i in range(0, len(data), 7)]
    whole = parse_students(data)
    sliced = parse_stream(chunks, slice_bytes=64)
    assert sliced.equals(whole)
    assert sliced.height == 399 and sliced["email"][2] == 'a3,"q"\nb@x.org'

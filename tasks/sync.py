"""Preview or sync one demographics file for one district: the write path as one unit.

Everything a sync decides (matching, duplicates, safeguards) and writes (values, history, the
run record) happens in one transaction under the district's lock, so two syncs of a district
never interleave and a failure leaves the database exactly as it was. A preview runs the same
steps in a read-only transaction and writes nothing, not even a run record.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal

import polars as pl
import psycopg

from schemas.issues import Code
from schemas.report import ISSUE_SCHEMA, Report, SyncBlock
from tasks import access, store
from tasks.apply import apply_changes
from tasks.db import connect, describe_error
from tasks.match import Matched, copy_students, match_file, parse_students
from tasks.validate import Validation, validate_bytes, with_issues

Mode = Literal["preview", "sync"]


@dataclass
class SyncOutcome:
    """The report (with its `sync` block) and what a person should be told in one sentence."""

    report: Report
    message: str
    run_id: int | None = None
    same_as_run_id: int | None = None
    values_changed: int = 0

    @property
    def status(self) -> str:
        assert self.report.sync is not None
        return self.report.sync.status


def default_requester() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _file_issue(code: Code, message: str) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "row": None,
                "column": None,
                "severity": code.severity.value,
                "code": code.value,
                "message": message,
                "value": None,
            }
        ],
        schema=ISSUE_SCHEMA,
    )


def _percent(share: float) -> str:
    return f"{share * 100:.1f}".rstrip("0").rstrip(".") + " %"


def run_file(
    url: str,
    district_code: str,
    data: bytes,
    file_name: str,
    mode: Mode = "sync",
    approve: bool = False,
    requested_by: str | None = None,
    lock_wait_seconds: float = 60.0,
    approved_by: str | None = None,
    via: str | None = None,
) -> SyncOutcome:
    """Preview or sync `data` (a file's bytes) for a district. Raises only for a district that
    does not exist, a district busy beyond the wait, a database that cannot be reached, or an
    approval by someone who is not a data manager of the district; a failure while applying
    is recorded as a `failed` run and returned as such.

    `approve` needs `approved_by`, a data manager's email: the approval is recorded (who,
    when, `via` which command or flow run) in the transaction that applies the held file, so
    an approval that applies nothing leaves no record of one."""
    requested_by = requested_by or default_requester()
    started_at = datetime.now(UTC)
    if approve and not approved_by:
        raise access.NotAManager("approving a held sync needs the approving data manager")
    with connect(url, autocommit=True) as conn:
        district = store.get_district(conn, district_code)
        if approve and approved_by:
            access.require_manager(conn, district.code, approved_by)
        validated: list[Validation] = []

        def validate() -> Validation:
            if not validated:
                validated.append(
                    validate_bytes(
                        data,
                        file_name,
                        gender_codes=district.gender_codes,
                        district=district.code,
                        judge_duplicates=False,
                    )
                )
            return validated[0]

        try:
            return _decide_and_apply(
                conn,
                district,
                validate,
                mode,
                approve,
                requested_by,
                started_at,
                lock_wait_seconds,
                (approved_by, via),
            )
        except (store.DistrictBusy, store.UnknownDistrict, access.AccessError):
            raise
        except _Failure as failure:
            cause = failure.__cause__ or failure
            return _failed(url, district, validate().report, cause, started_at, requested_by)
        except psycopg.Error as exc:
            if mode == "preview":
                raise
            return _failed(url, district, validate().report, exc, started_at, requested_by)


class _Failure(Exception):
    """Applying failed; the transaction was rolled back."""


def _with_block(
    report: Report, status: str, matched: Matched | None = None, updated: int = 0
) -> Report:
    """The report with its `sync` block: `updated` students change (or would, for a preview
    or a hold); the rest of the matched students are unchanged. The run id comes later."""
    block = SyncBlock(
        run_id=None,
        status=status,  # type: ignore[arg-type]
        matched=0 if matched is None else matched.matched,
        updated=updated,
        unchanged=0 if matched is None or status == "rejected" else matched.matched - updated,
        unmatched=0 if matched is None else matched.unmatched,
    )
    return replace(report, sync=block)


def _decide_and_apply(
    conn: psycopg.Connection,
    district: store.District,
    validate: Callable[[], Validation],
    mode: Mode,
    approve: bool,
    requested_by: str,
    started_at: datetime,
    lock_wait_seconds: float,
    approval: tuple[str | None, str | None] = (None, None),
) -> SyncOutcome:
    with conn.transaction(), conn.cursor() as cur:
        if mode == "preview":
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        else:
            store.lock_district(cur, district.district_id, district.code, lock_wait_seconds)
        # The roster is fetched while the file is validated: the server formats a million
        # rows while polars checks the file.
        with ThreadPoolExecutor(max_workers=1) as pool:
            fetching = pool.submit(copy_students, conn, district.district_id)
            validation = validate()
            students = parse_students(fetching.result())
        report = validation.report
        if report.stopped or validation.normalized is None:
            outcome = SyncOutcome(
                _with_block(report, "preview" if mode == "preview" else "rejected"),
                "the file has a file-level error and was not applied; fix it and upload it again",
            )
            if mode == "sync":
                outcome.run_id = _record(cur, district, outcome, started_at, requested_by, None)
                outcome.report = _set_run_id(outcome.report, outcome.run_id)
            return outcome
        normalized = validation.normalized
        sha = report.file.sha256
        matched = match_file(normalized, report.issues, students)
        report = with_issues(report, [matched.issues])
        summary = report.summary
        extra: list[pl.DataFrame] = []

        same_as = _applied_before(cur, district.district_id, sha)
        if same_as is not None:
            said = "would change" if mode == "preview" else "was changed"
            outcome = SyncOutcome(
                _with_block(report, "preview" if mode == "preview" else "succeeded", matched),
                f"this file (same SHA-256) was already applied by run {same_as}; nothing {said}",
                same_as_run_id=same_as,
            )
            if mode == "preview":
                return outcome
            outcome.run_id = _record(cur, district, outcome, started_at, requested_by, matched)
            outcome.report = _set_run_id(outcome.report, outcome.run_id)
            return outcome

        share = summary.error_rows / summary.rows if summary.rows else 0.0
        if share > district.error_limit:
            extra.append(
                _file_issue(
                    Code.TOO_MANY_ERRORS,
                    f"{summary.error_rows} of {summary.rows} rows ({_percent(share)}) have "
                    f"errors, more than the district's limit of {_percent(district.error_limit)}"
                    "; the file is rejected whole and nothing was applied. Fix the errors "
                    "listed and upload it again",
                )
            )
            report = with_issues(report, extra)
            status = "preview" if mode == "preview" else "rejected"
            outcome = SyncOutcome(
                _with_block(report, status, matched),
                "the file was rejected: too many rows have errors; nothing was applied",
            )
            if mode == "sync":
                outcome.run_id = _record(cur, district, outcome, started_at, requested_by, matched)
                outcome.report = _set_run_id(outcome.report, outcome.run_id)
            return outcome

        hold_share = matched.overwriting / matched.on_record if matched.on_record else 0.0
        held_runs: list[int] = []
        if hold_share > district.hold_limit:
            held_runs = [] if mode == "preview" else _held_runs(cur, district.district_id, sha)
            if not (approve and held_runs):
                hint = (
                    " (--approve applies only to a file that was held before; this is the "
                    "first time this file is held)"
                    if approve and mode == "sync"
                    else ""
                )
                extra.append(
                    _file_issue(
                        Code.SYNC_HELD,
                        f"the file would change values on record for {matched.overwriting} of "
                        f"the {matched.on_record} students with values on record "
                        f"({_percent(hold_share)}), more than the district's hold limit of "
                        f"{_percent(district.hold_limit)}; nothing was applied. A data "
                        "manager reviews this report, then approves the same file (demographics "
                        "sync FILE --district CODE --approve --as EMAIL, or the "
                        "approve-held-sync deployment) or discards it" + hint,
                    )
                )
                report = with_issues(report, extra)
                status = "preview" if mode == "preview" else "held"
                outcome = SyncOutcome(
                    _with_block(report, status, matched, matched.updated),
                    "the sync is held for approval: it would change too many values on record",
                    values_changed=matched.values_changed,
                )
                if mode == "sync":
                    outcome.run_id = _record(
                        cur, district, outcome, started_at, requested_by, matched
                    )
                    outcome.report = _set_run_id(outcome.report, outcome.run_id)
                return outcome

        if mode == "preview":
            return SyncOutcome(
                _with_block(report, "preview", matched, matched.updated),
                f"preview: a sync would change {matched.values_changed} values for "
                f"{matched.updated} students; nothing was written",
                values_changed=matched.values_changed,
            )

        if held_runs:
            approved_by, via = approval
            assert approved_by is not None
            requested_by = access.record_manager_act(
                conn,
                district.code,
                approved_by,
                "approve_held_sync",
                {"run_id": held_runs[0]},
                via=via,
            )
        outcome = SyncOutcome(
            _with_block(report, "succeeded", matched, matched.updated),
            f"applied: {matched.values_changed} values changed for {matched.updated} students"
            + (f" (approving held run {held_runs[0]})" if held_runs else ""),
            values_changed=matched.values_changed,
        )
        run_id = _record(
            cur,
            district,
            outcome,
            started_at,
            requested_by,
            matched,
            approves_run_id=held_runs[0] if held_runs else None,
        )
        try:
            apply_changes(cur, run_id, matched.delta, matched.history)
        except psycopg.Error as exc:
            raise _Failure() from exc
        if held_runs:
            cur.execute(
                """UPDATE core.sync_runs SET resolution = 'approved', resolved_by = %s,
                          resolved_at = now()
                   WHERE run_id = ANY(%s)""",
                (requested_by, held_runs),
            )
        outcome.run_id = run_id
        outcome.report = _set_run_id(outcome.report, run_id)
        return outcome


def _set_run_id(report: Report, run_id: int | None) -> Report:
    assert report.sync is not None
    return replace(
        report, sync=replace(report.sync, run_id=None if run_id is None else str(run_id))
    )


def _applied_before(cur: psycopg.Cursor, district_id: int, sha: str) -> int | None:
    row = cur.execute(
        """SELECT run_id FROM core.sync_runs
           WHERE district_id = %s AND file_sha256 = %s AND kind = 'sync'
             AND status = 'succeeded' AND same_as_run_id IS NULL AND undone_by IS NULL
           ORDER BY run_id DESC LIMIT 1""",
        (district_id, sha),
    ).fetchone()
    return None if row is None else int(row[0])


def _held_runs(cur: psycopg.Cursor, district_id: int, sha: str) -> list[int]:
    rows = cur.execute(
        """SELECT run_id FROM core.sync_runs
           WHERE district_id = %s AND file_sha256 = %s AND status = 'held'
             AND resolution IS NULL
           ORDER BY run_id DESC""",
        (district_id, sha),
    ).fetchall()
    return [int(r[0]) for r in rows]


def _run_values(
    district: store.District,
    outcome: SyncOutcome,
    started_at: datetime,
    requested_by: str,
    matched: Matched | None,
) -> dict[str, object]:
    report = outcome.report
    block = report.sync
    assert block is not None
    summary = report.summary
    return {
        "district_id": district.district_id,
        "kind": "sync",
        "status": block.status,
        "file_name": report.file.name,
        "file_sha256": report.file.sha256,
        "file_bytes": report.file.bytes,
        "requested_by": requested_by,
        "started_at": started_at,
        "rows": summary.rows,
        "valid_rows": summary.valid_rows,
        "error_rows": summary.error_rows,
        "errors": summary.errors,
        "warnings": summary.warnings,
        "matched": block.matched,
        "updated": block.updated,
        "unchanged": block.unchanged,
        "unmatched": block.unmatched,
        "values_changed": outcome.values_changed if block.status == "succeeded" else 0,
        "same_as_run_id": outcome.same_as_run_id,
        "message": outcome.message,
    }


def _record(
    cur: psycopg.Cursor,
    district: store.District,
    outcome: SyncOutcome,
    started_at: datetime,
    requested_by: str,
    matched: Matched | None,
    approves_run_id: int | None = None,
) -> int:
    values = _run_values(district, outcome, started_at, requested_by, matched)
    if approves_run_id is not None:
        values["approves_run_id"] = approves_run_id
    return store.insert_run(cur, **values)


def _record_alone(
    conn: psycopg.Connection,
    district: store.District,
    outcome: SyncOutcome,
    started_at: datetime,
    requested_by: str,
) -> int:
    with conn.transaction(), conn.cursor() as cur:
        return _record(cur, district, outcome, started_at, requested_by, None)


# SQLSTATEs of a server that is shutting down or restarting: the session is gone with it.
_SERVER_GONE = frozenset({"57P01", "57P02", "57P03"})


def failure_reason(cause: BaseException) -> str:
    """Why a sync failed, in words that never include the server's message. A lost connection
    (the server went away mid-apply) says so: "OperationalError" alone tells an operator
    nothing, and lock timeouts and cancellations are OperationalErrors too."""
    state = getattr(cause, "sqlstate", None)
    lost = state is None or state.startswith("08") or state in _SERVER_GONE
    if isinstance(cause, psycopg.OperationalError) and lost:
        return "the connection to the database was lost" + (f", SQLSTATE {state}" if state else "")
    return describe_error(cause)


def _failed(
    url: str,
    district: store.District,
    report: Report,
    cause: BaseException,
    started_at: datetime,
    requested_by: str,
) -> SyncOutcome:
    """The transaction rolled back; record the failure on a fresh connection if possible."""
    outcome = SyncOutcome(
        _with_block(report, "failed"),
        f"the sync failed and nothing was applied ({failure_reason(cause)}); the file can be "
        "synced again",
    )
    try:
        with connect(url, autocommit=True) as conn:
            outcome.run_id = _record_alone(conn, district, outcome, started_at, requested_by)
            outcome.report = _set_run_id(outcome.report, outcome.run_id)
    except Exception:  # the database is gone: the outcome still says what happened
        outcome.message += "; the failure could not be recorded either"
    return outcome

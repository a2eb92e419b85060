"""Preview or sync one file: read under the district's lock, decide, then carry it out.

Everything a sync decides (matching, duplicates, safeguards) and writes (values, history, the
run record) happens in one transaction under the district's lock, so two syncs of a district
never interleave and a failure leaves the database exactly as it was. A preview runs the same
steps in a read-only transaction and writes nothing, not even a run record.
"""

from __future__ import annotations

import getpass
import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import NamedTuple

import polars as pl
import psycopg

from schemas.issues import Code
from schemas.report import ISSUE_SCHEMA, FileInfo, Report, Summary
from tasks import access, store
from tasks.apply import apply_changes
from tasks.db import connect, describe_error
from tasks.match import Matched, compact_values, match_file, read_students
from tasks.progress import SILENT, Progress
from tasks.read import read_demographics
from tasks.sync.decision import Decision, Mode, already_applied, decide, sync_block
from tasks.validate import Validation, validate_parsed, with_issues


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
    progress: Progress = SILENT,
) -> SyncOutcome:
    """Preview or sync `data` (a file's bytes) for a district. Raises only for a district that
    does not exist, a district busy beyond the wait, a database that cannot be reached, or an
    approval by someone who is not a data manager of the district; a failure while applying
    is recorded as a `failed` run and returned as such.

    `approve` needs `approved_by`, a data manager's email: the approval is recorded (who,
    when, `via` which command or flow run) in the transaction that applies the held file, so
    an approval that applies nothing leaves no record of one. `progress` is told the phases."""
    requested_by = requested_by or default_requester()
    started_at = datetime.now(UTC)
    if approve and not approved_by:
        raise access.NotAManager("approving a held sync needs the approving data manager")
    # The digest first: a file already applied is recognised by it before it is read.
    file = FileInfo(file_name, hashlib.sha256(data).hexdigest(), len(data), None)
    with connect(url, autocommit=True) as conn:
        district = store.get_district(conn, district_code)
        if approve and approved_by:
            access.require_manager(conn, district.code, approved_by)
        validated: list[Validation] = []

        def validate() -> Validation:
            if not validated:
                validation = validate_parsed(
                    read_demographics(data, file_name, file.sha256),
                    gender_codes=district.gender_codes,
                    district=district.code,
                    judge_duplicates=False,
                )
                if validation.normalized is not None:  # the string columns are freed here
                    validation = replace(
                        validation, _normalized=compact_values(validation.normalized)
                    )
                validated.append(validation)
            return validated[0]

        try:
            return _decide_and_apply(
                conn,
                district,
                file,
                validate,
                mode,
                approve,
                requested_by,
                started_at,
                lock_wait_seconds,
                (approved_by, via),
                progress,
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


def _decide_and_apply(
    conn: psycopg.Connection,
    district: store.District,
    file: FileInfo,
    validate: Callable[[], Validation],
    mode: Mode,
    approve: bool,
    requested_by: str,
    started_at: datetime,
    lock_wait_seconds: float,
    approval: tuple[str | None, str | None] = (None, None),
    progress: Progress = SILENT,
) -> SyncOutcome:
    """Read what the decision needs under the district's lock, decide, then carry it out."""
    with conn.transaction(), conn.cursor() as cur:
        if mode == "preview":
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        else:
            store.lock_district(cur, district.district_id, district.code, lock_wait_seconds)
        applied = _applied(cur, district.district_id, file.sha256)
        # A preview reads the file all the same: whoever asks for one wants its issues. So
        # does a sync of a file applied before sql/008 kept the encoding.
        if applied is not None and applied.encoding is not None and mode == "sync":
            outcome = _carry_out(
                conn,
                cur,
                district,
                *_known_file(applied, district, file),
                started_at,
                requested_by,
                approval,
                progress,
            )
            progress.phase("commit")
            return outcome
        # The roster is fetched while the file is validated: the server formats a million
        # rows while polars checks the file.
        progress.phase("validate")
        with ThreadPoolExecutor(max_workers=1) as pool:
            fetching = pool.submit(read_students, conn, district.district_id)
            validation = validate()
            students = fetching.result()
        report = validation.report
        matched: Matched | None = None
        same_as: int | None = None
        if not report.stopped and validation.normalized is not None:
            progress.phase("match", validation.normalized.height)
            matched = match_file(validation.normalized, report.issues, students)
            report = with_issues(report, [matched.issues])
            same_as = None if applied is None else applied.run_id

        def judge(held_runs: Sequence[int] = ()) -> Decision:
            return decide(
                report,
                matched,
                error_limit=district.error_limit,
                hold_limit=district.hold_limit,
                mode=mode,
                approve=approve,
                same_as=same_as,
                held_runs=held_runs,
            )

        decision = judge()
        if decision.verdict == "hold" and not decision.preview:
            decision = judge(_held_runs(cur, district.district_id, report.file.sha256))
        outcome = _carry_out(
            conn,
            cur,
            district,
            report,
            matched,
            decision,
            started_at,
            requested_by,
            approval,
            progress,
        )
        if not decision.preview:
            progress.phase("commit")
        return outcome


def _carry_out(
    conn: psycopg.Connection,
    cur: psycopg.Cursor,
    district: store.District,
    report: Report,
    matched: Matched | None,
    decision: Decision,
    started_at: datetime,
    requested_by: str,
    approval: tuple[str | None, str | None],
    progress: Progress = SILENT,
) -> SyncOutcome:
    """The one tail: the outcome a person is told, and unless previewing, the run recorded
    (and for an applied file, its changes and any approval) in the caller's transaction."""
    if decision.issue is not None:
        report = with_issues(report, [_file_issue(*decision.issue)])
    outcome = SyncOutcome(
        replace(report, sync=decision.block),
        decision.message,
        same_as_run_id=decision.same_as_run_id,
        values_changed=decision.values_changed,
    )
    if decision.preview:
        return outcome
    if decision.held_runs:
        approved_by, via = approval
        assert approved_by is not None
        requested_by = access.record_manager_act(
            conn,
            district.code,
            approved_by,
            "approve_held_sync",
            {"run_id": decision.held_runs[0]},
            via=via,
        )
    run_id = _record(cur, district, outcome, started_at, requested_by, decision.approves_run_id)
    if decision.verdict == "apply":
        assert matched is not None
        try:
            apply_changes(cur, run_id, matched.delta, matched.history, progress)
        except psycopg.Error as exc:
            raise _Failure() from exc
        if decision.held_runs:
            cur.execute(
                """UPDATE core.sync_runs SET resolution = 'approved', resolved_by = %s,
                          resolved_at = now()
                   WHERE run_id = ANY(%s)""",
                (requested_by, list(decision.held_runs)),
            )
    outcome.run_id = run_id
    outcome.report = _set_run_id(outcome.report, run_id)
    return outcome


def _set_run_id(report: Report, run_id: int | None) -> Report:
    assert report.sync is not None
    return replace(
        report, sync=replace(report.sync, run_id=None if run_id is None else str(run_id))
    )


class _AppliedRun(NamedTuple):
    """The run that applied a file: what its report said of the file."""

    run_id: int
    encoding: str | None  # None for runs recorded before sql/008
    summary: Summary
    matched: int
    unmatched: int


def _applied(cur: psycopg.Cursor, district_id: int, sha: str) -> _AppliedRun | None:
    """The run that applied this very file (same SHA-256) and that no one undid, if any."""
    row = cur.execute(
        """SELECT run_id, file_encoding, rows, valid_rows, error_rows, warning_rows, errors,
                  warnings, matched, unmatched
           FROM core.sync_runs
           WHERE district_id = %s AND file_sha256 = %s AND kind = 'sync'
             AND status = 'succeeded' AND same_as_run_id IS NULL AND undone_by IS NULL
           ORDER BY run_id DESC LIMIT 1""",
        (district_id, sha),
    ).fetchone()
    if row is None:
        return None
    run_id, encoding, *counts, matched, unmatched = row
    return _AppliedRun(int(run_id), encoding, Summary(*counts), matched, unmatched)


def _known_file(
    applied: _AppliedRun, district: store.District, file: FileInfo
) -> tuple[Report, None, Decision]:
    """A sync of a file a run applied is told by its SHA-256 alone: the report repeats that
    run's encoding and counts, without reading the file again (its issues are in that run's
    report), and nothing is done."""
    report = Report(
        file=replace(file, encoding=applied.encoding),
        summary=applied.summary,
        issues=pl.DataFrame(schema=ISSUE_SCHEMA),
        district=district.code,
        gender_codes=tuple(code.upper() for code in district.gender_codes),
    )
    decision = already_applied(applied.run_id, applied.matched, applied.unmatched, preview=False)
    return report, None, decision


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
    district: store.District, outcome: SyncOutcome, started_at: datetime, requested_by: str
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
        "file_encoding": report.file.encoding,
        "requested_by": requested_by,
        "started_at": started_at,
        "rows": summary.rows,
        "valid_rows": summary.valid_rows,
        "error_rows": summary.error_rows,
        "warning_rows": summary.warning_rows,
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
    approves_run_id: int | None = None,
) -> int:
    values = _run_values(district, outcome, started_at, requested_by)
    if approves_run_id is not None:
        values["approves_run_id"] = approves_run_id
    return store.insert_run(cur, **values)


def record_preview(
    url: str, district_code: str, outcome: SyncOutcome, requested_by: str
) -> SyncOutcome:
    """Record a preview asked for through the drop (kind `preview`): who asked, when, what it
    found and would change; nothing else is written. Returns the outcome with its run id."""
    with connect(url, autocommit=True) as conn:
        district = store.get_district(conn, district_code)
        values = _run_values(district, outcome, datetime.now(UTC), requested_by)
        values.update(kind="preview", status="succeeded")
        with conn.transaction(), conn.cursor() as cur:
            run_id = store.insert_run(cur, **values)
    outcome.run_id = run_id
    outcome.report = _set_run_id(outcome.report, run_id)
    return outcome


def _record_alone(
    conn: psycopg.Connection,
    district: store.District,
    outcome: SyncOutcome,
    started_at: datetime,
    requested_by: str,
) -> int:
    with conn.transaction(), conn.cursor() as cur:
        return _record(cur, district, outcome, started_at, requested_by)


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
        replace(report, sync=sync_block("failed")),
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

"""A district's roster taken from its drop folder `roster/`, before its demographics files, so
a student new this week is matched the same night; and a held roster approved or discarded.

A roster taken is recorded as a run of kind `roster` (its file_sha256: `roster_sha256` of its
files): the same export again changes nothing, an invalid one loads nothing and is reported
file by file, row by row, and one the guard holds waits for a data manager. Its files are the
district's whole staff and student list, so they are deleted once the outcome is committed and
the data managers are told; kept only while held.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import psycopg

from schemas.roster import RosterIssue, RosterResult
from tasks import access, store
from tasks.drop import (
    Drop,
    DropFile,
    DropListing,
    DropRefused,
    FileChanged,
    FileGone,
    open_drop,
)
from tasks.process.rules import DropPlan, Notice, Refused, source_of
from tasks.process.safety import refusing, safe_step
from tasks.process.steps import _database
from tasks.render import roster_issue_line
from tasks.roster import RosterRefused, load_roster
from tasks.roster.drop import (
    RosterPlan,
    is_zip,
    plan_roster,
    roster_name,
    roster_sha256,
    unpack,
)
from tasks.roster.read import read_roster_files, required_files
from tasks.settings import load_settings

ROSTER = "roster"
RosterStatus = Literal["waiting", "held", "still held", "unchanged", "loaded", "invalid"]
# Issues listed in an email; the rest are counted (`demographics roster load` lists them all).
MAX_EMAILED_ISSUES = 50


@dataclass
class RosterTaken:
    """What became of the roster in the drop: the line to log, what to tell the data
    managers (None: nothing), and the files to delete once they are told."""

    status: RosterStatus
    message: str
    run_id: int | None = None
    notice: Notice | None = None
    delete: list[DropFile] = field(default_factory=list)


@dataclass
class _Fetched:
    name: str  # how runs and emails name it: roster/x.zip or roster/ (N files)
    files: dict[str, bytes] = field(repr=False)  # the CSV files by lower-case name
    issues: list[RosterIssue]
    sources: list[DropFile]  # exactly what was read: only these may be deleted
    sha256: str = ""


@safe_step
def take_roster(district: str, requested_by: str, listed: DropPlan) -> RosterTaken | None:
    """Load the roster waiting in the district's `roster/` folder, if any (see the module);
    `listed`: the folder's listing, judged (files past retention are gone from it)."""
    settings = load_settings()
    drop = open_drop(settings)
    plan = plan_roster(DropListing(listed.ready, listed.settling, listed.too_large))
    if plan.empty:
        return None
    if plan.waiting is not None:
        return RosterTaken("waiting", f"the roster waits for the next run: {plan.waiting}")
    fetched = _fetch(drop, district, plan.take, settings.max_file_bytes)
    if fetched is None:
        return RosterTaken("waiting", "the roster left or changed while it was read; it waits")
    missing = [n for n in required_files(fetched.files) if n not in fetched.files]
    if missing and not is_zip(plan.take[0].name):  # 1.2 (its manifest says) needs roles.csv
        return RosterTaken("waiting", f"the roster waits: {', '.join(missing)} has not arrived")
    later = fetched.sources + plan.superseded
    with _database(settings) as conn:
        found = store.get_district(conn, district)
        held = store.unresolved_hold(conn, found.district_id, fetched.sha256)
        if held is not None:
            said = f"{fetched.name} is held by run {held}, waiting for a data manager; kept"
            return RosterTaken("still held", said, held)
        same = store.loaded_roster(conn, found.district_id, fetched.sha256)
        if same is not None:
            said = f"{fetched.name}: the same roster as run {same}; nothing changed"
            run_id = _record_alone(
                conn,
                found.district_id,
                fetched,
                requested_by,
                "succeeded",
                said,
                same_as_run_id=same,
            )
            return RosterTaken("unchanged", said, run_id, delete=later)
        return _load(conn, found, fetched, requested_by, later, settings.lock_wait_seconds)


def _fetch(drop: Drop, district: str, take: list[DropFile], limit: int) -> _Fetched | None:
    """The roster's files, unpacked from its .zip if it is one; None when one left the drop
    or changed since the listing (the set is judged again next run)."""
    files: dict[str, bytes] = {}
    issues: list[RosterIssue] = []
    sources: list[DropFile] = []
    for file in take:
        try:
            got = drop.fetch(district, file.name, folder=ROSTER)
        except FileGone:
            return None
        except DropRefused as exc:  # too large, a link swapped in: the message says which
            issues.append(RosterIssue(file.name, "error", "unreadable_file", str(exc)))
            sources.append(file)
            continue
        if (got.size, got.modified) != (file.size, file.modified):
            return None
        sources.append(source_of(got))
        if is_zip(got.name):
            unpacked, problems = unpack(got.name, got.data, limit)
            files.update(unpacked)
            issues.extend(problems)
        else:
            files[got.name.lower()] = got.data
    fetched = _Fetched(roster_name(take), files, issues, sources)
    fetched.sha256 = roster_sha256(files)
    return fetched


def _load(
    conn: psycopg.Connection,
    found: store.District,
    fetched: _Fetched,
    by: str,
    later: list[DropFile],
    lock_wait_seconds: float,
) -> RosterTaken:
    """Check and load it (the guard on), recording the run with the load."""
    snapshot = read_roster_files(fetched.files, fetched.issues)
    if snapshot.errors:
        said = f"{fetched.name} was not loaded: {_errors(snapshot.errors)}"
        run_id = _record_alone(
            conn, found.district_id, fetched, by, "rejected", said, errors=snapshot.errors
        )
        return RosterTaken(
            "invalid", said, run_id, invalid_notice(fetched.name, snapshot.issues), later
        )
    recorded: list[int] = []

    def on_loaded(cur: psycopg.Cursor, district_id: int, result: RosterResult) -> None:
        said = f"{fetched.name} loaded: {counts_line(result)}"
        recorded.append(_record(cur, district_id, fetched, by, "succeeded", said))

    try:
        result = load_roster(
            conn,
            found.code,
            snapshot,
            lock_wait_seconds,
            guard=found.roster_limit,
            on_loaded=on_loaded,
        )
    except RosterRefused as exc:  # another district's export: as invalid, said once
        said = f"{fetched.name} was not loaded: {exc}"
        run_id = _record_alone(conn, found.district_id, fetched, by, "rejected", said, errors=1)
        notice = invalid_notice(
            fetched.name, [RosterIssue("orgs.csv", "error", "other_district", str(exc))]
        )
        return RosterTaken("invalid", said, run_id, notice, later)
    if result.held is not None:
        said = f"{fetched.name} is held: {result.held}"
        run_id = _record_alone(conn, found.district_id, fetched, by, "held", said)
        return RosterTaken("held", said, run_id, held_notice(fetched.name, run_id, result))
    said = f"{fetched.name} loaded: {counts_line(result)}"
    return RosterTaken("loaded", said, recorded[0], loaded_notice(fetched.name, result), later)


def _record(
    cur: psycopg.Cursor,
    district_id: int,
    fetched: _Fetched,
    by: str,
    status: str,
    message: str,
    *,
    replaces_hold: bool = True,
    **extra: Any,
) -> int:
    """Record a roster run. A roster taken from the drop replaces one still held (a new
    export leaves the old hold nothing to approve), in the same transaction; an approval
    resolves its own hold instead (`replaces_hold=False`)."""
    if replaces_hold:
        store.discard_holds(cur.connection, district_id, f"{by} (a newer roster)", kind="roster")
    return store.insert_run(
        cur,
        district_id=district_id,
        kind="roster",
        status=status,
        file_name=fetched.name,
        file_sha256=fetched.sha256,
        file_bytes=sum(f.size for f in fetched.sources),
        requested_by=by,
        started_at=datetime.now(UTC),
        message=message,
        **extra,
    )


def _record_alone(conn: psycopg.Connection, *args: Any, **extra: Any) -> int:
    with conn.transaction(), conn.cursor() as cur:
        return _record(cur, *args, **extra)


# --- a held roster -----------------------------------------------------------------------


@safe_step
@refusing
def approve_roster(
    held: store.HeldRun, approved_by: str, requested_by: str
) -> RosterTaken | Refused:
    """Load the held roster, without the guard: only if the drop still holds that very
    roster (same SHA-256). The approval (act, resolution) commits with the load."""
    settings = load_settings()
    drop = open_drop(settings)
    plan = _held_plan(drop, held.district)
    fetched = (
        None if not plan.take else _fetch(drop, held.district, plan.take, settings.max_file_bytes)
    )
    if fetched is None or fetched.sha256 != held.file_sha256:
        return Refused(
            f"the roster folder no longer holds the roster held by run {held.run_id}; "
            "nothing was loaded (a new export is judged afresh on the next run)"
        )
    with _database(settings) as conn:
        found = store.get_district(conn, held.district)
        snapshot = read_roster_files(fetched.files, fetched.issues)
        recorded: list[int] = []

        def on_loaded(cur: psycopg.Cursor, district_id: int, result: RosterResult) -> None:
            manager = access.record_manager_act(
                conn,
                held.district,
                approved_by,
                "approve_held_sync",
                {"run_id": held.run_id},
                via=requested_by,
            )
            said = f"{fetched.name} loaded: {counts_line(result)}"
            recorded.append(
                _record(
                    cur,
                    district_id,
                    fetched,
                    manager,
                    "succeeded",
                    said,
                    replaces_hold=False,
                    approves_run_id=held.run_id,
                )
            )
            store.resolve_hold(cur, held.run_id, manager)

        result = load_roster(
            conn, found.code, snapshot, settings.lock_wait_seconds, on_loaded=on_loaded
        )
    said = f"{fetched.name} loaded: {counts_line(result)}"
    later = fetched.sources + plan.superseded
    return RosterTaken("loaded", said, recorded[0], loaded_notice(fetched.name, result), later)


@safe_step
def discard_roster_files(held: store.HeldRun) -> str:
    """Delete the discarded roster's files only if the folder still holds that very roster."""
    drop = open_drop(load_settings())
    plan = _held_plan(drop, held.district)
    fetched = None if not plan.take else _fetch(drop, held.district, plan.take, 2**62)
    if fetched is None:
        return "already gone"
    if fetched.sha256 != held.file_sha256:
        return "left alone: the roster folder now holds a different export"
    return delete_roster_files(held.district, fetched.sources)


def _held_plan(drop: Drop, district: str) -> RosterPlan:
    """The roster folder judged for a decision on its hold: a file that kept an old time (as
    upload tools do) counts, as the nightly run's judgement by first sight counted it."""
    listing = drop.list(district, folder=ROSTER)
    return plan_roster(
        DropListing([*listing.ready, *listing.expired], listing.settling, listing.too_large)
    )


def delete_roster_files(district: str, files: list[DropFile]) -> str:
    """Delete the files that were read (not a newer upload under a name); says what became
    of them."""
    drop = open_drop(load_settings())
    kept = 0
    for file in files:
        try:
            drop.delete(district, file.name, file, folder=ROSTER)
        except (FileChanged, FileGone):
            kept += 1
    return "deleted" if not kept else f"deleted but for {kept} replaced or gone meanwhile"


@safe_step
def settle_roster(district: str, files: list[DropFile]) -> str:
    """Delete a roster's files once its outcome is committed and told (see above)."""
    return delete_roster_files(district, files)


# --- what the data managers are told -----------------------------------------------------


def _errors(count: int) -> str:
    return f"{count} error" + ("" if count == 1 else "s")


def counts_line(result: RosterResult) -> str:
    """Counts by kind of record: `students 3 added, 1 updated, 0 deactivated (200 active)`."""
    return "; ".join(
        f"{name} {c.added} added, {c.updated} updated, {c.deactivated} deactivated "
        f"({c.active} active)"
        for name, c in result.counts.items()
    )


def loaded_notice(name: str, result: RosterResult) -> Notice:
    granted = [f"{email} is now a data manager of the district." for email in result.granted]
    return Notice(
        f"roster loaded ({name})",
        [
            f"The roster export {name} was loaded; its files are deleted from the drop.",
            *(
                f"{kind}: {c.added} added, {c.updated} updated, {c.deactivated} deactivated, "
                f"{c.active} active"
                for kind, c in result.counts.items()
            ),
            *granted,
            *(roster_issue_line(i) for i in result.issues[:MAX_EMAILED_ISSUES]),
        ],
    )


def invalid_notice(name: str, issues: list[RosterIssue]) -> Notice:
    errors = [i for i in issues if i.severity == "error"]
    shown = issues[:MAX_EMAILED_ISSUES]
    more = len(issues) - len(shown)
    return Notice(
        f"roster not loaded: {_errors(len(errors))} ({name})",
        [
            f"Nothing of the roster export {name} was loaded: a roster with errors would "
            "deactivate people who are still there. The roster in use is unchanged, and its "
            "files are deleted from the drop.",
            "Fix these in the export (file, row, column, code), then upload the whole roster "
            "again:",
            *(roster_issue_line(i) for i in shown),
            *([f"... and {more} more."] if more else []),
        ],
    )


def held_notice(name: str, run_id: int, result: RosterResult) -> Notice:
    return Notice(
        f"roster held for a data manager ({name}, run {run_id})",
        [
            f"The roster export {name} was not loaded: {result.held}. Nothing was changed, and "
            "its files stay in the drop until a data manager decides.",
            *(
                f"{loss.school}: {loss.leaving} of {loss.active} active students would be "
                "deactivated"
                for loss in result.losses
                if loss.leaving
            ),
            "If these students really left, approve it: run the Prefect deployment "
            f"approve-held-sync with run_id {run_id} and your email as approved_by, or "
            f"`demographics approve {run_id} --as YOUR_EMAIL`.",
            "If the export is broken, discard it (discard-held-sync, or `demographics discard "
            f"{run_id} --as YOUR_EMAIL`) and export the roster again from the student "
            "information system.",
        ],
    )

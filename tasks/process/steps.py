"""The steps with effects: each opens what it needs (the database, the drop, the mail
server) from the settings, does one thing, and answers in values the flows pass on.

Decisions are made by `tasks.process.rules`; every step here is a `safe_step`, and those
that answer a person's request are `refusing` too (see `tasks.process.safety`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import psycopg

from tasks import access, store
from tasks.db import ready_connection
from tasks.db import ready_database_url as _ready_database_url
from tasks.drop import (
    DropFile,
    DropListing,
    DropRefused,
    FetchedFile,
    FileChanged,
    FileGone,
    check_district,
    check_name,
    megabytes,
    open_drop,
)
from tasks.drop import clean_staging as _clean_staging
from tasks.mail import Delivery, build_notice_message, build_results_message
from tasks.mail import send_message as _send_message
from tasks.process.rules import (
    DropPlan,
    Notice,
    Refused,
    Settled,
    judge_drop,
    listed_files,
    same_file_refusal,
    settle_rule,
    settling_refusal,
    source_of,
)
from tasks.process.safety import refusing, safe_step
from tasks.roster.drop import holds_file
from tasks.settings import Settings, load_settings
from tasks.sync import Mode, SyncOutcome, run_file
from tasks.sync import record_preview as _record_preview

# Why a file of another kind is not read, as core.drop_files records it.
NOT_TAKEN = "not a kind of file this folder takes"


def _url(settings: Settings | None = None) -> str:
    return _ready_database_url(settings or load_settings())


def _database(settings: Settings | None = None) -> psycopg.Connection:
    """A connection of its own for one step, in autocommit: a step that writes more than one
    statement together opens `conn.transaction()` itself. Use it with `with`."""
    return ready_connection(settings or load_settings())


@safe_step
def check_database() -> None:
    """Fail early, with a reason, before anything is taken from the drop."""
    with _database() as conn:
        conn.execute("SELECT 1")


@safe_step
def active_districts() -> list[str]:
    with _database() as conn:
        return store.active_district_codes(conn)


@safe_step
def clean_staging() -> int:
    """Remove download folders a killed worker left behind (their `finally` never ran)."""
    return _clean_staging(load_settings())


@safe_step
def list_drop(district: str, folder: str = "") -> DropListing:
    return open_drop(load_settings()).list(district, folder=folder)


@safe_step
@refusing
def check_file_request(district: str, name: str, folder: str = "") -> Refused | None:
    """Refuse a request for a file of an unknown district, or under a name that is not safe
    to use, before anything is taken from the drop."""
    try:
        check_district(district)
        check_name(name, folder)
    except DropRefused as exc:
        return Refused(str(exc))
    with _database() as conn:
        store.get_district(conn, district)
    return None


@safe_step
def fetch_file(district: str, name: str, folder: str = "") -> FetchedFile | Refused | None:
    """The file's bytes, or None when it is no longer in the drop (another run took it, or
    the district removed it): nothing to do then. An unsafe name is refused, and so is a file
    modified within the settling time (it may still be uploading), even when asked for by
    name."""
    try:
        check_district(district)
        check_name(name, folder)
    except DropRefused as exc:
        return Refused(str(exc))
    settings = load_settings()
    try:
        fetched = open_drop(settings).fetch(district, name, folder=folder)
    except FileGone:
        return None
    return settling_refusal(fetched, settings.settle_seconds, datetime.now(UTC)) or fetched


@safe_step
def record_preview(district: str, outcome: SyncOutcome, requested_by: str) -> SyncOutcome:
    """A preview from the drop's preview/ folder is recorded as a run (nothing else is)."""
    return _record_preview(_url(), district, outcome, requested_by)


@safe_step
def find_held_run(district: str, sha256: str) -> int | None:
    """The held run of this very file (same SHA-256) still waiting for a data manager, if
    any: a sync of the file would only hold it again."""
    with _database() as conn:
        found = store.get_district(conn, district)
        return store.unresolved_hold(conn, found.district_id, sha256)


@safe_step
@refusing
def sync_file(
    district: str,
    fetched: FetchedFile,
    mode: Mode,
    requested_by: str,
    approved_by: str | None = None,
) -> SyncOutcome | Refused:
    """Preview or sync the fetched file; with `approved_by` (a data manager), apply it over
    its hold, recording the approval with the run that applies it. Refused when the district
    or the approver's grant went away since the flow checked them."""
    settings = load_settings()
    return run_file(
        _url(settings),
        district,
        fetched.data,
        fetched.name,
        mode=mode,
        approve=approved_by is not None,
        requested_by=requested_by,
        lock_wait_seconds=settings.lock_wait_seconds,
        approved_by=approved_by,
        via=requested_by,
    )


@safe_step
@refusing
def held_sync(run_id: int) -> store.HeldRun:
    """The held run waiting for a decision; refused when there is none (no such run, not
    held, already approved or discarded)."""
    with _database() as conn:
        return store.held_run(conn, run_id)


@safe_step
@refusing
def check_approver(held: store.HeldRun, approved_by: str) -> None:
    """Refuse early, before anything is fetched: only a data manager of the district
    approves or discards. The approval itself is recorded by the sync that applies the file."""
    with _database() as conn:
        access.require_manager(conn, held.district, approved_by)


@safe_step
def check_same_file(held: store.HeldRun, fetched: FetchedFile) -> Refused | None:
    """Approving applies exactly the file that was held (see `same_file_refusal`)."""
    return same_file_refusal(held, fetched)


@safe_step
@refusing
def discard_held(run_id: int, discarded_by: str, via: str) -> tuple[store.HeldRun, str]:
    """A data manager's decision, recorded (act and resolution in one transaction) before the
    file is removed, and only if it is that file. Returns the run and the manager's email."""
    with _database() as conn, conn.transaction():
        held = store.held_run(conn, run_id)
        district = store.get_district(conn, held.district)
        by = access.record_manager_act(
            conn, held.district, discarded_by, "discard_held_sync", {"run_id": run_id}, via=via
        )
        store.discard_holds(conn, district.district_id, by, run_id=run_id)
        return held, by


@safe_step
def discard_source_file(held: store.HeldRun) -> str:
    """Delete the discarded file only if the drop still holds that very file (same SHA-256);
    says what happened to it."""
    drop = open_drop(load_settings())
    try:
        fetched = drop.fetch(held.district, check_name(held.file_name))
    except FileGone:
        return "already gone"
    if fetched.sha256 != held.file_sha256:
        return "left alone: the drop now has a different file under that name"
    try:
        drop.delete(held.district, fetched.name, source_of(fetched))
    except FileChanged:
        return "left alone: it was replaced while it was being checked"
    except FileGone:
        return "already gone"
    return "deleted"


@safe_step
@refusing
def set_teacher_fields(district: str, fields: list[str], changed_by: str) -> list[str]:
    """A data manager's change of what teachers see (empty: nothing); the fields now in force.
    Refused for someone who is not a data manager, a name that is not a demographic field, or
    an unknown district."""
    with _database() as conn:
        return list(access.set_teacher_fields(conn, district, fields, changed_by).fields)


@safe_step
def apply_views_and_grants() -> access.AccessViews:
    """The view and grants, and what the database owner must still do (when we are not it)."""
    with _database() as conn:
        return access.apply_access_views(conn)


# --- email ---------------------------------------------------------------------------------


def _addressed(district: str) -> tuple[store.District, tuple[str, ...], str]:
    """The district, its notification list when it has one (else its data managers, else the
    one named when it was added), and the sender address: what every message needs."""
    settings = load_settings()
    with _database(settings) as conn:
        found = store.get_district(conn, district)
        recipients = (
            found.recipients
            or access.manager_emails(conn, found.district_id)
            or access.pending_manager_emails(conn, found.district_id)
        )
    return found, recipients, settings.mail_from


@safe_step
def results_message(district: str, outcome: SyncOutcome, folder: str = "") -> EmailMessage:
    found, recipients, sender = _addressed(district)
    return build_results_message(
        found.code,
        found.name,
        outcome.report,
        outcome.message,
        recipients,
        sender,
        file_kept=folder != "preview",
        same_as=outcome.same_as_run_id,
    )


@safe_step
def notice_message(district: str, notice: Notice) -> EmailMessage:
    found, recipients, sender = _addressed(district)
    return build_notice_message(
        found.code, found.name, notice.subject, notice.lines, recipients, sender
    )


@safe_step
def send_message(message: EmailMessage, password: str | None = None) -> Delivery:
    return _send_message(message, load_settings(), password)


@safe_step
def record_delivery(run_id: int | None, delivery: Delivery | None, error: str | None) -> None:
    """A send failure is written on the run, beside an outcome it never changes."""
    if run_id is None:
        return
    if delivery is not None:
        status, detail = delivery.kind, delivery.detail
    else:
        status, detail = "failed", error or "the message could not be sent"
    with _database() as conn:
        store.record_email(conn, run_id, status, detail)


# --- the drop ------------------------------------------------------------------------------


@safe_step
def settle_file(
    district: str, source: DropFile, status: str, run_id: int | None, folder: str = ""
) -> Settled:
    """Delete the source file after a committed outcome that has used it up; keep it else.
    Only the very file that was read goes: one replaced since (another upload under the same
    name) is left for the next run."""
    delete, reason = settle_rule(status, folder)
    if not delete:
        return Settled("kept", reason)
    try:
        open_drop(load_settings()).delete(
            district, check_name(source.name, folder), source, folder=folder
        )
        gone = False
    except FileChanged:
        return Settled("kept", "it was replaced after it was read: the new file waits")
    except FileGone:
        gone = True
    if run_id is not None:
        with _database() as conn:
            store.record_file_deleted(conn, [run_id])
    return Settled("already gone" if gone else "deleted", reason)


@safe_step
def plan_drop(district: str, listing: DropListing, folder: str = "") -> DropPlan:
    """Record what the folder holds now, and judge it (`judge_drop`) by when the service
    first saw each file unchanged; note which refusals are news."""
    settings = load_settings()
    with _database(settings) as conn, conn.transaction():
        found = store.get_district(conn, district)
        first_seen = store.observe_drop(
            conn,
            found.district_id,
            [(f.name, f.size, f.modified) for f in listed_files(listing)],
            [(r.name, r.reason) for r in listing.refused],
            folder,
            [(f.name, f.size, f.modified, NOT_TAKEN) for f in listing.other],
        )
        news = store.refusals_to_report(conn, found.district_id, folder)
    cutoff = datetime.now(UTC) - timedelta(days=settings.retention_days)
    return judge_drop(listing, first_seen, news, cutoff, settings.max_file_bytes)


@safe_step
def mark_refusals_reported(district: str, names: list[str], folder: str = "") -> None:
    """The data managers were told about these refused entries or files of another kind."""
    with _database() as conn:
        found = store.get_district(conn, district)
        store.mark_refusals_reported(conn, found.district_id, names, folder)


@safe_step
def expire_files(
    district: str, files: list[DropFile], requested_by: str, folder: str = ""
) -> list[str]:
    """Delete files past retention whatever their state; their waiting holds are discarded
    (a roster's file: the roster's hold)."""
    settings = load_settings()
    drop = open_drop(settings)
    deleted = []
    with _database(settings) as conn:
        found = store.get_district(conn, district)
        for f in files:
            try:
                drop.delete(district, check_name(f.name, folder, any_kind=True), f, folder=folder)
            except FileChanged:
                continue  # a new upload under that name: it is judged afresh next time
            except FileGone:
                pass
            _expire_holds(conn, found.district_id, requested_by, folder, f.name)
            deleted.append(f"{folder}/{f.name}" if folder else f.name)
    return deleted


def _expire_holds(
    conn: psycopg.Connection, district_id: int, by: str, folder: str, name: str
) -> None:
    """A file deleted by retention ends the hold waiting on it: a demographics file's, or the
    held roster's when the file was one of its own (a preview is never held)."""
    if folder == "":
        store.discard_holds(conn, district_id, by, file_name=name)
    elif folder == "roster":
        held = store.held_roster(conn, district_id)
        if held is not None and holds_file(held[1], name):
            store.discard_holds(conn, district_id, by, run_id=held[0])


@safe_step
def reject_unread(
    district: str, file: DropFile, requested_by: str, kind: str = "sync"
) -> tuple[int, Notice]:
    """Record a file too large to read as a rejected run (of `kind` sync, or preview for a
    file of preview/); the caller then tells the data managers (the notice) and deletes it,
    as after any rejection."""
    settings = load_settings()
    message = (
        f"{file.name} is {megabytes(file.size)}, over the limit of "
        f"{megabytes(settings.max_file_bytes)}; "
        "it was rejected unread and deleted. Split it into smaller files and upload them"
    )
    with _database(settings) as conn:
        found = store.get_district(conn, district)
        with conn.transaction(), conn.cursor() as cur:
            run_id = store.insert_run(
                cur,
                district_id=found.district_id,
                kind=kind,
                status="rejected",
                file_name=file.name,
                file_bytes=file.size,
                requested_by=requested_by,
                started_at=datetime.now(UTC),
                message=message,
            )
    return run_id, Notice(f"{file.name} rejected: too large", [message])

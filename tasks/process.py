"""The units of work the Prefect flows compose: one district file from the drop to the inbox.

Each function takes names and ids (never student values), reads its own settings, and is safe
to hand to Prefect: what it returns stays in memory (the flows turn result persistence off),
and what it raises carries no student value and no chained cause, because Prefect records a
failed task's message and traceback. A person's request that cannot be carried out (not a data
manager, no such held run, an unknown district, an unsafe name, a file still settling) is not a
failure: it is returned as a `Refused` value, never raised, so the run ends with the reason and
no traceback. The rules of settling a source file live here too, so the flows only say what
runs in which order.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Literal, ParamSpec, TypeVar

import psycopg

from tasks import access, store
from tasks.db import DatabaseUnavailable, connect, describe_error
from tasks.db import ready_database_url as _ready_database_url
from tasks.drop import (
    DropFile,
    DropListing,
    DropRefused,
    FetchedFile,
    FileChanged,
    FileGone,
    RefusedEntry,
    check_district,
    check_name,
    megabytes,
    open_drop,
)
from tasks.drop import clean_staging as _clean_staging
from tasks.errors import DemographicsError
from tasks.mail import Delivery, build_notice_message, build_results_message
from tasks.mail import send_message as _send_message
from tasks.settings import Settings, load_settings
from tasks.sync import Mode, SyncOutcome, run_file

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

# Outcomes after which the source file has done its job: the result is committed and
# recorded, and a fixed file comes back under a new upload.
DELETE_AFTER = frozenset({"succeeded", "rejected"})
# A person asked for something the service will not do: told, not failed. None of these
# messages names the person refused (they may have typed a student's email).
REFUSALS = (store.UnknownDistrict, store.NotHeld, access.AccessRefused, access.InvalidField)


class StepFailed(DemographicsError):
    """A step could not finish; the message says why and carries no student value."""


@dataclass(frozen=True)
class Refused:
    """A person's request that is not carried out: nothing broke, the reason is one line
    (safe to show and log). The flows end such a run Failed with this reason as its message."""

    reason: str


def _clean(exc: BaseException) -> BaseException:
    exc.__cause__ = None
    exc.__context__ = None
    exc.__suppress_context__ = True
    return exc


def safe_step(func: Callable[P, R]) -> Callable[P, R]:
    """Re-raise failures as exceptions whose text (and traceback) hold no student value."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except DemographicsError as exc:  # StepFailed among them: the message is safe
            raise _clean(exc) from None
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(
                f"the database cannot be reached ({describe_error(exc)})"
            ) from None
        except psycopg.Error as exc:
            raise StepFailed(f"a database statement failed ({describe_error(exc)})") from None
        except Exception as exc:
            raise StepFailed(f"{func.__name__} failed ({type(exc).__name__})") from None

    return wrapper


def refusing(func: Callable[P, R]) -> Callable[P, R | Refused]:
    """A refusal (REFUSALS) is returned as Refused, never raised: Prefect would log it with a
    traceback, and it is the person's answer, not a failure."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | Refused:
        try:
            return func(*args, **kwargs)
        except REFUSALS as exc:
            return Refused(str(exc))

    return wrapper


def _url(settings: Settings | None = None) -> str:
    return _ready_database_url(settings or load_settings())


@safe_step
def check_database() -> None:
    """Fail early, with a reason, before anything is taken from the drop."""
    with connect(_url(), autocommit=True) as conn:
        conn.execute("SELECT 1")


@safe_step
def active_districts() -> list[str]:
    with connect(_url(), autocommit=True) as conn:
        return store.active_district_codes(conn)


@safe_step
def clean_staging() -> int:
    """Remove download folders a killed worker left behind (their `finally` never ran)."""
    return _clean_staging(load_settings())


@safe_step
def list_drop(district: str) -> DropListing:
    return open_drop(load_settings()).list(district)


@safe_step
@refusing
def check_file_request(district: str, name: str) -> Refused | None:
    """Refuse a request for a file of an unknown district, or under a name that is not safe
    to use, before anything is taken from the drop."""
    try:
        check_district(district)
        check_name(name)
    except DropRefused as exc:
        return Refused(str(exc))
    with connect(_url(), autocommit=True) as conn:
        store.get_district(conn, district)
    return None


def settling_refusal(fetched: FetchedFile, settle_seconds: float, now: datetime) -> Refused | None:
    """A file modified within the settling time may still be uploading."""
    age = (now - fetched.modified).total_seconds()
    if age >= settle_seconds:
        return None
    return Refused(
        f"{fetched.name} was modified {max(age, 0):.0f} s ago and may still be uploading; "
        f"it is left in the drop (try again after {settle_seconds:g} s)"
    )


@safe_step
def fetch_file(district: str, name: str) -> FetchedFile | Refused | None:
    """The file's bytes, or None when it is no longer in the drop (another run took it, or
    the district removed it): nothing to do then. An unsafe name is refused, and so is a file
    modified within the settling time (it may still be uploading), even when asked for by
    name."""
    try:
        check_district(district)
        check_name(name)
    except DropRefused as exc:
        return Refused(str(exc))
    settings = load_settings()
    try:
        fetched = open_drop(settings).fetch(district, name)
    except FileGone:
        return None
    return settling_refusal(fetched, settings.settle_seconds, datetime.now(UTC)) or fetched


def source_of(fetched: FetchedFile) -> DropFile:
    """The name, size and time of what was read: only that very file may be deleted."""
    return DropFile(fetched.name, fetched.size, fetched.modified)


@safe_step
def waiting_hold(district: str, sha256: str) -> int | None:
    """A held run of this very file still waiting for a data manager, if any."""
    with connect(_url(), autocommit=True) as conn:
        found = store.get_district(conn, district)
        return store.waiting_hold(conn, found.district_id, sha256)


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
    with connect(_url(), autocommit=True) as conn:
        return store.held_run(conn, run_id)


@safe_step
@refusing
def check_approver(held: store.HeldRun, approved_by: str) -> None:
    """Refuse early, before anything is fetched: only a data manager of the district
    approves or discards. The approval itself is recorded by the sync that applies the file."""
    with connect(_url(), autocommit=True) as conn:
        access.require_manager(conn, held.district, approved_by)


def held_file_gone(held: store.HeldRun) -> Refused:
    return Refused(
        f"{held.file_name} is no longer in the drop; upload it again to be judged afresh"
    )


@safe_step
@refusing
def discard_held(run_id: int, discarded_by: str, via: str) -> tuple[store.HeldRun, str]:
    """A data manager's decision, recorded (act and resolution in one transaction) before the
    file is removed, and only if it is that file. Returns the run and the manager's email."""
    with connect(_url(), autocommit=True) as conn, conn.transaction():
        held = store.held_run(conn, run_id)
        district = store.get_district(conn, held.district)
        by = access.record_manager_act(
            conn, held.district, discarded_by, "discard_held_sync", {"run_id": run_id}, via=via
        )
        store.discard_holds(conn, district.district_id, by, run_id=run_id)
        return held, by


@safe_step
@refusing
def change_teacher_fields(district: str, fields: list[str], changed_by: str) -> list[str]:
    """A data manager's change of what teachers see (empty: nothing); the fields now in force.
    Refused for someone who is not a data manager, a name that is not a demographic field, or
    an unknown district."""
    with connect(_url(), autocommit=True) as conn:
        return list(access.set_teacher_fields(conn, district, fields, changed_by).fields)


@safe_step
def apply_access_views() -> access.AccessViews:
    """The view and grants, and what the database owner must still do (when we are not it)."""
    with connect(_url(), autocommit=True) as conn:
        return access.apply_access_views(conn)


def _addressees(conn: psycopg.Connection, district: str) -> tuple[store.District, tuple[str, ...]]:
    """The district's notification list when it has one; else its data managers."""
    found = store.get_district(conn, district)
    return found, found.recipients or access.manager_emails(conn, found.district_id)


@safe_step
def results_message(district: str, outcome: SyncOutcome) -> EmailMessage:
    settings = load_settings()
    with connect(_url(settings), autocommit=True) as conn:
        found, recipients = _addressees(conn, district)
    return build_results_message(
        found.code,
        found.name,
        outcome.report,
        outcome.message,
        recipients,
        settings.mail_from,
    )


@safe_step
def notice_message(district: str, notice: Notice) -> EmailMessage:
    settings = load_settings()
    with connect(_url(settings), autocommit=True) as conn:
        found, recipients = _addressees(conn, district)
    return build_notice_message(
        found.code, found.name, notice.subject, notice.lines, recipients, settings.mail_from
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
    with connect(_url(), autocommit=True) as conn:
        store.record_email(conn, run_id, status, detail)


SettleAction = Literal["deleted", "kept", "already gone"]


@dataclass(frozen=True)
class Settled:
    action: SettleAction
    reason: str


def settle_rule(status: str) -> tuple[bool, str]:
    """Whether the source file goes, and why, once an outcome of `status` is committed."""
    if status in DELETE_AFTER:
        return True, f"the sync {status} and is recorded"
    reasons = {
        "held": "the sync is held: the file waits for a data manager to approve or discard it",
        "preview": "a preview changes nothing: the file stays for the sync",
        "failed": "the run failed: the file stays for the next run",
    }
    return False, reasons.get(status, f"status {status}: the file stays")


@safe_step
def settle_file(district: str, source: DropFile, status: str, run_id: int | None) -> Settled:
    """Delete the source file after a committed outcome that has used it up; keep it else.
    Only the very file that was read goes: one replaced since (another upload under the same
    name) is left for the next run."""
    delete, reason = settle_rule(status)
    if not delete:
        return Settled("kept", reason)
    try:
        open_drop(load_settings()).delete(district, check_name(source.name), source)
        gone = False
    except FileChanged:
        return Settled("kept", "it was replaced after it was read: the new file waits")
    except FileGone:
        gone = True
    if run_id is not None:
        with connect(_url(), autocommit=True) as conn:
            store.record_file_deleted(conn, [run_id])
    return Settled("already gone" if gone else "deleted", reason)


@dataclass(frozen=True)
class Notice:
    """What the data managers are told about their drop, in words; never a file's contents."""

    subject: str
    lines: list[str]


@dataclass
class DropPlan:
    """A listing judged against what the service saw before."""

    ready: list[DropFile]
    settling: list[DropFile]
    too_large: list[DropFile]
    expired: list[DropFile]
    refused: list[RefusedEntry]  # all refused entries now in the drop
    refused_news: list[RefusedEntry]  # those the data managers have not been told about


@safe_step
def plan_drop(district: str, listing: DropListing) -> DropPlan:
    """Judge each file's age from when the service first saw it unchanged (an upload tool
    may keep the original modification time), and note which refusals are news."""
    settings = load_settings()
    limit = settings.max_file_bytes
    files = [*listing.ready, *listing.settling, *listing.too_large, *listing.expired]
    with connect(_url(settings), autocommit=True) as conn, conn.transaction():
        found = store.get_district(conn, district)
        first_seen = store.observe_drop(
            conn,
            found.district_id,
            [(f.name, f.size, f.modified) for f in files],
            [(r.name, r.reason) for r in listing.refused],
        )
        news = store.refusals_to_report(conn, found.district_id)
    cutoff = datetime.now(UTC) - timedelta(days=settings.retention_days)
    expired = [f for f in files if first_seen[f.name] <= cutoff]
    kept = {f.name for f in expired}
    plan = DropPlan(
        ready=[f for f in [*listing.ready, *listing.expired] if f.name not in kept],
        settling=[f for f in listing.settling if f.name not in kept],
        too_large=[f for f in listing.too_large if f.name not in kept],
        expired=sorted(expired, key=lambda f: (f.modified, f.name)),
        refused=listing.refused,
        refused_news=[r for r in listing.refused if r.name in news],
    )
    # A file judged young again after all (old time, newly seen) may be over the limit.
    plan.too_large += [f for f in plan.ready if f.size > limit]
    plan.ready = sorted(
        (f for f in plan.ready if f.size <= limit), key=lambda f: (f.modified, f.name)
    )
    return plan


@safe_step
def refusals_reported(district: str, entries: list[RefusedEntry]) -> None:
    with connect(_url(), autocommit=True) as conn:
        found = store.get_district(conn, district)
        store.mark_refusals_reported(conn, found.district_id, [r.name for r in entries])


def expiry_notice(names: list[str]) -> Notice:
    retention = load_settings().retention_days
    return Notice(
        f"{len(names)} old files deleted from the drop",
        [
            f"These files were in the drop for more than {retention:g} days and were deleted "
            "without being synced (a held sync among them is discarded):",
            *names,
            "Upload a file again if it is still needed.",
        ],
    )


def refused_notice(entries: list[RefusedEntry]) -> Notice:
    return Notice(
        f"{len(entries)} entries in the drop were not taken",
        [
            "These entries in the drop are left alone, and nothing in them is synced; remove "
            "them, or upload the file again as a plain file with a simple name ending in .csv:",
            *(f"{r.name}: {r.reason}" for r in entries),
        ],
    )


def discard_notice(held: store.HeldRun, manager: str, fate: str) -> Notice:
    return Notice(
        f"held sync {held.run_id} discarded",
        [
            f"The held sync {held.run_id} of {held.file_name} was discarded by {manager}; "
            "nothing was applied.",
            f"Source file: {fate}.",
        ],
    )


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
def expire_files(district: str, files: list[DropFile], requested_by: str) -> list[str]:
    """Delete files past retention whatever their state; their waiting holds are discarded."""
    settings = load_settings()
    drop = open_drop(settings)
    deleted = []
    with connect(_url(settings), autocommit=True) as conn:
        found = store.get_district(conn, district)
        for f in files:
            try:
                drop.delete(district, check_name(f.name), f)
            except FileChanged:
                continue  # a new upload under that name: it is judged afresh next time
            except FileGone:
                pass
            store.discard_holds(conn, found.district_id, requested_by, file_name=f.name)
            deleted.append(f.name)
    return deleted


@safe_step
def reject_unread(district: str, file: DropFile, requested_by: str) -> tuple[int, Notice]:
    """Record a file too large to read as a rejected run; the caller then tells the data
    managers (the notice) and deletes it, as after any rejection."""
    settings = load_settings()
    message = (
        f"{file.name} is {megabytes(file.size)}, over the limit of "
        f"{megabytes(settings.max_file_bytes)}; "
        "it was rejected unread and deleted. Split it into smaller files and upload them"
    )
    with connect(_url(settings), autocommit=True) as conn:
        found = store.get_district(conn, district)
        with conn.transaction(), conn.cursor() as cur:
            run_id = store.insert_run(
                cur,
                district_id=found.district_id,
                kind="sync",
                status="rejected",
                file_name=file.name,
                file_bytes=file.size,
                requested_by=requested_by,
                started_at=datetime.now(UTC),
                message=message,
            )
    return run_id, Notice(f"{file.name} rejected: too large", [message])


@safe_step
def check_same_file(held: store.HeldRun, fetched: FetchedFile) -> Refused | None:
    """Approving applies exactly the file that was held: a replaced file must be uploaded
    (and judged) again."""
    if fetched.sha256 == held.file_sha256:
        return None
    return Refused(
        f"{fetched.name} in the drop is not the file held by run {held.run_id} (its SHA-256 "
        "differs): it was replaced after the hold. Nothing was applied; the new file is "
        "synced (and judged) on the next run"
    )

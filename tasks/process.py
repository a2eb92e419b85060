"""The units of work the Prefect flows compose: one district file from the drop to the inbox.

Each function takes names and ids (never student values), reads its own settings, and is safe
to hand to Prefect: what it returns stays in memory (the flows turn result persistence off),
and what it raises carries no student value and no chained cause, because Prefect records a
failed task's message and traceback. The rules of settling a source file live here too, so the
flows only say what runs in which order.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Literal, ParamSpec, TypeVar

import psycopg

from tasks import access, store
from tasks.db import DatabaseUnavailable, MigrationChanged, connect, describe_error
from tasks.db import ready_database_url as _ready_database_url
from tasks.drop import (
    DropError,
    DropFile,
    DropListing,
    FetchedFile,
    check_name,
    megabytes,
    open_drop,
)
from tasks.mail import Delivery, MailError, build_notice_message, build_results_message
from tasks.mail import send_message as _send_message
from tasks.settings import Settings, load_settings
from tasks.sync import Mode, SyncOutcome, run_file

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

# Outcomes after which the source file has done its job: the result is committed and
# recorded, and a fixed file comes back under a new upload.
DELETE_AFTER = frozenset({"succeeded", "rejected"})
SAFE_ERRORS = (
    DropError,
    MailError,
    DatabaseUnavailable,
    MigrationChanged,
    store.UnknownDistrict,
    store.DistrictBusy,
    store.NotHeld,
    access.AccessError,
)


class StepFailed(Exception):
    """A step could not finish; the message says why and carries no student value."""


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
        except SAFE_ERRORS as exc:
            raise _clean(exc) from None
        except StepFailed as exc:
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
def list_drop(district: str) -> DropListing:
    return open_drop(load_settings()).list(district)


@safe_step
def fetch_file(district: str, name: str) -> FetchedFile:
    return open_drop(load_settings()).fetch(district, check_name(name))


@safe_step
def delete_file(district: str, name: str) -> bool:
    return open_drop(load_settings()).delete(district, check_name(name))


@safe_step
def waiting_hold(district: str, sha256: str) -> int | None:
    """A held run of this very file still waiting for a data manager, if any."""
    with connect(_url(), autocommit=True) as conn:
        found = store.get_district(conn, district)
        return store.waiting_hold(conn, found.district_id, sha256)


@safe_step
def sync_file(
    district: str,
    fetched: FetchedFile,
    mode: Mode,
    requested_by: str,
    approve: bool = False,
) -> SyncOutcome:
    settings = load_settings()
    return run_file(
        _url(settings),
        district,
        fetched.data,
        fetched.name,
        mode=mode,
        approve=approve,
        requested_by=requested_by,
        lock_wait_seconds=settings.lock_wait_seconds,
    )


@safe_step
def held_sync(run_id: int) -> store.HeldRun:
    with connect(_url(), autocommit=True) as conn:
        return store.held_run(conn, run_id)


@safe_step
def approver(held: store.HeldRun, approved_by: str) -> str:
    """Only a data manager of the district approves a hold; the act is recorded with who and
    when (the run that applies it records them again). Returns the email as on record."""
    with connect(_url(), autocommit=True) as conn:
        return access.record_manager_act(
            conn, held.district, approved_by, "approve_held_sync", {"run_id": held.run_id}
        )


@safe_step
def discard_held(run_id: int, discarded_by: str) -> tuple[store.HeldRun, str]:
    """A data manager's decision, recorded (act and resolution in one transaction) before the
    file is removed, and only if it is that file. Returns the run and the manager's email."""
    with connect(_url(), autocommit=True) as conn, conn.transaction():
        held = store.held_run(conn, run_id)
        district = store.get_district(conn, held.district)
        by = access.record_manager_act(
            conn, held.district, discarded_by, "discard_held_sync", {"run_id": run_id}
        )
        store.discard_holds(conn, district.district_id, by, run_id=run_id)
        return held, by


@safe_step
def apply_access_views() -> list[str]:
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
def notice_message(district: str, subject: str, lines: list[str]) -> EmailMessage:
    settings = load_settings()
    with connect(_url(settings), autocommit=True) as conn:
        found, recipients = _addressees(conn, district)
    return build_notice_message(
        found.code, found.name, subject, lines, recipients, settings.mail_from
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
def settle_file(district: str, name: str, status: str, run_id: int | None) -> Settled:
    """Delete the source file after a committed outcome that has used it up; keep it else."""
    delete, reason = settle_rule(status)
    if not delete:
        return Settled("kept", reason)
    gone = not open_drop(load_settings()).delete(district, check_name(name))
    if run_id is not None:
        with connect(_url(), autocommit=True) as conn:
            store.record_file_deleted(conn, [run_id])
    return Settled("already gone" if gone else "deleted", reason)


@safe_step
def expire_files(district: str, files: list[DropFile], requested_by: str) -> list[str]:
    """Delete files past retention whatever their state; their waiting holds are discarded."""
    settings = load_settings()
    drop = open_drop(settings)
    deleted = []
    with connect(_url(settings), autocommit=True) as conn:
        found = store.get_district(conn, district)
        for f in files:
            store.discard_holds(conn, found.district_id, requested_by, file_name=f.name)
            drop.delete(district, check_name(f.name))
            deleted.append(f.name)
    return deleted


@safe_step
def reject_unread(district: str, file: DropFile, requested_by: str) -> tuple[int, str]:
    """Record a file too large to read as a rejected run (id and message); the caller then
    tells the data managers and deletes it, as after any rejection."""
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
    return run_id, message


@safe_step
def check_same_file(held: store.HeldRun, fetched: FetchedFile) -> None:
    """Approving applies exactly the file that was held: a replaced file must be uploaded
    (and judged) again."""
    if fetched.sha256 != held.file_sha256:
        raise StepFailed(
            f"{fetched.name} in the drop is not the file held by run {held.run_id} (its SHA-256 "
            "differs): it was replaced after the hold. Nothing was applied; the new file is "
            "synced (and judged) on the next run"
        )

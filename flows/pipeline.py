"""The Prefect flows: which tasks run, in what order, with what retries. No business logic.

Every task here handles student data or its report, so all of them share one setting: results
are never persisted, never cached, and `print` is never logged. Flow parameters are district
codes, file names, run ids and people; values travel only in memory between tasks. Large
objects are passed `quote`d so Prefect does not walk them looking for futures.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from prefect.states import State
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from tasks import process
from tasks.settings import load_settings

# --- task settings, in one place ---------------------------------------------------------

PRIVATE: dict[str, Any] = {"persist_result": False, "cache_policy": NO_CACHE, "log_prints": False}

check_database = task(process.check_database, name="check-database", **PRIVATE)
active_districts = task(process.active_districts, name="active-districts", **PRIVATE)
# The drop retries its own connections with backoff (settings: sftp_attempts,
# sftp_backoff_seconds): a Prefect retry on top would multiply the waits.
list_drop = task(process.list_drop, name="list-drop", **PRIVATE)
fetch_file = task(process.fetch_file, name="fetch-file", **PRIVATE)
waiting_hold = task(process.waiting_hold, name="find-waiting-hold", **PRIVATE)
check_same_file = task(process.check_same_file, name="check-same-file", **PRIVATE)
sync_file = task(process.sync_file, name="validate-match-apply", **PRIVATE)
held_sync = task(process.held_sync, name="find-held-sync", **PRIVATE)
approver = task(process.approver, name="check-data-manager", **PRIVATE)
discard_held = task(process.discard_held, name="discard-held-sync", **PRIVATE)
apply_views = task(process.apply_access_views, name="apply-access-views", **PRIVATE)
results_message = task(process.results_message, name="render-results-email", **PRIVATE)
notice_message = task(process.notice_message, name="render-notice-email", **PRIVATE)
# Sending is retried (settings: mail_attempts, mail_retry_seconds), then the failure is
# recorded on the run; it never undoes a committed sync.
send_message = task(process.send_message, name="send-email", **PRIVATE)
record_delivery = task(process.record_delivery, name="record-email", **PRIVATE)
settle_file = task(process.settle_file, name="settle-source-file", **PRIVATE)
delete_file = task(process.delete_file, name="delete-source-file", **PRIVATE)
expire_files = task(process.expire_files, name="expire-old-files", **PRIVATE)
reject_unread = task(process.reject_unread, name="reject-too-large", **PRIVATE)

FLOW_SETTINGS: dict[str, Any] = {"persist_result": False, "log_prints": False}


class FileFailed(Exception):
    """The file's run failed; it is kept in the drop for the next run."""


class DistrictFailed(Exception):
    """A district's drop could not be worked through; the message says which file and why."""


class NightlyFailed(Exception):
    """One or more districts failed; the message names them."""


def _requester(requested_by: str | None) -> str:
    if requested_by:
        return requested_by
    context = get_run_context()
    name = getattr(getattr(context, "flow_run", None), "name", None)
    flow_name = getattr(getattr(context, "flow", None), "name", "flow")
    return f"prefect:{flow_name}" + (f"/{name}" if name else "")


def _smtp_password() -> str | None:
    name = load_settings().smtp_password_secret
    if not name:
        return None
    from prefect.blocks.system import Secret

    return Secret.load(name).get()


def _send(message: Any, run_id: int | None) -> str:
    """Send with retries; record how it went on the run. Returns a phrase for the log."""
    settings = load_settings()
    sender = send_message.with_options(
        retries=settings.mail_attempts - 1, retry_delay_seconds=settings.mail_retry_seconds
    )
    try:
        delivery = sender(quote(message), _smtp_password())
    except Exception as exc:  # task exceptions carry no values (tasks.process.safe_step)
        record_delivery(run_id, None, str(exc))
        get_run_logger().warning("the email could not be sent: %s", exc)
        return "email failed"
    record_delivery(run_id, delivery, None)
    return f"email {delivery.kind}"


def _notify(district: str, subject: str, lines: list[str], run_id: int | None = None) -> None:
    _send(notice_message(district, subject, lines), run_id)


# --- flows --------------------------------------------------------------------------------


@flow(name="process-file", **FLOW_SETTINGS)
def process_file(
    district: str,
    file_name: str,
    mode: Literal["preview", "sync"] = "sync",
    requested_by: str | None = None,
) -> dict[str, Any]:
    """Fetch one file from the district's drop, preview or sync it, email the results, and
    delete the file once its outcome is committed (kept when held, previewed or failed)."""
    log = get_run_logger()
    by = _requester(requested_by)
    check_database()
    fetched = fetch_file(district, file_name)
    if mode == "sync":
        waiting = waiting_hold(district, fetched.sha256)
        if waiting is not None:
            log.info("%s is held by run %s, waiting for a data manager; kept", file_name, waiting)
            return {"status": "held", "run_id": waiting, "file": "kept"}
    outcome = sync_file(district, quote(fetched), mode, by)
    del fetched
    block = outcome.report.sync
    log.info(
        "%s: %s (run %s): matched %s, updated %s, unchanged %s, unmatched %s",
        file_name,
        block.status,
        block.run_id,
        block.matched,
        block.updated,
        block.unchanged,
        block.unmatched,
    )
    emailed = _send(results_message(district, quote(outcome)), outcome.run_id)
    settled = settle_file(district, file_name, outcome.status, outcome.run_id)
    log.info("%s: %s; source file %s (%s)", file_name, emailed, settled.action, settled.reason)
    if outcome.status == "failed":
        raise FileFailed(f"{file_name}: {outcome.message}; the file is kept for the next run")
    return {
        "status": outcome.status,
        "run_id": outcome.run_id,
        "matched": block.matched,
        "updated": block.updated,
        "unmatched": block.unmatched,
        "errors": outcome.report.summary.errors,
        "file": settled.action,
    }


@flow(name="sync-district-drop", **FLOW_SETTINGS)
def sync_district_drop(district: str, requested_by: str | None = None) -> dict[str, Any]:
    """Every ready file of one district, oldest first. Files past retention are deleted, files
    too large are rejected unread, and the first failed file stops the district: a later file
    must not be applied before an earlier one."""
    log = get_run_logger()
    by = _requester(requested_by)
    check_database()
    listing = list_drop(district)
    retention = load_settings().retention_days
    if listing.expired:
        names = expire_files(district, listing.expired, by)
        _notify(
            district,
            f"{len(names)} old files deleted from the drop",
            [
                f"These files were in the drop for more than {retention:g} days and were "
                "deleted without being synced (a held sync among them is discarded):",
                *names,
                "Upload a file again if it is still needed.",
            ],
        )
    for big in listing.too_large:
        run_id, message = reject_unread(district, big, by)
        _notify(district, f"{big.name} rejected: too large", [message], run_id)
        settle_file(district, big.name, "rejected", run_id)
    if listing.refused:
        log.warning("%s entries in the drop were refused and left alone", len(listing.refused))
        _notify(
            district,
            f"{len(listing.refused)} entries in the drop were not taken",
            [
                "These entries in the drop were left alone; remove or rename them:",
                *(f"{r.name}: {r.reason}" for r in listing.refused),
            ],
        )
    if listing.settling:
        log.info("%s files are still settling; they wait for the next run", len(listing.settling))
    done: list[dict[str, Any]] = []
    for position, ready in enumerate(listing.ready):
        state: State = process_file(district, ready.name, "sync", by, return_state=True)
        if state.is_failed():
            waiting = len(listing.ready) - position - 1
            raise DistrictFailed(
                f"district {district}: {ready.name} failed ({state.message}); it and the "
                f"{waiting} files after it wait for the next run"
            )
        done.append(state.result())
    log.info("district %s: %s files processed", district, len(done))
    return {"district": district, "files": len(done), "settling": len(listing.settling)}


@task(name="district", **PRIVATE)
def _district(district: str, requested_by: str) -> dict[str, Any]:
    return sync_district_drop(district, requested_by)


@flow(
    name="nightly-sync",
    task_runner=ThreadPoolTaskRunner(max_workers=load_settings().district_concurrency),
    **FLOW_SETTINGS,
)
def nightly_sync(requested_by: str | None = None) -> dict[str, Any]:
    """Every active district's drop, several districts at once; one district's failure never
    stops the others, and the run ends failed naming the districts that failed."""
    by = _requester(requested_by)
    check_database()
    districts = active_districts()
    futures = {code: _district.submit(code, by) for code in districts}
    failed = []
    for code, future in futures.items():
        future.wait()
        if future.state.is_failed():
            failed.append(code)
    if failed:
        raise NightlyFailed(
            f"{len(failed)} of {len(districts)} districts failed: {', '.join(failed)} "
            "(their sync-district-drop runs say why)"
        )
    get_run_logger().info("%s districts synced", len(districts))
    return {"districts": len(districts)}


@flow(name="approve-held-sync", **FLOW_SETTINGS)
def approve_held_sync(run_id: int, approved_by: str) -> dict[str, Any]:
    """Apply the held file, checked to be the same file by SHA-256, then delete it. Only a
    data manager of the district (`approved_by`, their email) may approve."""
    log = get_run_logger()
    check_database()
    held = held_sync(run_id)
    manager = approver(held, approved_by)
    fetched = fetch_file(held.district, held.file_name)
    check_same_file(held, quote(fetched))
    outcome = sync_file(held.district, quote(fetched), "sync", manager, approve=True)
    del fetched
    emailed = _send(results_message(held.district, quote(outcome)), outcome.run_id)
    settled = settle_file(held.district, held.file_name, outcome.status, outcome.run_id)
    log.info(
        "held run %s: %s as run %s; %s; source file %s",
        run_id,
        outcome.status,
        outcome.run_id,
        emailed,
        settled.action,
    )
    if outcome.status == "failed":
        raise FileFailed(f"{held.file_name}: {outcome.message}; the hold still waits")
    return {"status": outcome.status, "run_id": outcome.run_id, "file": settled.action}


@flow(name="discard-held-sync", **FLOW_SETTINGS)
def discard_held_sync(run_id: int, discarded_by: str) -> dict[str, Any]:
    """Record a data manager's decision, then delete the held file if the drop still has that
    very file."""
    log = get_run_logger()
    check_database()
    held, manager = discard_held(run_id, discarded_by)
    state = fetch_file(held.district, held.file_name, return_state=True)
    if state.is_completed() and state.result().sha256 == held.file_sha256:
        delete_file(held.district, held.file_name)
        fate = "deleted"
    elif state.is_completed():
        fate = "left alone: the drop now has a different file under that name"
    else:
        fate = "already gone"
    del state
    log.info("held run %s discarded; source file %s", run_id, fate)
    _notify(
        held.district,
        f"held sync {run_id} discarded",
        [
            f"The held sync {run_id} of {held.file_name} was discarded by {manager}; "
            "nothing was applied.",
            f"Source file: {fate}.",
        ],
    )
    return {"run_id": run_id, "file": fate}


@flow(name="apply-access-views", **FLOW_SETTINGS)
def apply_access_views() -> dict[str, Any]:
    """Re-apply the reporting view and its grants (idempotent; safe while people query)."""
    applied = apply_views()
    get_run_logger().info("applied %s", ", ".join(applied) or "nothing")
    return {"applied": applied}

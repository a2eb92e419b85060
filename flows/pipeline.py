"""The Prefect flows: which tasks run, in what order, with what retries. No business logic.

Every task here handles student data or its report, so all of them share one setting: results
are never persisted, never cached, and `print` is never logged. Flow parameters are district
codes, file names, run ids and people; values travel only in memory between tasks. Large
objects are passed `quote`d so Prefect does not walk them looking for futures.

A refused request (see `tasks.process.Refused`) is never raised: Prefect's engines log a
raised exception with its traceback. The step returns the refusal, and the flow returns a
Failed state whose message is the one-line reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import SettingsContext, get_run_context, get_settings_context
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY
from prefect.states import Completed, Failed, State
from prefect.utilities.annotations import quote

from flows.fanout import (
    DISTRICT_DEPLOYMENT,
    check_served,
    district_files,
    start_district_runs,
    wait_for_districts,
)
from tasks import process
from tasks.drop import DropFile
from tasks.errors import DemographicsError, is_transient
from tasks.process import Refused, roster
from tasks.process.outcome import (
    NIGHTLY_ARTIFACT,
    NOTHING_TO_DO,
    STATE_NAMES,
    artifact_key,
    district_totals,
    nightly_rows,
    outcome_line,
    outcome_markdown,
    state_name,
)
from tasks.settings import load_settings
from tasks.sync import SyncOutcome

# --- task settings, in one place ---------------------------------------------------------

PRIVATE: dict[str, Any] = {"persist_result": False, "cache_policy": NO_CACHE, "log_prints": False}

# A step that reads or writes the outside world (the drop, a sync, the mail server) or that a
# person may want to see on its own in the UI is a Prefect task, named by Prefect for the
# function it wraps (its __name__). Quick checks and pure steps are plain calls: every task run
# costs the run's process and the Prefect server tens of milliseconds of CPU (its states are
# events the server records), which at one small file a district was most of a night's work.
# Plain calls raise the same one-line errors (tasks.process.safety), failing the flow run.
check_database = process.check_database
check_file_request = process.check_file_request
find_held_run = process.find_held_run
plan_drop = process.plan_drop
results_message = process.results_message
notice_message = process.notice_message
record_delivery = process.record_delivery

active_districts = task(process.active_districts, **PRIVATE)
clean_staging = task(process.clean_staging, **PRIVATE)
# The drop retries its own connections with backoff (settings: sftp_attempts,
# sftp_backoff_seconds): a Prefect retry on top would multiply the waits.
list_drop = task(process.list_drop, **PRIVATE)
fetch_file = task(process.fetch_file, **PRIVATE)
check_same_file = task(process.check_same_file, **PRIVATE)
sync_file = task(process.sync_file, **PRIVATE)
held_sync = task(process.held_sync, **PRIVATE)
check_approver = task(process.check_approver, **PRIVATE)
discard_held = task(process.discard_held, **PRIVATE)
discard_source_file = task(process.discard_source_file, **PRIVATE)
apply_views_and_grants = task(process.apply_views_and_grants, **PRIVATE)
set_teacher_fields = task(process.set_teacher_fields, **PRIVATE)
# Sending is retried when the failure may pass (settings: mail_attempts, mail_retry_seconds),
# then the failure is recorded on the run; it never undoes a committed sync.
send_message = task(
    process.send_message,
    retry_condition_fn=lambda _task, _run, state: is_transient(
        state.result(raise_on_failure=False)
    ),
    **PRIVATE,
)
settle_file = task(process.settle_file, **PRIVATE)
record_preview = task(process.record_preview, **PRIVATE)
take_roster = task(roster.take_roster, **PRIVATE)
approve_roster = task(roster.approve_roster, **PRIVATE)
settle_roster = task(roster.settle_roster, **PRIVATE)
discard_roster_files = task(roster.discard_roster_files, **PRIVATE)
expire_files = task(process.expire_files, **PRIVATE)
reject_unread = task(process.reject_unread, **PRIVATE)
mark_refusals_reported = task(process.mark_refusals_reported, **PRIVATE)

FLOW_SETTINGS: dict[str, Any] = {"persist_result": False, "log_prints": False}


class FileFailed(DemographicsError):
    """The file's run failed; it is kept in the drop for the next run."""


class DistrictFailed(DemographicsError):
    """A district's drop could not be worked through; the message says which file and why."""


class NightlyFailed(DemographicsError):
    """One or more districts failed; the message names them."""


PREVIEW = "preview"  # the district's preview/ folder: files checked, emailed, never synced
REFUSED = "Refused"  # the name of a Failed state that is a refusal, not a breakage


def _refuse(refused: Refused) -> State:
    """End the run Failed with the reason as its message, and no traceback anywhere."""
    get_run_logger().warning("refused: %s", refused.reason)
    return Failed(message=refused.reason, name=REFUSED)


# Who started a run is taken from the run, never typed into the run form: a flow that runs
# others in this process (nightly, a district's drop) lends them its own for their records.
_STARTED_BY: ContextVar[str | None] = ContextVar("demographics_started_by", default=None)


def _requester() -> str:
    """Who started this run, as the run records say it: the run that started it in this
    process, else this flow run by name with the run that started it from another process
    (the nightly run, for a district) or the user or automation Prefect recorded."""
    lent = _STARTED_BY.get()
    if lent:
        return lent
    context = get_run_context()
    run = getattr(context, "flow_run", None)
    flow_name = getattr(getattr(context, "flow", None), "name", "flow")
    who = f"prefect:{flow_name}" + (f"/{run.name}" if getattr(run, "name", None) else "")
    parent = _started_from(run)
    created = getattr(run, "created_by", None)
    if parent:
        who += f" (started by {parent})"
    elif created is not None and getattr(created, "display_value", None):
        who += f" ({str(created.type).lower()} {created.display_value})"
    return who


def _started_from(run: Any) -> str | None:
    """`flow/run` of the flow run that started `run` (by run_deployment), if any."""
    parent_task = getattr(run, "parent_task_run_id", None)
    if parent_task is None:
        return None
    from prefect import get_client

    try:
        with get_client(sync_client=True) as client:
            parent = client.read_flow_run(client.read_task_run(parent_task).flow_run_id)
            return f"{client.read_flow(parent.flow_id).name}/{parent.name}"
    except Exception:  # a name for the record; the run goes on without it
        return None


@contextmanager
def _lending(who: str) -> Iterator[None]:
    """The runs started inside (in this process, threads included) are requested by `who`."""
    token = _STARTED_BY.set(who)
    try:
        yield
    finally:
        _STARTED_BY.reset(token)


def _smtp_password() -> str | None:
    name = load_settings().smtp_password_secret
    if not name:
        return None
    from prefect.blocks.system import Secret

    return Secret.load(name, _sync=True).get()  # _sync: also from an async flow


EMAIL_FAILED = "email failed"  # how `_email`'s phrase starts when nothing was sent


def _email(render: Callable[[], Any], run_id: int | None) -> str:
    """Render, send (with retries) and record; after a committed sync, none of it may fail
    the run. Returns a phrase for the log."""
    settings = load_settings()
    sender = send_message.with_options(
        retries=settings.mail_attempts - 1, retry_delay_seconds=settings.mail_retry_seconds
    )
    try:
        delivery = sender(quote(render()), _smtp_password())
    except Exception as exc:  # task exceptions carry no values (tasks.process.safe_step)
        get_run_logger().warning("the email could not be sent: %s", exc)
        recorded = _recorded(run_id, None, str(exc))
        return EMAIL_FAILED + ("" if recorded else " (and not recorded)")
    recorded = _recorded(run_id, delivery, None)
    return f"email {delivery.kind}" + ("" if recorded else " (not recorded)")


def _recorded(run_id: int | None, delivery: Any, error: str | None) -> bool:
    """Record the email's fate on the run; False when the database would not (logged)."""
    try:
        record_delivery(run_id, delivery, error)
    except DemographicsError as exc:  # its message is safe (tasks.process.safety)
        get_run_logger().warning("the email's fate was not recorded: %s", exc)
        return False
    return True


def _notify(district: str, notice: process.Notice, run_id: int | None = None) -> str:
    return _email(lambda: notice_message(district, notice), run_id)


def _settle(
    district: str, source: DropFile, status: str, run_id: int | None, folder: str = ""
) -> str:
    """Settle the source file; a failure here (the drop gone after the commit) leaves the
    file for the next run, which recognises it and deletes it. Returns what became of it."""
    log = get_run_logger()
    state = settle_file(district, source, status, run_id, folder, return_state=True)
    if state.is_completed():
        settled = state.result(_sync=True)  # _sync: also when called from an async flow
        log.info("%s: source file %s (%s)", source.name, settled.action, settled.reason)
        return settled.action
    log.warning("%s: the source file could not be settled: %s", source.name, state.message)
    return "kept"


# --- flows --------------------------------------------------------------------------------


def _file_run_name() -> str:
    """district/file, never a typed value that is not a district code (it may be an email)."""
    from prefect.runtime import flow_run

    parameters = flow_run.parameters
    return process.file_run_name(parameters.get("district"), parameters.get("file_name"))


def _district_run_name() -> str:
    from prefect.runtime import flow_run

    return process.district_run_name(flow_run.parameters.get("district"))


@flow(name="process-file", flow_run_name=_file_run_name, **FLOW_SETTINGS)
def process_file(
    district: str,
    file_name: str,
    mode: Literal["preview", "sync"] = "sync",
    folder: Literal["", "preview"] = "",
) -> State:
    """Fetch one file from the district's drop, preview or sync it, email the results, and
    delete the file once its outcome is committed (kept when held, previewed or failed).
    A file of the preview/ folder is always previewed, recorded as a preview run, and deleted
    once its email is out. The run ends in a state named for the outcome (Succeeded,
    Rejected, Held, Previewed, Already applied, Nothing to do) and publishes it as the
    district's artifact. Refused: an unknown district, an unsafe name, a file that may still
    be uploading.

    Args:
        district: The district's code, as its drop folder is named.
        file_name: The file's name in the district's drop folder.
        mode: sync applies the file; preview checks and matches it, writes nothing, and
            keeps the file.
        folder: preview for a file in the district's preview/ folder; empty for a file in
            the district folder itself.
    """
    log = get_run_logger()
    by = _requester()
    check_database()
    mode = "preview" if folder == "preview" else mode
    refused = check_file_request(district, file_name, folder)
    if refused is not None:
        return _refuse(refused)
    fetched = fetch_file(district, file_name, folder)
    if fetched is None:
        log.info("%s is no longer in the drop; nothing to do", file_name)
        return _ended(
            NOTHING_TO_DO, f"{file_name} is no longer in the drop", status="gone", file="gone"
        )
    if isinstance(fetched, Refused):
        return _refuse(fetched)
    if mode == "sync":
        holding = find_held_run(district, fetched.sha256)
        if holding is not None:
            log.info("%s is held by run %s, waiting for a data manager; kept", file_name, holding)
            said = f"{file_name} is held by run {holding}, waiting for a data manager"
            return _ended(STATE_NAMES["held"], said, status="held", run_id=holding, file="kept")
    source = process.source_of(fetched)
    outcome = sync_file(district, quote(fetched), mode, by)
    del fetched
    if isinstance(outcome, Refused):
        return _refuse(outcome)
    if folder == "preview":
        outcome = record_preview(district, quote(outcome), by)
    block = outcome.report.sync
    # The file's own run says what became of it: outcome, counts, reason, the error rows.
    log.info("%s", outcome_line(file_name, outcome))
    # The outcome is committed: from here on nothing fails the run except the outcome itself.
    emailed = _email(lambda: results_message(district, outcome, folder), outcome.run_id)
    if folder == "preview" and emailed.startswith(EMAIL_FAILED):
        settled = "kept"  # deleted once its email is out: tried again next run
    else:
        settled = _settle(district, source, outcome.status, outcome.run_id, folder)
    log.info("%s: %s", file_name, emailed)
    _publish(district, file_name, outcome)
    if outcome.status == "failed":
        raise FileFailed(f"{file_name}: {outcome.message}; the file is kept for the next run")
    return _ended(
        state_name(outcome),
        f"{file_name}: {outcome.message}",
        status=outcome.status,
        run_id=outcome.run_id,
        matched=block.matched,
        updated=block.updated,
        unmatched=block.unmatched,
        errors=outcome.report.summary.errors,
        file=settled,
    )


def _ended(name: str, message: str, **result: Any) -> State:
    """A Completed state named for the outcome, so the run list in the UI says what became
    of each file; the result stays in memory for a parent flow in this process."""
    return Completed(name=name, message=message, data=result)


def _publish(district: str, file_name: str, outcome: SyncOutcome) -> None:
    """The outcome as a markdown artifact keyed by district; a failure to publish it is
    logged, never a failed run (the outcome is committed)."""
    context = get_run_context()
    run = getattr(getattr(context, "flow_run", None), "id", None)
    try:
        create_markdown_artifact(
            markdown=outcome_markdown(district, file_name, outcome, str(run)),
            key=artifact_key(district),
            description=f"{state_name(outcome)}: the latest file of district {district}",
        )
    except Exception as exc:  # the API may be away; the run's outcome stands
        get_run_logger().warning("the outcome artifact was not published (%s)", type(exc).__name__)


# An async flow, though all it does is synchronous: Prefect's engine joins a synchronous flow
# run's heartbeat thread as the run ends, which costs up to a second (the thread sleeps in 1 s
# steps), and a night has a district run per district. The heartbeats themselves stay on (they
# tell a run whose process died). In an async flow, Prefect's functions that have an async
# twin (a state's result, creating an artifact) return a coroutine unless told `_sync=True`.
@flow(name="sync-district-drop", flow_run_name=_district_run_name, **FLOW_SETTINGS)
async def sync_district_drop(district: str) -> dict[str, Any]:
    """Every ready file of one district, oldest first. Files past retention are deleted, files
    too large are rejected unread, and the first failed file stops the district: a later file
    must not be applied before an earlier one. Its files, with their outcomes and counts, are
    published as a table on its run (the nightly run reads them back from there).

    Args:
        district: The district's code, as its drop folder is named.
    """
    log = get_run_logger()
    by = _requester()
    check_database()
    _roster_first(district, by)
    _previews(district, by)
    plan = plan_drop(district, list_drop(district))
    _before_the_files(district, plan, by)
    done: list[dict[str, Any]] = []
    try:
        _each_ready_file(district, plan.ready, by, done)
    finally:
        _publish_files(district, done)
    log.info("district %s: %s files processed", district, len(done))
    return {"district": district, "settling": len(plan.settling), **district_totals(done)}


def _roster_first(district: str, by: str) -> None:
    """A roster waiting in the district's roster/ folder is loaded before its files, so a
    student new this week is matched tonight; it is told, then its files are deleted."""
    plan = plan_drop(district, list_drop(district, roster.ROSTER), roster.ROSTER)
    _before_the_files(district, plan, by, roster.ROSTER)
    taken = take_roster(district, by, plan)
    if taken is None:
        return
    get_run_logger().info("%s", taken.message)
    if taken.notice is not None:
        get_run_logger().info("roster: %s", _notify(district, taken.notice, taken.run_id))
    if taken.delete:
        get_run_logger().info("roster files: %s", settle_roster(district, taken.delete))


def _previews(district: str, by: str) -> None:
    """Each ready file of the district's preview/ folder, previewed and emailed, then
    deleted; before the files to sync, so a preview shows what their sync would do."""
    plan = plan_drop(district, list_drop(district, PREVIEW), PREVIEW)
    _before_the_files(district, plan, by, PREVIEW)
    for file in plan.ready:
        with _lending(by), _without_heartbeats():
            state: State = process_file(district, file.name, folder=PREVIEW, return_state=True)
        if not state.is_completed():  # kept for the next run; the files to sync go on
            get_run_logger().warning("preview of %s: %s", file.name, state.message)


def _before_the_files(
    district: str, plan: process.DropPlan, by: str, folder: Literal["", "preview", "roster"] = ""
) -> None:
    """What a listing asks for before the ready files: expired files deleted, files too
    large rejected unread (a roster's are reported with the roster), refused entries
    reported once."""
    log = get_run_logger()
    if plan.expired:
        deleted = expire_files(district, plan.expired, by, folder)
        _notify(district, process.expiry_notice(deleted, load_settings().retention_days))
    for big in plan.too_large if folder != roster.ROSTER else []:
        run_id, notice = reject_unread(district, big, by)
        _notify(district, notice, run_id)
        _settle(district, big, "rejected", run_id, folder)
    if plan.refused:
        log.warning("%s entries in the drop were refused and left alone", len(plan.refused))
    if plan.refused_news:
        _notify(district, process.refused_notice(plan.refused_news))
        mark_refusals_reported(district, plan.refused_news, folder)
    if plan.settling:
        log.info("%s files are still settling; they wait for the next run", len(plan.settling))


# An in-process file run sends no heartbeats of its own: the district run's heartbeat already
# says whether this process lives, and a heartbeat thread costs each run up to a second at its
# end (the engine joins it; it sleeps in 1 s steps). The settings without heartbeats are made
# once per process: making them (Prefect's temporary_settings) costs over 0.1 s of CPU.
_QUIET: dict[int, tuple[Any, Any]] = {}


@contextmanager
def _without_heartbeats() -> Iterator[None]:
    context = get_settings_context()
    key = id(context.settings)
    if key not in _QUIET:
        updates = {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
        _QUIET[key] = (context.settings, context.settings.copy_with_update(updates=updates))
    with SettingsContext(profile=context.profile, settings=_QUIET[key][1]):
        yield


def _each_ready_file(
    district: str, ready: list[DropFile], by: str, done: list[dict[str, Any]]
) -> None:
    """Each ready file as its own process-file run, in order, until one fails."""
    log = get_run_logger()
    for position, file in enumerate(ready):
        with _lending(by), _without_heartbeats():
            state: State = process_file(district, file.name, "sync", return_state=True)
        waiting = len(ready) - position - 1
        if state.is_failed() and state.name == REFUSED:
            # e.g. uploaded again since the listing: it and the files after it wait, in order
            log.warning(
                "%s was not taken (%s); it and the %s files after it wait for the next run",
                file.name,
                state.message,
                waiting,
            )
            return
        if state.is_failed():
            raise DistrictFailed(
                f"district {district}: {file.name} failed ({state.message}); it and the "
                f"{waiting} files after it wait for the next run"
            )
        done.append({**state.result(_sync=True), "file": file.name, "outcome": state.name})


FILE_COLUMNS = ("file", "outcome", "run_id", "matched", "updated", "unmatched", "errors")


def _publish_files(district: str, done: list[dict[str, Any]]) -> None:
    """The district's files as a table on its own run; never a failed run for it."""
    try:
        create_table_artifact(
            table=[{key: row.get(key) for key in FILE_COLUMNS} for row in done],
            description=f"district {district}: {len(done)} files",
            _sync=True,
        )
    except Exception as exc:  # the API may be away; the files' outcomes stand
        get_run_logger().warning("the district's table was not published (%s)", type(exc).__name__)


@flow(name="nightly-sync", **FLOW_SETTINGS)
def nightly_sync() -> dict[str, Any]:
    """Every active district's drop, each as its own sync-district-drop deployment run (on
    the work pool's workers, or served locally), shown under this run. One district's failure
    never stops the others; the run ends failed naming the districts that failed."""
    log = get_run_logger()
    check_database()
    clean_staging()
    districts = active_districts()
    check_served(DISTRICT_DEPLOYMENT)
    run_id = getattr(get_run_context().flow_run, "id", None)
    started = start_district_runs(districts, run_id)
    log.info("started %s district runs; waiting for them", len(started))
    ended = wait_for_districts(started, _district_ended)
    files = district_files(ended)
    failed = [code for code in districts if not ended[code].state.is_completed()]
    totals = {code: district_totals(files.get(code, [])) for code in districts}
    states = {code: ended[code].state.name for code in failed}
    _publish_nightly(nightly_rows(districts, totals, states), len(failed))
    if failed:
        raise NightlyFailed(
            f"{len(failed)} of {len(districts)} districts failed: {', '.join(failed)} "
            "(their sync-district-drop runs say why)"
        )
    log.info("%s districts synced", len(districts))
    return {"districts": len(districts)}


def _district_ended(district: str, run: Any) -> None:
    state = run.state
    line = f"district {district}: {state.name}" + (f" ({state.message})" if state.message else "")
    if state.is_completed():
        get_run_logger().info("%s", line)
    else:
        get_run_logger().warning("%s", line)


def _publish_nightly(rows: list[dict[str, Any]], failed: int) -> None:
    """One row per district as a table artifact; never a failed run for it."""
    try:
        create_table_artifact(
            table=rows,
            key=NIGHTLY_ARTIFACT,
            description=f"{len(rows)} districts, {failed} failed: files and outcomes",
        )
    except Exception as exc:  # the API may be away; the districts' outcomes stand
        get_run_logger().warning("the nightly artifact was not published (%s)", type(exc).__name__)


@flow(name="approve-held-sync", **FLOW_SETTINGS)
def approve_held_sync(run_id: int, approved_by: str) -> dict[str, Any] | State:
    """Apply the held file, checked to be the same file by SHA-256, then delete it. Only a
    data manager of the district (`approved_by`, their email) may approve. Refused: no such
    held run, already decided, not a data manager, the file gone or replaced.

    Args:
        run_id: The held sync's run id, as its email and `demographics runs` give it.
        approved_by: Your email: a data manager of the run's district.
    """
    log = get_run_logger()
    check_database()
    held = held_sync(run_id)
    if isinstance(held, Refused):
        return _refuse(held)
    refused = check_approver(held, approved_by)
    if refused is not None:
        return _refuse(refused)
    if held.kind == "roster":
        return _approve_roster(held, approved_by)
    fetched = fetch_file(held.district, held.file_name)
    if fetched is None:
        return _refuse(process.held_file_gone(held))
    if isinstance(fetched, Refused):
        return _refuse(fetched)
    refused = check_same_file(held, quote(fetched))
    if refused is not None:
        return _refuse(refused)
    source = process.source_of(fetched)
    outcome = sync_file(held.district, quote(fetched), "sync", _requester(), approved_by)
    del fetched
    if isinstance(outcome, Refused):
        return _refuse(outcome)
    emailed = _email(lambda: results_message(held.district, outcome), outcome.run_id)
    settled = _settle(held.district, source, outcome.status, outcome.run_id)
    log.info(
        "held run %s: %s as run %s; %s; source file %s",
        run_id,
        outcome.status,
        outcome.run_id,
        emailed,
        settled,
    )
    if outcome.status == "failed":
        raise FileFailed(f"{held.file_name}: {outcome.message}; the hold still waits")
    return {"status": outcome.status, "run_id": outcome.run_id, "file": settled}


def _approve_roster(held: Any, approved_by: str) -> dict[str, Any] | State:
    """A held roster: loaded without the guard if the drop still holds that very export."""
    taken = approve_roster(held, approved_by, _requester())
    if isinstance(taken, Refused):
        return _refuse(taken)
    emailed = _notify(held.district, taken.notice, taken.run_id) if taken.notice else "no email"
    files = settle_roster(held.district, taken.delete)
    get_run_logger().info("held run %s: %s; %s; files %s", held.run_id, taken.message, emailed,
                          files)  # fmt: skip
    return {"status": "succeeded", "run_id": taken.run_id, "file": files}


@flow(name="discard-held-sync", **FLOW_SETTINGS)
def discard_held_sync(run_id: int, discarded_by: str) -> dict[str, Any] | State:
    """Record a data manager's decision, then delete the held file if the drop still has that
    very file. Refused: no such held run, already decided, not a data manager.

    Args:
        run_id: The held sync's run id, as its email and `demographics runs` give it.
        discarded_by: Your email: a data manager of the run's district.
    """
    check_database()
    decided = discard_held(run_id, discarded_by, _requester())
    if isinstance(decided, Refused):
        return _refuse(decided)
    held, manager = decided
    discard = discard_roster_files if held.kind == "roster" else discard_source_file
    state = discard(held, return_state=True)
    fate = state.result() if state.is_completed() else f"not checked ({state.message})"
    get_run_logger().info("held run %s discarded; source file %s", run_id, fate)
    _notify(held.district, process.discard_notice(held, manager, fate))
    return {"run_id": run_id, "file": fate}


@flow(name="apply-access-views", **FLOW_SETTINGS)
def apply_access_views() -> dict[str, Any]:
    """Re-apply the reporting view and its grants (idempotent; safe while people query)."""
    result = apply_views_and_grants()
    log = get_run_logger()
    log.info("applied %s", ", ".join(result.applied) or "nothing")
    for step in result.owner_steps:
        log.warning("still to do: %s", step)
    return {"applied": list(result.applied), "owner_steps": [str(s) for s in result.owner_steps]}


@flow(name="change-teacher-fields", **FLOW_SETTINGS)
def change_teacher_fields(
    district: str, fields: list[str], changed_by: str
) -> dict[str, Any] | State:
    """A data manager (`changed_by`, their email) sets the demographic fields teachers see;
    an empty list means none (teachers then see no rows). Applies to the next query.
    Refused: not a data manager, a name that is not a demographic field, an unknown district.

    Args:
        district: The district's code.
        fields: The demographic fields teachers see, e.g. gender, english_learner; an empty
            list for none.
        changed_by: Your email: a data manager of the district.
    """
    now = set_teacher_fields(district, fields, changed_by)
    if isinstance(now, Refused):
        return _refuse(now)
    get_run_logger().info("teachers of %s now see: %s", district, ", ".join(now) or "nothing")
    return {"district": district, "fields": now}

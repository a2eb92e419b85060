"""The Prefect flows: which tasks run, in what order. No business logic.

The steps, as Prefect tasks with their settings, are in `flows.steps`. Flow parameters are
district codes, file names, run ids and people; values travel only in memory between tasks.
Large objects are passed `quote`d so Prefect does not walk them looking for futures.

A refused request (see `tasks.process.Refused`) is never raised: Prefect's engines log a
raised exception with its traceback. The step returns the refusal, and the flow returns a
Failed state whose message is the one-line reason.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import get_run_context
from prefect.states import Completed, State
from prefect.utilities.annotations import quote

from flows.fanout import (
    DISTRICT_DEPLOYMENT,
    check_served,
    district_files,
    start_district_runs,
    wait_for_districts,
)
from flows.steps import (
    FLOW_SETTINGS,
    PREVIEW,
    REFUSED,
    active_districts,
    apply_views_and_grants,
    approve_roster,
    check_approver,
    check_database,
    check_file_request,
    check_same_file,
    clean_staging,
    discard_held,
    discard_roster_files,
    discard_source_file,
    expire_files,
    fetch_file,
    find_held_run,
    held_sync,
    lending,
    list_drop,
    mark_refusals_reported,
    notify,
    plan_drop,
    record_preview,
    refuse,
    reject_unread,
    requester,
    results_message,
    send_and_record,
    set_teacher_fields,
    settle,
    settle_roster,
    sync_file,
    take_roster,
    without_heartbeats,
)
from tasks import process
from tasks.drop import DropFile
from tasks.errors import DemographicsError
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


class FileFailed(DemographicsError):
    """The file's run failed; it is kept in the drop for the next run."""


class DistrictFailed(DemographicsError):
    """A district's drop could not be worked through; the message says which file and why."""


class NightlyFailed(DemographicsError):
    """One or more districts failed; the message names them."""


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
    by = requester()
    check_database()
    mode = "preview" if folder == "preview" else mode
    refused = check_file_request(district, file_name, folder)
    if refused is not None:
        return refuse(refused)
    fetched = fetch_file(district, file_name, folder)
    if fetched is None:
        log.info("%s is no longer in the drop; nothing to do", file_name)
        return _ended(
            NOTHING_TO_DO, f"{file_name} is no longer in the drop", status="gone", file="gone"
        )
    if isinstance(fetched, Refused):
        return refuse(fetched)
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
        return refuse(outcome)
    if folder == "preview":
        outcome = record_preview(district, quote(outcome), by)
    block = outcome.report.sync
    # The file's own run says what became of it: outcome, counts, reason, the error rows.
    log.info("%s", outcome_line(file_name, outcome))
    # The outcome is committed: from here on nothing fails the run except the outcome itself.
    emailed = send_and_record(lambda: results_message(district, outcome, folder), outcome.run_id)
    if folder == "preview" and not emailed.sent:
        settled = "kept"  # deleted once its email is out: tried again next run
    else:
        settled = settle(district, source, outcome.status, outcome.run_id, folder)
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
    by = requester()
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
    _tell_then_settle(district, taken)


def _tell_then_settle(district: str, taken: roster.RosterTaken) -> str:
    """Email what became of the roster, then delete its files; kept when the email could not
    go out (they are the only copy of what its errors were about), or when the drop refuses
    the delete: the next run recognises them. Returns what became of the files."""
    log = get_run_logger()
    told = True
    if taken.notice is not None:
        emailed = notify(district, taken.notice, taken.run_id)
        log.info("roster: %s", emailed)
        told = emailed.sent
    if not taken.delete:
        return "kept"
    if not told:
        log.warning("roster files kept: the email could not go out")
        return "kept"
    state = settle_roster(district, taken.delete, return_state=True)
    if not state.is_completed():
        log.warning("roster files could not be deleted: %s", state.message)
        return "kept"
    settled = state.result(_sync=True)  # _sync: also when called from an async flow
    log.info("roster files: %s", settled)
    return settled


def _previews(district: str, by: str) -> None:
    """Each ready file of the district's preview/ folder, previewed and emailed, then
    deleted; before the files to sync, so a preview shows what their sync would do."""
    plan = plan_drop(district, list_drop(district, PREVIEW), PREVIEW)
    _before_the_files(district, plan, by, PREVIEW)
    for file in plan.ready:
        with lending(by), without_heartbeats():
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
        notify(district, process.expiry_notice(deleted, load_settings().retention_days))
    for big in plan.too_large if folder != roster.ROSTER else []:
        run_id, notice = reject_unread(district, big, by, folder or "sync")
        notify(district, notice, run_id)
        settle(district, big, "rejected", run_id, folder)
    if plan.refused:
        log.warning("%s entries in the drop were refused and left alone", len(plan.refused))
    if plan.refused_news:
        notify(district, process.refused_notice(plan.refused_news))
        mark_refusals_reported(district, [r.name for r in plan.refused_news], folder)
    if plan.other_news:
        names = [f"{folder}/{f.name}" if folder else f.name for f in plan.other_news]
        notify(district, process.not_csv_notice(names, folder, load_settings().retention_days))
        mark_refusals_reported(district, [f.name for f in plan.other_news], folder)
    if plan.settling:
        log.info("%s files are still settling; they wait for the next run", len(plan.settling))


def _each_ready_file(
    district: str, ready: list[DropFile], by: str, done: list[dict[str, Any]]
) -> None:
    """Each ready file as its own process-file run, in order, until one fails."""
    log = get_run_logger()
    for position, file in enumerate(ready):
        with lending(by), without_heartbeats():
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
        return refuse(held)
    refused = check_approver(held, approved_by)
    if refused is not None:
        return refuse(refused)
    if held.kind == "roster":
        return _approve_roster(held, approved_by)
    fetched = fetch_file(held.district, held.file_name)
    if fetched is None:
        return refuse(process.held_file_gone(held))
    if isinstance(fetched, Refused):
        return refuse(fetched)
    refused = check_same_file(held, quote(fetched))
    if refused is not None:
        return refuse(refused)
    source = process.source_of(fetched)
    outcome = sync_file(held.district, quote(fetched), "sync", requester(), approved_by)
    del fetched
    if isinstance(outcome, Refused):
        return refuse(outcome)
    emailed = send_and_record(lambda: results_message(held.district, outcome), outcome.run_id)
    settled = settle(held.district, source, outcome.status, outcome.run_id)
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
    taken = approve_roster(held, approved_by, requester())
    if isinstance(taken, Refused):
        return refuse(taken)
    get_run_logger().info("held run %s: %s", held.run_id, taken.message)
    files = _tell_then_settle(held.district, taken)
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
    decided = discard_held(run_id, discarded_by, requester())
    if isinstance(decided, Refused):
        return refuse(decided)
    held, manager = decided
    discard = discard_roster_files if held.kind == "roster" else discard_source_file
    state = discard(held, return_state=True)
    fate = state.result() if state.is_completed() else f"not checked ({state.message})"
    get_run_logger().info("held run %s discarded; source file %s", run_id, fate)
    notify(held.district, process.discard_notice(held, manager, fate))
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
        return refuse(now)
    get_run_logger().info("teachers of %s now see: %s", district, ", ".join(now) or "nothing")
    return {"district": district, "fields": now}

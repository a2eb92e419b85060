"""What every flow is made of: the steps as Prefect tasks (with their settings, in one place),
and the few helpers the flows share: a refusal as a Failed state, who started a run, an email
sent and recorded, a source file settled, a file run without heartbeats of its own.

Every task handles student data or its report, so all of them share one setting: results are
never persisted, never cached, and `print` is never logged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import SettingsContext, get_run_context, get_settings_context
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY
from prefect.states import Failed, State
from prefect.utilities.annotations import quote

from tasks import process
from tasks.drop import DropFile
from tasks.errors import DemographicsError, is_transient
from tasks.process import Refused, roster
from tasks.settings import load_settings

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


PREVIEW = "preview"  # the district's preview/ folder: files checked, emailed, never synced
REFUSED = "Refused"  # the name of a Failed state that is a refusal, not a breakage


def refuse(refused: Refused) -> State:
    """End the run Failed with the reason as its message, and no traceback anywhere."""
    get_run_logger().warning("refused: %s", refused.reason)
    return Failed(message=refused.reason, name=REFUSED)


# Who started a run is taken from the run, never typed into the run form: a flow that runs
# others in this process (nightly, a district's drop) lends them its own for their records.
_STARTED_BY: ContextVar[str | None] = ContextVar("demographics_started_by", default=None)


def requester() -> str:
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
def lending(who: str) -> Iterator[None]:
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


@dataclass(frozen=True)
class Emailed:
    """Whether a message went out, and a phrase for the log (what `str` gives)."""

    sent: bool
    said: str

    def __str__(self) -> str:
        return self.said


def send_and_record(render: Callable[[], Any], run_id: int | None) -> Emailed:
    """Render, send (with retries) and record; after a committed sync, none of it may fail
    the run. A file that is deleted once its email is out stays when `sent` is False."""
    settings = load_settings()
    sender = send_message.with_options(
        retries=settings.mail_attempts - 1, retry_delay_seconds=settings.mail_retry_seconds
    )
    try:
        delivery = sender(quote(render()), _smtp_password())
    except Exception as exc:  # task exceptions carry no values (tasks.process.safe_step)
        get_run_logger().warning("the email could not be sent: %s", exc)
        recorded = _recorded(run_id, None, str(exc))
        return Emailed(False, "email failed" + ("" if recorded else " (and not recorded)"))
    recorded = _recorded(run_id, delivery, None)
    return Emailed(True, f"email {delivery.kind}" + ("" if recorded else " (not recorded)"))


def _recorded(run_id: int | None, delivery: Any, error: str | None) -> bool:
    """Record the email's fate on the run; False when the database would not (logged)."""
    try:
        record_delivery(run_id, delivery, error)
    except DemographicsError as exc:  # its message is safe (tasks.process.safety)
        get_run_logger().warning("the email's fate was not recorded: %s", exc)
        return False
    return True


def notify(district: str, notice: process.Notice, run_id: int | None = None) -> Emailed:
    return send_and_record(lambda: notice_message(district, notice), run_id)


def settle(
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


# An in-process file run sends no heartbeats of its own: the district run's heartbeat already
# says whether this process lives, and a heartbeat thread costs each run up to a second at its
# end (the engine joins it; it sleeps in 1 s steps). The settings without heartbeats are made
# once per process: making them (Prefect's temporary_settings) costs over 0.1 s of CPU.
_QUIET: dict[int, tuple[Any, Any]] = {}


@contextmanager
def without_heartbeats() -> Iterator[None]:
    context = get_settings_context()
    key = id(context.settings)
    if key not in _QUIET:
        updates = {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
        _QUIET[key] = (context.settings, context.settings.copy_with_update(updates=updates))
    with SettingsContext(profile=context.profile, settings=_QUIET[key][1]):
        yield

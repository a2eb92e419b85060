"""The units of work the Prefect flows compose: one district file from the drop to the inbox.

Each function takes names and ids (never student values), reads its own settings, and is safe
to hand to Prefect: what it returns stays in memory (the flows turn result persistence off),
and what it raises carries no student value and no chained cause, because Prefect records a
failed task's message and traceback. A person's request that cannot be carried out (not a data
manager, no such held run, an unknown district, an unsafe name, a file still settling) is not a
failure: it is returned as a `Refused` value, never raised, so the run ends with the reason and
no traceback. The rules of settling a source file live here too, so the flows only say what
runs in which order.

- `rules`: the decisions, without effects (what a listing means, what becomes of a file, the
  refusals and notices in words);
- `safety`: `safe_step` and `refusing`, which every step wears;
- `steps`: the steps themselves, each opening what it needs from the settings.
"""

from tasks.process.rules import (
    DELETE_AFTER,
    DropPlan,
    Notice,
    Refused,
    SettleAction,
    Settled,
    discard_notice,
    district_run_name,
    expiry_notice,
    file_run_name,
    held_file_gone,
    judge_drop,
    not_csv_notice,
    refused_notice,
    same_file_refusal,
    settle_rule,
    settling_refusal,
    source_of,
)
from tasks.process.safety import REFUSALS, StepFailed, refusing, safe_step
from tasks.process.steps import (
    active_districts,
    apply_views_and_grants,
    check_approver,
    check_database,
    check_file_request,
    check_same_file,
    clean_staging,
    discard_held,
    discard_source_file,
    expire_files,
    fetch_file,
    find_held_run,
    held_sync,
    list_drop,
    mark_refusals_reported,
    notice_message,
    plan_drop,
    record_delivery,
    record_preview,
    reject_unread,
    results_message,
    send_message,
    set_teacher_fields,
    settle_file,
    sync_file,
)

__all__ = [
    "DELETE_AFTER",
    "REFUSALS",
    "DropPlan",
    "Notice",
    "Refused",
    "SettleAction",
    "Settled",
    "StepFailed",
    "active_districts",
    "apply_views_and_grants",
    "check_approver",
    "check_database",
    "check_file_request",
    "check_same_file",
    "clean_staging",
    "discard_held",
    "discard_notice",
    "discard_source_file",
    "district_run_name",
    "expire_files",
    "expiry_notice",
    "fetch_file",
    "file_run_name",
    "find_held_run",
    "held_file_gone",
    "held_sync",
    "judge_drop",
    "list_drop",
    "mark_refusals_reported",
    "not_csv_notice",
    "notice_message",
    "plan_drop",
    "record_delivery",
    "record_preview",
    "refused_notice",
    "refusing",
    "reject_unread",
    "results_message",
    "safe_step",
    "same_file_refusal",
    "send_message",
    "set_teacher_fields",
    "settle_file",
    "settle_rule",
    "settling_refusal",
    "source_of",
    "sync_file",
]

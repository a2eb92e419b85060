"""What a sync does with a checked file, and why: the safeguards as one pure function.

No database and no I/O here: the caller reads what the decision needs (the matched file, the
run that already applied the same file, the runs that held it), calls `decide`, and carries
the `Decision` out in one place (tasks/sync/run.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import polars as pl

from schemas.columns import DEMOGRAPHIC_COLUMNS
from schemas.issues import Code
from schemas.report import Change, Report, SyncBlock, SyncStatus
from tasks.match import Matched

FIELD_RANK = {name: rank for rank, name in enumerate(DEMOGRAPHIC_COLUMNS)}

Mode = Literal["preview", "sync"]


Verdict = Literal["apply", "hold", "reject", "nothing_to_do"]
Reason = Literal[
    "file_error",
    "already_applied",
    "too_many_errors",
    "over_hold_limit",
    "within_limits",
    "approved",
]


@dataclass(frozen=True)
class Decision:
    """What a sync does with a checked file, and why; pure data, decided by `decide`.

    `block` holds the counts for the report's sync block (its run id comes once the run is
    recorded) and `issue` a file-level issue the safeguards add to the report. A preview
    writes nothing whatever the verdict: it only reports what a sync would do.
    """

    verdict: Verdict
    reason: Reason
    preview: bool
    message: str
    block: SyncBlock
    issue: tuple[Code, str] | None = None
    values_changed: int = 0
    same_as_run_id: int | None = None
    held_runs: tuple[int, ...] = ()  # the held runs of this file an approval resolves

    @property
    def action(self) -> Literal["apply", "hold", "reject", "nothing_to_do", "preview"]:
        return "preview" if self.preview else self.verdict

    @property
    def approves_run_id(self) -> int | None:
        return self.held_runs[0] if self.held_runs else None


def sync_block(status: SyncStatus, matched: Matched | None = None, updated: int = 0) -> SyncBlock:
    """The `sync` block: `updated` students change (or would, for a preview or a hold), and
    how (`changes`); the rest of the matched students are unchanged. The run id comes later."""
    return SyncBlock(
        run_id=None,
        status=status,
        matched=0 if matched is None else matched.matched,
        updated=updated,
        unchanged=0 if matched is None or status == "rejected" else matched.matched - updated,
        unmatched=0 if matched is None else matched.unmatched,
        changes=changes_of(matched.history) if matched is not None and updated else [],
    )


def changes_of(history: pl.DataFrame) -> list[Change]:
    """The history rows (one per student and changed field) counted by field, old value and
    new value: by field in the file's column order, then the most students first."""
    if history.is_empty():
        return []
    counted = (
        history.group_by("field", "old_value", "new_value")
        .agg(pl.len().alias("students"))
        .with_columns(
            pl.col("field")
            .replace_strict(FIELD_RANK, default=len(FIELD_RANK), return_dtype=pl.Int32)
            .alias("_rank")
        )
        .sort(
            ["_rank", "students", "old_value", "new_value"],
            descending=[False, True, False, False],
            nulls_last=False,
        )
    )
    return [
        Change(f, before, after, n)
        for f, before, after, n in counted.select(
            "field", "old_value", "new_value", "students"
        ).iter_rows()
    ]


def decide(
    report: Report,
    matched: Matched | None,
    *,
    error_limit: float,
    hold_limit: float,
    mode: Mode,
    approve: bool = False,
    same_as: int | None = None,
    held_runs: Sequence[int] = (),
) -> Decision:
    """Apply the safeguards to a matched file; no database, no I/O.

    `matched` is None for a file with a file-level error (nothing in it was matched);
    `report` is the report with the matching issues. `same_as` is the run that already
    applied this very file (same SHA-256), if any; `held_runs` the runs that held it before,
    newest first: `approve` applies a held file only if it was held before. The caller looks
    the held runs up only for a file this decides to hold (`verdict == "hold"`), then decides
    again with them.
    """
    preview = mode == "preview"
    if matched is None:
        return Decision(
            "reject",
            "file_error",
            preview,
            "a sync would not apply the file: it has a file-level error; fix it and upload it again"
            if preview
            else "the file has a file-level error and was not applied; fix it and upload it again",
            sync_block("preview" if preview else "rejected"),
        )
    if same_as is not None:
        return already_applied(same_as, matched.matched, matched.unmatched, preview)
    summary = report.summary
    share = summary.error_rows / summary.rows if summary.rows else 0.0
    if share > error_limit:
        return _too_many_errors(report, matched, share, error_limit, preview)
    hold_share = matched.overwriting / matched.on_record if matched.on_record else 0.0
    approved = hold_share > hold_limit and approve and not preview and bool(held_runs)
    if hold_share > hold_limit and not approved:
        return _hold(matched, hold_share, hold_limit, preview, approve)
    return _apply(matched, preview, tuple(held_runs) if approved else ())


def already_applied(same_as: int, matched: int, unmatched: int, preview: bool) -> Decision:
    """The very same file (same SHA-256) was applied by run `same_as` and not undone: nothing
    is (or would be) done. `matched` and `unmatched` are the counts of that file's rows."""
    said = "would change" if preview else "was changed"
    block = SyncBlock(
        run_id=None,
        status="preview" if preview else "succeeded",
        matched=matched,
        updated=0,
        unchanged=matched,
        unmatched=unmatched,
    )
    return Decision(
        "nothing_to_do",
        "already_applied",
        preview,
        f"this file (same SHA-256) was already applied by run {same_as}; nothing {said}",
        block,
        same_as_run_id=same_as,
    )


def _too_many_errors(
    report: Report, matched: Matched, share: float, limit: float, preview: bool
) -> Decision:
    summary = report.summary
    return Decision(
        "reject",
        "too_many_errors",
        preview,
        "a sync would reject the file: too many rows have errors"
        if preview
        else "the file was rejected: too many rows have errors; nothing was applied",
        sync_block("preview" if preview else "rejected", matched),
        issue=(
            Code.TOO_MANY_ERRORS,
            f"{summary.error_rows} of {summary.rows} rows ({_percent(share)}) have "
            f"errors, more than the district's limit of {_percent(limit)}"
            "; the file is rejected whole and nothing was applied. Fix the errors "
            "listed and upload it again",
        ),
    )


def _apply(matched: Matched, preview: bool, held_runs: tuple[int, ...]) -> Decision:
    """Within the limits, or approved (`held_runs`, the holds the approval resolves)."""
    if preview:
        return Decision(
            "apply",
            "within_limits",
            preview,
            f"preview: a sync would change {matched.values_changed} values for "
            f"{matched.updated} students; nothing was written",
            sync_block("preview", matched, matched.updated),
            values_changed=matched.values_changed,
        )
    return Decision(
        "apply",
        "approved" if held_runs else "within_limits",
        preview,
        f"applied: {matched.values_changed} values changed for {matched.updated} students"
        + (f" (approving held run {held_runs[0]})" if held_runs else ""),
        sync_block("succeeded", matched, matched.updated),
        values_changed=matched.values_changed,
        held_runs=held_runs,
    )


def _hold(matched: Matched, share: float, limit: float, preview: bool, approve: bool) -> Decision:
    hint = (
        " (--approve applies only to a file that was held before; this is the "
        "first time this file is held)"
        if approve and not preview
        else ""
    )
    return Decision(
        "hold",
        "over_hold_limit",
        preview,
        "a sync would be held for approval: it would change too many values on record"
        if preview
        else "the sync is held for approval: it would change too many values on record",
        sync_block("preview" if preview else "held", matched, matched.updated),
        issue=(
            Code.SYNC_HELD,
            f"the file would change values on record for {matched.overwriting} of "
            f"the {matched.on_record} students with values on record "
            f"({_percent(share)}), more than the district's hold limit of "
            f"{_percent(limit)}; nothing was applied. A data "
            "manager reviews this report, then approves the same file (demographics "
            "sync FILE --district CODE --approve --as EMAIL, or the "
            "approve-held-sync deployment) or discards it" + hint,
        ),
        values_changed=matched.values_changed,
    )


def _percent(share: float) -> str:
    return f"{share * 100:.1f}".rstrip("0").rstrip(".") + " %"

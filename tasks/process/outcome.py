"""What a file's run ends as, for the person who started it in the Prefect UI: the name of
its final state and the markdown artifact of its outcome. Pure: no Prefect, no database.
Counts, codes, file names and run ids only, never a student value (artifacts are stored by
Prefect and shown to every user of its UI).
"""

from __future__ import annotations

import re
from typing import Any

import polars as pl

from tasks.mail.compose import next_steps
from tasks.render import printable
from tasks.sync import SyncOutcome

# A Completed-type state, named for the outcome (a failure stays Failed).
STATE_NAMES = {
    "succeeded": "Succeeded",
    "rejected": "Rejected",
    "held": "Held",
    "preview": "Previewed",
}
ALREADY_APPLIED = "Already applied"
NOTHING_TO_DO = "Nothing to do"
ARTIFACT_PREFIX = "demographics-"
NIGHTLY_ARTIFACT = "nightly-demographics"
COUNTED = ("matched", "updated", "unmatched", "errors")
ERROR_ROWS_SHOWN = 20


def state_name(outcome: SyncOutcome) -> str:
    """The name of the run's final state: the same file again is "Already applied"; a sync
    that changed no value is "Nothing to do"."""
    if outcome.same_as_run_id is not None:
        return ALREADY_APPLIED
    block = outcome.report.sync
    assert block is not None
    if block.status == "succeeded" and block.updated == 0:
        return NOTHING_TO_DO
    return STATE_NAMES.get(block.status, block.status.capitalize())


def artifact_key(district: str) -> str:
    """Prefect keys are lowercase letters, digits and dashes: one key per district, so the
    UI's Artifacts page shows each district's latest file outcome with its history."""
    return ARTIFACT_PREFIX + re.sub(r"[^a-z0-9-]+", "-", district.lower()).strip("-")


def error_rows(outcome: SyncOutcome, at_most: int = ERROR_ROWS_SHOWN) -> list[int]:
    """The first rows with an error (row numbers of the file, header = row 1)."""
    issues = outcome.report.issues
    if issues.is_empty() or "row" not in issues.columns:
        return []
    rows = issues.filter((pl.col("severity") == "error") & pl.col("row").is_not_null())["row"]
    return sorted({int(r) for r in rows.to_list()})[:at_most]


def outcome_line(file_name: str, outcome: SyncOutcome) -> str:
    """The one line the file's own run logs: outcome, counts, the reason, the issues by code,
    the first error rows."""
    block = outcome.report.sync
    assert block is not None
    line = (
        f"{printable(file_name)}: {state_name(outcome)} (run {block.run_id}): "
        f"{outcome.message}; matched {block.matched}, updated {block.updated}, "
        f"unchanged {block.unchanged}, unmatched {block.unmatched}, "
        f"errors {outcome.report.summary.errors}"
    )
    codes = outcome.report.counts_by_code()
    if codes:
        line += "; issues " + ", ".join(f"{code} {n}" for code, _severity, n in codes)
    rows = error_rows(outcome)
    if rows:
        more = outcome.report.summary.error_rows - len(rows)
        line += "; error rows " + ", ".join(map(str, rows)) + (f" and {more} more" if more else "")
    return line


def _cell(text: str) -> str:
    """Text safe in a markdown table cell and free of markup."""
    return re.sub(r"([\\`*_|<>\[\]#])", r"\\\1", printable(text))


def outcome_markdown(district: str, file_name: str, outcome: SyncOutcome, flow_run: str) -> str:
    """The artifact of one file's run: the outcome sentence, the counts, the issues by code,
    what to do next, the run ids."""
    report, block = outcome.report, outcome.report.sync
    assert block is not None
    s = report.summary
    lines = [
        f"## {_cell(file_name)}: {state_name(outcome)}",
        "",
        _cell(outcome.message),
        "",
        "| rows | with errors | with warnings | matched | updated | unchanged | unmatched |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {s.rows} | {s.error_rows} | {s.warning_rows} | {block.matched} | {block.updated} "
        f"| {block.unchanged} | {block.unmatched} |",
        "",
    ]
    by_code = report.counts_by_code()
    if by_code:
        lines += ["| issue code | severity | count |", "|---|---|---:|"]
        lines += [f"| {_cell(code)} | {sev} | {n} |" for code, sev, n in by_code]
        lines.append("")
    lines += ["**What to do next**", ""]
    steps = next_steps(district, report, same_as=outcome.same_as_run_id)
    lines += [f"- {_cell(step)}" for step in steps]
    lines += ["", f"District `{_cell(district)}` · sync run {block.run_id} · flow run {flow_run}"]
    return "\n".join(lines) + "\n"


def district_totals(files: list[dict[str, Any]]) -> dict[str, Any]:
    """A district's files summed: how many, how many of each outcome, and the counts."""
    outcomes: dict[str, int] = {}
    for done in files:
        outcomes[done["outcome"]] = outcomes.get(done["outcome"], 0) + 1
    totals = {key: sum(int(done.get(key) or 0) for done in files) for key in COUNTED}
    return {"files": len(files), "outcomes": outcomes, **totals}


def nightly_rows(
    districts: list[str], totals: dict[str, dict[str, Any]], failed: dict[str, str]
) -> list[dict[str, Any]]:
    """The nightly table: one row per district, in order. `failed` maps a district whose run
    did not complete to its run's final state (Failed, Crashed, ...): the row says so and
    points at its own run for why; the files it did before are counted."""
    rows = []
    for code in districts:
        done = totals.get(code, {})
        outcomes = done.get("outcomes", {})
        run = "ok"
        if code in failed:
            run = f"{failed[code].lower()} (its sync-district-drop run says why)"
        rows.append(
            {
                "district": code,
                "run": run,
                "files": done.get("files", 0),
                "outcomes": ", ".join(f"{n} {name}" for name, n in sorted(outcomes.items()))
                or "no file",
                **{key: done.get(key, 0) for key in COUNTED},
            }
        )
    return rows

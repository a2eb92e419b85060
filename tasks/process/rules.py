"""The decisions the steps make, without effects: what a drop listing means, what becomes of a
source file, when a file is refused, and what the data managers are told, in words.

Nothing here opens a connection or the drop, so each rule can be read and tested on its own.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from schemas.districts import shown_code
from tasks import store
from tasks.drop import DropFile, DropListing, FetchedFile, RefusedEntry, escape_name

# Outcomes after which the source file has done its job: the result is committed and
# recorded, and a fixed file comes back under a new upload.
DELETE_AFTER = frozenset({"succeeded", "rejected"})


@dataclass(frozen=True)
class Refused:
    """A person's request that is not carried out: nothing broke, the reason is one line
    (safe to show and log). The flows end such a run Failed with this reason as its message."""

    reason: str


def settling_refusal(fetched: FetchedFile, settle_seconds: float, now: datetime) -> Refused | None:
    """A file modified within the settling time may still be uploading."""
    age = (now - fetched.modified).total_seconds()
    if age >= settle_seconds:
        return None
    return Refused(
        f"{fetched.name} was modified {max(age, 0):.0f} s ago and may still be uploading; "
        f"it is left in the drop (try again after {settle_seconds:g} s)"
    )


def source_of(fetched: FetchedFile) -> DropFile:
    """The name, size and time of what was read: only that very file may be deleted."""
    return DropFile(fetched.name, fetched.size, fetched.modified)


def held_file_gone(held: store.HeldRun) -> Refused:
    return Refused(
        f"{held.file_name} is no longer in the drop; upload it again to be judged afresh"
    )


def same_file_refusal(held: store.HeldRun, fetched: FetchedFile) -> Refused | None:
    """Approving applies exactly the file that was held: a replaced file must be uploaded
    (and judged) again."""
    if fetched.sha256 == held.file_sha256:
        return None
    return Refused(
        f"{fetched.name} in the drop is not the file held by run {held.run_id} (its SHA-256 "
        "differs): it was replaced after the hold. Nothing was applied; the new file is "
        "synced (and judged) on the next run"
    )


SettleAction = Literal["deleted", "kept", "already gone"]


@dataclass(frozen=True)
class Settled:
    action: SettleAction
    reason: str


def settle_rule(status: str, folder: str = "") -> tuple[bool, str]:
    """Whether the source file goes, and why, once an outcome of `status` is committed (and
    its email is out); `folder` is where in the district's drop it was."""
    if folder == "preview":
        if status == "failed":
            return False, "the preview failed: the file stays for the next run"
        return True, "a file in preview/ is deleted once its preview email is out"
    if status in DELETE_AFTER:
        return True, f"the sync {status} and is recorded"
    reasons = {
        "held": "the sync is held: the file waits for a data manager to approve or discard it",
        "preview": "a preview changes nothing: the file stays for the sync",
        "failed": "the run failed: the file stays for the next run",
    }
    return False, reasons.get(status, f"status {status}: the file stays")


@dataclass
class DropPlan:
    """A listing judged against what the service saw before."""

    ready: list[DropFile]
    settling: list[DropFile]
    too_large: list[DropFile]
    expired: list[DropFile]
    refused: list[RefusedEntry]  # all refused entries now in the drop
    refused_news: list[RefusedEntry]  # those the data managers have not been told about
    other_news: list[DropFile] = field(default_factory=list)  # an .xlsx not yet told about


def listed_files(listing: DropListing) -> list[DropFile]:
    """Every file of the listing, whatever the drop made of it."""
    return [*listing.ready, *listing.settling, *listing.too_large, *listing.expired]


def judge_drop(
    listing: DropListing,
    first_seen: dict[str, datetime],
    news: Collection[str],
    cutoff: datetime,
    limit: int,
) -> DropPlan:
    """Each file's age from when the service first saw it unchanged (an upload tool may keep
    the original modification time): first seen at `cutoff` or before, it has expired; larger
    than `limit` bytes, it is too large. `news`: the refused names not yet reported."""
    expired = [f for f in [*listed_files(listing), *listing.other] if first_seen[f.name] <= cutoff]
    kept = {f.name for f in expired}
    plan = DropPlan(
        ready=[f for f in [*listing.ready, *listing.expired] if f.name not in kept],
        settling=[f for f in listing.settling if f.name not in kept],
        too_large=[f for f in listing.too_large if f.name not in kept],
        expired=sorted(expired, key=lambda f: (f.modified, f.name)),
        refused=listing.refused,
        refused_news=[r for r in listing.refused if r.name in news],
        other_news=[f for f in listing.other if f.name in news and f.name not in kept],
    )
    # A file judged young again after all (old time, newly seen) may be over the limit.
    plan.too_large += [f for f in plan.ready if f.size > limit]
    plan.ready = sorted(
        (f for f in plan.ready if f.size <= limit), key=lambda f: (f.modified, f.name)
    )
    return plan


# --- what the data managers are told -------------------------------------------------------


@dataclass(frozen=True)
class Notice:
    """What the data managers are told about their drop, in words; never a file's contents."""

    subject: str
    lines: list[str]


def expiry_notice(names: list[str], retention_days: float) -> Notice:
    return Notice(
        f"{len(names)} old files deleted from the drop",
        [
            f"These files were in the drop for more than {retention_days:g} days and were deleted "
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


def not_csv_notice(names: list[str], folder: str, retention_days: float) -> Notice:
    """Files of another kind (an .xlsx, a .txt): said once, with what to upload instead."""
    takes = (
        "a OneRoster export: its CSV files, or one .zip of them"
        if folder == "roster"
        else "demographics files saved as CSV"
    )
    one = len(names) == 1
    return Notice(
        f"{len(names)} {'file' if one else 'files'} in the drop "
        f"{'is not a CSV file' if one else 'are not CSV files'}",
        [
            f"These files are not read: this folder takes {takes}. Open each in Excel (or your "
            'spreadsheet) and save it as "CSV UTF-8 (Comma delimited) (*.csv)", then upload '
            "the .csv:",
            *names,
            f"The files named here are deleted from the drop after {retention_days:g} days.",
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


def district_run_name(district: object) -> str:
    """A district run's name in the Prefect UI: its code; words instead when what was typed
    for it is not a district code (it may be anything, a student's email too)."""
    return shown_code(district)


def file_run_name(district: object, file_name: object) -> str:
    """A file run's name in the Prefect UI: district/file, as safe to show as the logs."""
    return f"{shown_code(district)}/{escape_name(str(file_name))}"

"""The deployments: the nightly schedule and the manual runs people start from the Prefect UI.

`demographics serve` (or `make serve`) serves them from this process, so the schedule and the
UI's Run button work with no work pool; `deployments/prefect.yaml` declares the same six for
a work pool in production.
"""

from __future__ import annotations

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from flows.pipeline import (
    apply_access_views,
    approve_held_sync,
    change_teacher_fields,
    discard_held_sync,
    nightly_sync,
    process_file,
)
from tasks.settings import load_settings

NIGHTLY_CRON = "0 2 * * *"


def deployments() -> list[RunnerDeployment]:
    timezone = load_settings().timezone
    return [
        nightly_sync.to_deployment(
            name="nightly-demographics-sync",
            schedules=[Cron(NIGHTLY_CRON, timezone=timezone)],
            concurrency_limit=1,
            description="Every active district's drop at 02:00; one run at a time.",
        ),
        process_file.to_deployment(
            name="process-drop-file",
            parameters={"mode": "sync"},
            description="One file of one district's drop: mode sync, or preview (keeps it).",
        ),
        approve_held_sync.to_deployment(
            name="approve-held-sync",
            description="Apply a held sync (run id): the same file, checked by SHA-256.",
        ),
        discard_held_sync.to_deployment(
            name="discard-held-sync",
            description="Drop a held sync (run id) and delete its file from the drop.",
        ),
        change_teacher_fields.to_deployment(
            name="change-teacher-fields",
            description="A data manager sets the fields teachers see (empty list: none).",
        ),
        apply_access_views.to_deployment(
            name="apply-access-views",
            description="Re-apply the reporting view and grants; safe while people query.",
        ),
    ]


def serve_all() -> None:
    serve(*deployments())

"""The nightly run's fan-out: one `sync-district-drop` deployment run per district, started
under the nightly run and waited for, wherever they run (a work pool's workers, or a runner
serving the deployments: `demographics serve`, `nightly`, `demo`).

Each district run is started with an idempotency key made of the nightly run's id and the
district, so a nightly run that is retried (or re-run from the UI) finds the district runs it
already started instead of starting them again. What a district run did is read back from the
table artifact it publishes on its own run (`DISTRICT_FILES`): the runs happen in other
processes, often on other machines, and their results are never persisted.

A district run whose worker stopped (killed, its machine gone) would stay Running forever; the
nightly run waits for nothing that cannot end: a Running district run whose worker the work pool
reports offline is marked Crashed, naming the worker, and counts as failed. Its transaction died
with its connection, so its files are still in the drop for the next night.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterType,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkerFilter,
    WorkerFilterStatus,
)
from prefect.client.schemas.objects import DeploymentStatus, FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed

from tasks.errors import DemographicsError

DISTRICT_DEPLOYMENT = "sync-district-drop/sync-district-drop"
DISTRICT_FILES = "table"  # the artifact type a district run publishes its files as
WORKER_LABEL = "prefect.worker.name"  # set by a worker on each flow run it takes
POLL_SECONDS = 2.0


READY_WAIT_SECONDS = 30.0  # a worker or runner that has just started polls within this


class NotServed(DemographicsError):
    """Nothing would run the deployment's runs; the message says what to start."""


def check_served(deployment: str) -> None:
    """Refuse to start runs of a deployment nobody declared, or that no worker or runner has
    asked for work for in the last minute (Prefect marks it not ready): they would wait for
    ever. One that is about to be ready (a runner just starting) is waited for a moment."""
    deadline = time.monotonic() + READY_WAIT_SECONDS
    with get_client(sync_client=True) as client:
        while True:
            try:
                found = client.read_deployment_by_name(deployment)
            except ObjectNotFound:
                raise NotServed(
                    f"the Prefect server has no {deployment} deployment: serve the deployments "
                    "(demographics serve) or deploy deployments/prefect.yaml to a work pool "
                    "(prefect deploy)"
                ) from None
            if found.status == DeploymentStatus.READY:
                return
            if time.monotonic() > deadline:
                pool = f"work pool {found.work_pool_name}" if found.work_pool_name else None
                raise NotServed(
                    f"nothing runs {deployment}: no "
                    + (f"worker of {pool}" if pool else "demographics serve")
                    + " has asked the Prefect server for work in the last minute"
                )
            time.sleep(POLL_SECONDS / 2)


def start_district_runs(districts: list[str], nightly_run_id: UUID) -> dict[str, UUID]:
    """One district run per district, shown under the nightly run; returns their ids."""
    started = {}
    for code in districts:
        run = run_deployment(
            DISTRICT_DEPLOYMENT,
            parameters={"district": code},
            timeout=0,
            idempotency_key=f"nightly-{nightly_run_id}-{code}",
        )
        started[code] = run.id
    return started


FINAL = [StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED]
ORPHANS_EVERY = 5  # polls between two looks for runs whose worker went away


def wait_for_districts(
    started: dict[str, UUID], ended_one: Callable[[str, FlowRun], None]
) -> dict[str, FlowRun]:
    """Poll until every district run has ended; `ended_one` is told of each as it ends. Each
    poll asks only for the runs that have ended since (a nightly run of many districts waits
    long, and its polls should cost the server next to nothing)."""
    district_of = {run_id: code for code, run_id in started.items()}
    ended: dict[str, FlowRun] = {}
    polls = 0
    while len(ended) < len(started):
        waiting = [i for i, code in district_of.items() if code not in ended]
        with get_client(sync_client=True) as client:
            for run in client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=waiting),
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=FINAL)),
                )
            ):
                ended[district_of[run.id]] = run
                ended_one(district_of[run.id], run)
            polls += 1
            if polls % ORPHANS_EVERY == 0 and len(ended) < len(started):
                _crash_the_orphans(client, [i for i in waiting if district_of[i] not in ended])
        if len(ended) < len(started):
            time.sleep(POLL_SECONDS)
    return ended


def orphans(runs: list[FlowRun], online: dict[str, set[str]]) -> list[FlowRun]:
    """The running runs whose worker is not among the online workers of their pool."""
    return [
        run
        for run in runs
        if run.state is not None
        and run.state.is_running()
        and run.work_pool_name in online
        and run.labels.get(WORKER_LABEL)
        and run.labels[WORKER_LABEL] not in online[run.work_pool_name]
    ]


def _crash_the_orphans(client: Any, waiting: list[UUID]) -> None:
    running = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=waiting),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])),
        )
    )
    pools = {r.work_pool_name for r in running if r.work_pool_name and r.labels.get(WORKER_LABEL)}
    online = {
        pool: {
            w.name
            for w in client.read_workers_for_work_pool(
                pool, worker_filter=WorkerFilter(status=WorkerFilterStatus(any_=["ONLINE"]))
            )
        }
        for pool in pools
    }
    for run in orphans(running, online):
        worker = run.labels[WORKER_LABEL]
        client.set_flow_run_state(
            run.id,
            Crashed(message=f"its worker {worker} stopped (no heartbeat); the files wait"),
            force=True,
        )


def district_files(ended: dict[str, FlowRun]) -> dict[str, list[dict[str, Any]]]:
    """What each district run did, file by file, as its table artifact has it."""
    district_of = {run.id: code for code, run in ended.items()}
    if not district_of:
        return {}
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=list(district_of)),
                type=ArtifactFilterType(any_=[DISTRICT_FILES]),
            )
        )
    files: dict[str, list[dict[str, Any]]] = {}
    for artifact in artifacts:
        code = district_of.get(artifact.flow_run_id)  # type: ignore[arg-type]
        data = artifact.data
        if code is not None:
            files[code] = json.loads(data) if isinstance(data, str) else list(data or [])
    return files

"""The nightly job on a work pool, as production runs it: the session's `prefect server`
process on PostgreSQL, a process work pool, the deployments of deployments/prefect.yaml
deployed to it with `prefect deploy`, and two real `prefect worker` processes sharing six
districts. A worker killed with SIGKILL in the middle of a district leaves that district's file
in the drop, and the next nightly run applies it exactly once."""

from __future__ import annotations

import contextvars
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import write_roster
from flowhelp import (
    Product,
    csv_bytes,
    latest_artifact,
    processes_mentioning,
    runs,
    wait_until_served,
)
from lockhelp import HeldLock
from prefect import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
)
from prefect.client.schemas.objects import FlowRun
from prefect.states import State
from storehelp import line, load, values

from flows.deploy import NIGHTLY, run_deployed
from flows.fanout import DISTRICT_DEPLOYMENT, WORKER_LABEL
from flows.pipeline import nightly_sync

ROOT = Path(__file__).resolve().parent.parent
PREFECT = Path(sys.executable).with_name("prefect")
POOL = "demographics-test-pool"
DEADLINE = 120.0
MORE = ("d3", "d4", "d5", "d6")  # besides the product's d1 and d2


def manager(code: str) -> str:
    return f"dm@{code}.example.org"


class Workers:
    """`prefect worker start` processes on the pool, each in a process group of its own (a
    worker's flow runs are its children: killing the group is losing the machine)."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, limit: int = 3) -> None:
        with (self.logs / f"{name}.log").open("wb") as out:
            self.processes[name] = subprocess.Popen(
                [
                    str(PREFECT),
                    "worker",
                    "start",
                    "--pool",
                    POOL,
                    "--name",
                    name,
                    "--limit",
                    str(limit),
                ],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=ROOT,
            )

    def kill(self, name: str) -> None:
        os.killpg(self.processes[name].pid, signal.SIGKILL)
        self.processes[name].wait(timeout=DEADLINE)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")


def six_districts(p: Product, tmp_path: Path) -> dict[str, str]:
    """d1..d6, each with a data manager on its notification list and one file in its drop
    that sets its first student's gender; returns each district's first student's SSID."""
    first = {"d1": "0000000001", "d2": "0000000005"}
    for n, code in enumerate(MORE, start=3):
        ssid = f"0000{n:02d}0001"
        load(
            p.url,
            code,
            write_roster(tmp_path / code, [(f"{code}-s1", ssid, f"a@{code}.org")], code),
        )
        first[code] = ssid
    with psycopg.connect(p.url) as conn:
        for code in first:
            conn.execute(
                "UPDATE core.district_settings SET notification_recipients = ARRAY[%s] "
                "WHERE district_id = (SELECT district_id FROM core.districts WHERE code = %s)",
                (manager(code), code),
            )
    for code, ssid in first.items():
        p.put(code, f"{code}.csv", csv_bytes([line(ssid=ssid, gender="F")]))
    return first


@pytest.fixture
def pool(product: Product, prefect_api: Any, tmp_path: Path) -> Iterator[Workers]:
    """The deployments of deployments/prefect.yaml on a process pool, and two workers."""
    env = {
        **os.environ,  # the product's DEMOGRAPHICS_* settings and PREFECT_API_URL
        "PREFECT_API_URL": prefect_api.server.api_url,
        # the pool's command is `python -m prefect.engine`: this venv's python, as in production
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DEMOGRAPHICS_WORK_POOL": POOL,
        "DEMOGRAPHICS_TIMEZONE": "UTC",
        "DEMOGRAPHICS_PROJECT_DIR": str(ROOT),
        # Seconds rather than Prefect's defaults, so the test waits seconds: how often a worker
        # asks for work and says it is alive (offline after three missed heartbeats).
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_HEARTBEAT_SECONDS": "1",
        # a district's run waits for its lock as long as a test may hold it
        "DEMOGRAPHICS_LOCK_WAIT_SECONDS": str(DEADLINE),
        # the warm engines the workers' runs start (flows/engine.py) live in the test's folder
        "XDG_RUNTIME_DIR": str(tmp_path),
    }
    prefect = [str(PREFECT), "--no-prompt"]
    for command in (
        ["work-pool", "create", POOL, "--type", "process", "--overwrite"],
        ["deploy", "--prefect-file", "deployments/prefect.yaml", "--all"],
    ):
        done = subprocess.run(
            prefect + command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE
        )
        assert done.returncode == 0, done.stdout + done.stderr
    # The warm engine the runs are forked from (flows/engine.py), listening before the first
    # run: every run of these tests is forked warm, as after a worker's first few.
    warm = subprocess.run(
        [sys.executable, "-m", "flows.engine", "--warm-up"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert warm.returncode == 0 and "warm engine ready" in warm.stdout, warm.stderr
    workers = Workers(env, tmp_path)
    workers.start("w1")
    workers.start("w2")
    try:
        wait_for("both workers online", lambda: online() == {"w1", "w2"})
        wait_until_served(DISTRICT_DEPLOYMENT, POOL)
        yield workers
    finally:
        workers.stop()
        for pid in processes_mentioning(str(tmp_path)):  # warm engines idle for an hour
            os.kill(pid, signal.SIGTERM)
        forget_the_pool()


def forget_the_pool() -> None:
    """Delete the pool's deployments and the pool: a later test serves deployments of the same
    names from a runner, which would not take them back from a pool."""
    with get_client(sync_client=True) as client:
        for deployment in client.read_deployments():
            if deployment.work_pool_name == POOL:
                client.delete_deployment(deployment.id)
        client.delete_work_pool(POOL)


def online() -> set[str]:
    with get_client(sync_client=True) as client:
        found = client.read_workers_for_work_pool(POOL)
    return {w.name for w in found if str(w.status.value) == "ONLINE"}


def wait_for(what: str, check: Callable[[], bool], timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"waited {timeout:g} s for {what}"
        time.sleep(0.1)


def district_runs(since: datetime) -> dict[str, list[FlowRun]]:
    """The sync-district-drop runs the Prefect server has made since then, by district."""
    with get_client(sync_client=True) as client:
        found = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["sync-district-drop"])),
            flow_run_filter=FlowRunFilter(
                expected_start_time=FlowRunFilterExpectedStartTime(after_=since)
            ),
        )
    by: dict[str, list[FlowRun]] = {}
    for run in found:
        by.setdefault(str(run.parameters["district"]), []).append(run)
    return by


def test_two_workers_share_six_districts_each_synced_once_with_its_email_and_artifact(
    product: Product, pool: Workers, tmp_path: Path
) -> None:
    p = product
    first = six_districts(p, tmp_path)
    since = datetime.now(UTC)

    nightly = run_deployed(NIGHTLY)

    assert nightly.state is not None and nightly.state.is_completed(), nightly.state
    assert nightly.labels.get(WORKER_LABEL) in {"w1", "w2"}  # the nightly ran on the pool too
    by_district = district_runs(since)
    assert sorted(by_district) == sorted(first)
    assert all(len(r) == 1 and r[0].state.is_completed() for r in by_district.values())
    assert all(r[0].parent_task_run_id for r in by_district.values())  # under the nightly run
    took = {r[0].labels.get(WORKER_LABEL) for r in by_district.values()}
    assert took == {"w1", "w2"}, took  # the two workers shared them
    recorded = runs(p.url)
    assert sorted(r["file_name"] for r in recorded) == sorted(f"{c}.csv" for c in first)
    assert all(r["status"] == "succeeded" and r["file_deleted_at"] for r in recorded)
    for code in first:
        assert [v["gender"] for v in values(p.url, code).values()] == ["F"]
        assert p.remote(code) == []
        (mail,) = [m for m in p.smtp.messages() if manager(code) in str(m["To"])]
        assert mail["Subject"].startswith(f"{code}: sync succeeded")
        assert latest_artifact(f"demographics-{code}").startswith(f"## {code}.csv: Succeeded")
    table = latest_artifact("nightly-demographics")
    assert table.count('"run": "ok"') == 6 and table.count('"outcomes": "1 Succeeded"') == 6
    forked = warm_engine_log(tmp_path)  # each district's run, forked from the warm engine
    assert all(f"flow run {r[0].id}: forked as process" in forked for r in by_district.values())


def warm_engine_log(folder: Path) -> str:
    return "".join(log.read_text() for log in folder.glob("demographics-engine-*/engine-*.log"))


def in_a_thread(run: Callable[[], State]) -> tuple[threading.Thread, list[State]]:
    """Run a flow in a thread of this process (with Prefect's settings); its state comes
    in the list."""
    ended: list[State] = []
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(lambda: ended.append(run()),))
    thread.start()
    return thread, ended


def test_a_worker_killed_mid_district_leaves_its_file_and_the_next_nightly_applies_it_once(
    product: Product, pool: Workers, tmp_path: Path
) -> None:
    p = product
    first = six_districts(p, tmp_path)
    since = datetime.now(UTC)
    held = HeldLock(p.url, "d3")  # d3's run will wait at the lock, in the middle of its sync
    try:
        # The nightly run here, in a thread: the districts' runs go to the pool's workers.
        thread, ended = in_a_thread(lambda: nightly_sync(return_state=True))
        held.wait_for_waiters(1, timeout=DEADLINE)
        d3 = wait_for_running("d3", since)
        # the others done, so that the worker killed is in the middle of d3 alone
        wait_for("the other districts to end", lambda: others_ended("d3", since))
        worker = d3.labels[WORKER_LABEL]
        pool.kill(worker)  # the worker and its flow runs, at once
    finally:
        held.release()
    thread.join(timeout=DEADLINE)

    (state,) = ended
    assert state.is_failed() and "1 of 6 districts failed: d3" in (state.message or "")
    assert f"flow run {d3.id}: forked as process" in warm_engine_log(tmp_path)  # the lifeline
    (crashed,) = district_runs(since)["d3"]
    assert crashed.state.is_crashed() and f"its worker {worker} stopped" in crashed.state.message
    assert p.remote("d3") == ["d3.csv"] and values(p.url, "d3") == {}
    assert [r for r in runs(p.url) if r["file_name"] == "d3.csv"] == []

    assert nightly_sync(return_state=True).is_completed()

    d3_runs = [r for r in runs(p.url) if r["file_name"] == "d3.csv"]
    assert [r["status"] for r in d3_runs] == ["succeeded"] and d3_runs[0]["values_changed"] == 1
    assert p.remote("d3") == [] and [v["gender"] for v in values(p.url, "d3").values()] == ["F"]
    assert sorted(r["file_name"] for r in runs(p.url)) == sorted(f"{c}.csv" for c in first)


def others_ended(district: str, since: datetime) -> bool:
    found = district_runs(since)
    return len(found) == 6 and all(
        r.state is not None and r.state.is_final()
        for code, runs_of in found.items()
        if code != district
        for r in runs_of
    )


def wait_for_running(district: str, since: datetime) -> FlowRun:
    found: list[FlowRun] = []

    def running() -> bool:
        runs_of = district_runs(since).get(district, [])
        found[:] = [r for r in runs_of if r.state and r.state.is_running()]
        return bool(found)

    wait_for(f"{district}'s run to be running", running)
    return found[0]

"""`demographics serve` stops within 5 s of SIGTERM, in one line, also when the Prefect API has
gone away first or a flow run is in the middle of a sync: a real Prefect API server and a real
`demographics serve`, both subprocesses, against the test database."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import HEADER, write_roster
from lockhelp import HeldLock
from storehelp import STUDENTS, line, load, snapshot, values

EXE = Path(sys.executable).with_name("demographics")
PROMISE_SECONDS = 5.0  # README: serve stops within 5 s of SIGTERM
SERVED = {
    "nightly-demographics-sync",
    "sync-district-drop",
    "process-drop-file",
    "approve-held-sync",
    "discard-held-sync",
    "change-teacher-fields",
    "apply-access-views",
}


class ApiServer:
    """A Prefect API server of its own (uvicorn on 127.0.0.1, its tables in a PostgreSQL
    database of its own), which a test may kill."""

    def __init__(self, home: Path, database: str) -> None:
        self.home = home
        self.database = database  # SQLAlchemy's URL of it
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": self.database,
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",  # a faster start; no blocks here
        }
        with (self.home / "server.log").open("w") as log:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "uvicorn", "--factory"),
                    "prefect.server.api.server:create_app",
                    *("--host", "127.0.0.1", "--port", str(self.port), "--log-level", "error"),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while not self.healthy():
            assert self.process.poll() is None, (self.home / "server.log").read_text()
            assert time.monotonic() < deadline, "the Prefect API server did not start in 60 s"
            time.sleep(0.1)

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def deployments(self) -> dict[str, dict[str, Any]]:
        response = httpx.post(f"{self.url}/deployments/filter", json={}, timeout=5)
        response.raise_for_status()
        return {d["name"]: d for d in response.json()}

    def served_since(self, since: datetime) -> set[str]:
        """The deployments a runner has polled for since `since`: those being served."""
        return {
            name
            for name, d in self.deployments().items()
            if d["last_polled"] and datetime.fromisoformat(d["last_polled"]) >= since
        }

    def run(self, deployment: str, **parameters: Any) -> str:
        """Start a run of a served deployment, as the Run button does; its id."""
        found = self.deployments()[deployment]
        response = httpx.post(
            f"{self.url}/deployments/{found['id']}/create_flow_run",
            json={"parameters": parameters},
            timeout=5,
        )
        response.raise_for_status()
        return str(response.json()["id"])


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory, pg_server: str) -> Iterator[ApiServer]:
    """One API server for the module (its first start takes ~10 s); a test that kills it
    restarts it for the next one."""
    from conftest import psycopg_dbname, scratch_database

    from tasks.db import asyncpg_url

    with scratch_database(pg_server, "prefect_serve") as url:
        server = ApiServer(
            tmp_path_factory.mktemp("prefect-api"), asyncpg_url(url, psycopg_dbname(url))
        )
        server.start()
        yield server
        server.kill()


@pytest.fixture
def api(api_server: ApiServer) -> ApiServer:
    if not api_server.healthy():
        api_server.kill()
        api_server.start()
    return api_server


class Serving:
    """`demographics serve` as a process, its output in a file."""

    def __init__(self, api: ApiServer, home: Path, **env: str) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.log = home / "serve.log"
        since = datetime.now(UTC)
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                [str(EXE), "serve"],
                env={
                    **os.environ,
                    "PREFECT_API_URL": api.url,
                    "PREFECT_HOME": str(home / "prefect"),
                    **env,
                },
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while api.served_since(since) != SERVED:
            assert self.process.poll() is None, self.output()
            assert time.monotonic() < deadline, "serve did not serve the seven deployments in 60 s"
            time.sleep(0.1)

    def output(self) -> str:
        return self.log.read_text()

    def stop(self, how: signal.Signals = signal.SIGTERM) -> float:
        """Send the signal and wait for the process to end; how long it took."""
        started = time.monotonic()
        self.process.send_signal(how)
        try:
            self.process.wait(PROMISE_SECONDS + 15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        took = time.monotonic() - started
        print(f"serve stopped {took:.2f} s after {how.name}")  # the figure, with -s
        return took

    def assert_stopped_in_one_line(self, took: float, line: str, runs: bool = False) -> None:
        """In time, exit 0, its last line `line`, and no traceback of serve's own (`runs`:
        a flow run's process shares the output, and Prefect's engine logs its failure)."""
        output = self.output()
        assert took < PROMISE_SECONDS, output
        assert self.process.returncode == 0, output
        assert runs or "Traceback" not in output, output
        last = output.splitlines()[-1]
        assert last.startswith(line) if runs else last == line, output  # (... killed after)


@pytest.fixture
def serve(api: ApiServer, tmp_path: Path) -> Iterator[Callable[..., Serving]]:
    """Start `demographics serve` (env: extra variables); any still running at the end of
    the test (it failed) is killed."""
    started: list[Serving] = []

    def start(**env: str) -> Serving:
        started.append(Serving(api, tmp_path / f"serve-{len(started)}", **env))
        return started[-1]

    yield start
    for serving in started:
        if serving.process.poll() is None:
            serving.process.kill()
            serving.process.wait()


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_stops_within_five_seconds(
    db: str, api: ApiServer, serve: Callable[..., Serving], how: signal.Signals
) -> None:
    serving = serve()
    took = serving.stop(how)
    serving.assert_stopped_in_one_line(took, f"stopped serving ({how.name})")
    # Not paused: a new `serve` started before this one stopped (a rolling restart) keeps
    # the nightly schedule on.
    assert not any(d["paused"] for d in api.deployments().values())


def test_serve_stops_within_five_seconds_while_a_sync_runs_and_nothing_is_lost(
    db: str, api: ApiServer, serve: Callable[..., Serving], tmp_path: Path
) -> None:
    """A process-file run waiting for the district's lock (as behind a long sync) is inside
    its sync's transaction when serve is told to stop: serve still stops in time, the run's
    process ends, the transaction rolls back, and the file stays in the drop for the next run."""
    load(db, "d1", write_roster(tmp_path / "roster", STUDENTS))
    drop = Path(os.environ["DEMOGRAPHICS_HOME"]) / "drop" / "d1"
    drop.mkdir(parents=True)
    (drop / "upload.csv").write_text(f"{HEADER}\n{line('0000000001', gender='F')}\n")
    before = snapshot(db)
    serving = serve(
        PREFECT_RUNNER_POLL_FREQUENCY="1",  # the run starts within a second, not ten
        DEMOGRAPHICS_SETTLE_SECONDS="0",
        DEMOGRAPHICS_LOCK_WAIT_SECONDS="60",
        # A backend waiting for a lock notices its client is gone only when it checks.
        PGOPTIONS="-c client_connection_check_interval=100",
    )
    held = HeldLock(db, "d1")
    try:
        api.run("process-drop-file", district="d1", file_name="upload.csv")
        (waiter,) = held.wait_for_waiters(timeout=60, alive=lambda: serving.process.poll() is None)
        took = serving.stop()
        deadline = time.monotonic() + PROMISE_SECONDS
        while waiter in held.waiters():  # its process is gone: the transaction with it
            assert time.monotonic() < deadline, "the run's sync still waits after serve stopped"
            time.sleep(0.05)
    finally:
        held.release()
    serving.assert_stopped_in_one_line(
        took, "stopped serving (SIGTERM); 1 flow run in flight stopped", runs=True
    )
    values_, history, runs = snapshot(db)
    assert (values_, history) == before[:2] and values(db, "d1") == {}  # nothing applied
    assert {status for _run, status in runs} <= {"failed"}  # if recorded at all, as failed
    assert (drop / "upload.csv").exists()  # for the next run


def test_serve_stops_within_five_seconds_when_the_api_went_away_first(
    db: str, api: ApiServer, serve: Callable[..., Serving]
) -> None:
    """Last of the tests that need the API server: it kills it (the next would restart it)."""
    serving = serve()
    api.kill()
    deadline = time.monotonic() + 10
    while "websocket failed" not in serving.output():  # serve has noticed (in one line)
        assert time.monotonic() < deadline, serving.output()
        time.sleep(0.05)
    took = serving.stop()
    serving.assert_stopped_in_one_line(took, "stopped serving (SIGTERM)")


def test_serve_without_a_reachable_api_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/api"
    result = subprocess.run(
        [str(EXE), "serve"],
        env={
            **os.environ,
            "PREFECT_API_URL": url,
            "PREFECT_HOME": str(tmp_path / "prefect"),
            "DEMOGRAPHICS_HOME": str(tmp_path / "home"),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: cannot reach the Prefect API at {url} (ConnectError); "
        "start it (prefect server start) or set PREFECT_API_URL"
    ]


def test_serve_with_no_prefect_api_starts_a_prefect_server_on_postgresql_with_its_ui(
    db: str, prefect_api: Any, tmp_path: Path
) -> None:
    """With no PREFECT_API_URL, serve starts `prefect server start` (the API and the UI) on
    PostgreSQL, serves the deployments on it, and stops it when it stops, within 5 s."""
    from conftest import psycopg_dbname

    from flows.local import free_port
    from tasks.db import asyncpg_url

    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_API_PORT": str(port),  # not 4200: a developer's own may be running
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": asyncpg_url(
            prefect_api.database, psycopg_dbname(prefect_api.database)
        ),
    }
    env.pop("PREFECT_API_URL")
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen([str(EXE), "serve"], env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 120
        while "serving 7 deployments" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert f"Prefect UI: http://127.0.0.1:{port} (its database: PostgreSQL)" in log.read_text()
        ui = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert ui.status_code == 200 and "<html" in ui.text.lower()  # the UI is served
        settings = httpx.get(f"http://127.0.0.1:{port}/ui-settings", timeout=10).json()
        assert settings["api_url"] == f"http://127.0.0.1:{port}/api"  # and finds its API
        served = httpx.post(
            f"http://127.0.0.1:{port}/api/deployments/filter", json={}, timeout=10
        ).json()
        assert {d["name"] for d in served} >= SERVED
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(PROMISE_SECONDS + 15)
        took = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0 and took < PROMISE_SECONDS, log.read_text()
    assert log.read_text().splitlines()[-1] == "stopped serving (SIGTERM)"
    with pytest.raises(httpx.TransportError):  # its Prefect server stopped with it
        httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2)

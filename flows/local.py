"""A Prefect server on this machine, on PostgreSQL, for the commands that run flows without one
of their own to talk to (`demographics demo`, `nightly`, `serve` with no `PREFECT_API_URL`).

Prefect's own database is never the SQLite file `prefect server start` makes by default: several
flow runs at once (a nightly run's districts) lock SQLite, and Prefect's client then backs off
for seconds per run. The server's database is `PREFECT_SERVER_DATABASE_CONNECTION_URL` (or its
older name `PREFECT_API_DATABASE_CONNECTION_URL`) when set, else the `prefect` database of the
embedded PostgreSQL that also holds the project's own (`tasks.db.embedded_prefect_url`).

The server is a real `prefect server start` process, with its services (the scheduler that makes
the nightly's runs, the triggers that run automations), started and stopped by the command.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

from tasks.errors import DemographicsError

AUTOMATIONS_FILE = Path(__file__).resolve().parent.parent / "deployments" / "automations.yaml"
START_SECONDS = 120.0  # the first start migrates Prefect's tables (about 10 s here)
STOP_SECONDS = 2.0  # `serve` promises to stop within 5 s; its server goes with it
DATABASE_VARIABLES = (
    "PREFECT_SERVER_DATABASE_CONNECTION_URL",
    "PREFECT_API_DATABASE_CONNECTION_URL",
)


class PrefectServerFailed(DemographicsError):
    """The local Prefect server would not start; the message says where its log is."""

    transient = True


@dataclass
class PrefectServer:
    """A running `prefect server start` process and the API URL it answers on."""

    api_url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_SECONDS; safe to call twice."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def configured_api_url() -> str | None:
    """The Prefect API this process is pointed at (PREFECT_API_URL), if any."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def prefect_database_url() -> str:
    """Where a Prefect server started here keeps its tables: the configured PostgreSQL, else
    the embedded server's `prefect` database (started if need be)."""
    for name in DATABASE_VARIABLES:
        if os.environ.get(name):
            return os.environ[name]
    from tasks.db import embedded_prefect_url
    from tasks.settings import load_settings

    return embedded_prefect_url(load_settings().pgdata)


def server_port() -> int:
    """The port `serve` starts its Prefect server on: Prefect's own setting (4200)."""
    from prefect.settings import get_current_settings

    return int(get_current_settings().server.api.port)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_prefect_server(
    database_url: str,
    log: Path,
    port: int | None = None,
    ui: bool = False,
    env: dict[str, str] | None = None,
) -> PrefectServer:
    """Start `prefect server start` on 127.0.0.1 with its tables in `database_url` and wait
    until its API answers. `env` adds Prefect server settings (tests shorten service loops)."""
    port = port or free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    environment = {
        **os.environ,
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "true" if ui else "false",
        # The UI asks the API at the address this names, not at the --port it is served on
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
        **(env or {}),
    }
    environment.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    environment.pop("PREFECT_API_URL", None)  # the server is not a client of another
    command = [sys.executable, "-m", "prefect", "server", "start"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--analytics-off"]
    with log.open("wb") as out:
        # A session of its own: Ctrl-C in the terminal reaches the command, which stops its
        # runs first and the server last. Should the command die without stopping it, the
        # server is sent SIGTERM too (Linux).
        process = subprocess.Popen(
            command,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    server = PrefectServer(f"http://127.0.0.1:{port}/api", process, log)
    _wait_until_healthy(server)
    return server


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the thread that started it ends (Linux's
    PR_SET_PDEATHSIG; elsewhere nothing). Servers are started from the main thread."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _wait_until_healthy(server: PrefectServer) -> None:
    deadline = time.monotonic() + START_SECONDS
    while not _healthy(server.api_url):
        if server.process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise PrefectServerFailed(f"the local Prefect server did not start (see {server.log})")
        time.sleep(0.2)


def _healthy(api_url: str) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def pointed_at(api_url: str) -> Iterator[None]:
    """This process, and every process it starts, talks to the Prefect API at `api_url`."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    before = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            yield
    finally:
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before


@contextmanager
def prefect_api(ui: bool = False, port: int | None = None) -> Iterator[PrefectServer | None]:
    """The Prefect API for this command: PREFECT_API_URL when set (yields None), else a Prefect
    server started here on PostgreSQL for as long as the block runs (yields it)."""
    if configured_api_url():
        yield None
        return
    from tasks.settings import load_settings

    log = load_settings().home.expanduser() / "prefect" / "server.log"
    server = start_prefect_server(prefect_database_url(), log, port=port, ui=ui)
    try:
        with pointed_at(server.api_url):
            install_automations()
            try:
                yield server
            finally:
                _send_what_is_left()
    finally:
        server.stop()


def _send_what_is_left(seconds: float = 5.0) -> None:
    """Send the logs and events this process still holds for the server before it stops:
    Prefect ships them in the background, and a flow run's last lines would otherwise be
    lost ("Error logging to API")."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with suppress(Exception):  # what is not sent in time is lost, as before
            worker.drain_all(timeout=seconds)


def install_automations(path: Path = AUTOMATIONS_FILE) -> list[str]:
    """Create each automation the file declares that the Prefect server has none of by name
    (deployments/automations.yaml: crash the runs whose process died); returns their names."""
    import yaml
    from prefect import get_client
    from prefect.events.schemas.automations import AutomationCore

    declared = yaml.safe_load(path.read_text(encoding="utf-8"))["automations"]
    made = []
    with get_client(sync_client=True) as client:
        for automation in map(AutomationCore.model_validate, declared):
            if not client.read_automations_by_name(automation.name):
                client.create_automation(automation)
                made.append(automation.name)
    return made

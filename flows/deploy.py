"""The deployments: the nightly schedule and the manual runs people start from the Prefect UI.

`deployments/prefect.yaml` declares them, once: `prefect deploy` reads it for a work pool in
production, and `demographics serve` (or `make serve`) reads it too and serves the same
deployments from this process, so the schedule and the UI's Run button work with no work pool.
Serving passes on what the file says of each deployment (name, flow, description, parameters,
cron schedules, concurrency limit, tags, version) and leaves out what only a work pool uses;
a key it cannot carry out is refused (`DeploymentsInvalid`) rather than served otherwise.

Serving is Prefect's `Runner`, run here rather than through `prefect.serve`, so that a stop is
quick and bounded. `prefect.serve` pauses every schedule on the way out with the runner's
client, which retries an API that has gone away for about a minute (2 + 4 + ... + 32 s of
backoff) and then ends in a ConnectError and a traceback. Here SIGTERM and SIGINT start the
runner's own stop (no more polling; the runs in flight are sent SIGTERM, and their
transactions roll back), nothing else is asked of the API, and after STOP_SECONDS whatever
still runs is killed: `demographics serve` ends within 5 s, in one line.

The schedules are deliberately not paused: a paused nightly stays paused until the next
`serve` starts, so a stop that overlaps a new `serve` (a rolling restart) would switch the
nightly sync off for good. Unpaused, the runs due while nothing served wait as "Late" and run
when serving resumes (one at a time), which is what a missed night should do.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import re
import signal
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from prefect import Flow
from prefect.client.schemas.objects import FlowRun
from prefect.deployments.runner import RunnerDeployment
from prefect.runner import Runner
from prefect.schedules import Cron
from prefect.settings import PREFECT_API_URL
from websockets.exceptions import ConnectionClosed

from tasks.db import safe_url
from tasks.errors import DemographicsError
from tasks.settings import load_settings

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
STOP_SECONDS = 3.0  # for the runner to stop by itself; the promise (README) is 5 s
LAST_WORDS_SECONDS = 0.5  # for a task to unwind once cancelled

# --- the deployments, as deployments/prefect.yaml declares them ---------------------------

DEPLOYMENTS_FILE = Path(__file__).resolve().parent.parent / "deployments" / "prefect.yaml"
# What serving passes on to `Flow.to_deployment` as the file has it (schedules are built).
PASSED_ON = ("description", "parameters", "concurrency_limit", "tags", "version", "paused")
# What only a work pool uses: a runner serving in this process has no pool, image or steps.
POOL_ONLY = frozenset({"work_pool", "job_variables", "pull", "build", "push"})
READ = frozenset({"name", "entrypoint", "schedules", *PASSED_ON})
TEMPLATE = re.compile(r"\{\{\s*\$(\w+)\s*\}\}")


class DeploymentsInvalid(DemographicsError):
    """The deployments file says something `serve` cannot carry out; the message says what."""


def deployments(path: Path = DEPLOYMENTS_FILE) -> list[RunnerDeployment]:
    """The deployments the file declares, to be served from this process. Its `{{ $VAR }}`
    templates are the settings' values here (`prefect deploy` reads the environment): the
    same variables, validated and with their defaults."""
    variables = {"DEMOGRAPHICS_TIMEZONE": load_settings().timezone}
    return [_runner_deployment(declared, variables) for declared in _declared(path)]


def _declared(path: Path) -> list[dict[str, Any]]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DeploymentsInvalid(f"cannot read {path} ({exc.strerror or 'I/O error'})") from None
    except yaml.YAMLError:
        raise DeploymentsInvalid(f"{path} is not YAML") from None
    found = document.get("deployments") if isinstance(document, dict) else None
    if not isinstance(found, list) or not all(isinstance(d, dict) for d in found):
        raise DeploymentsInvalid(f"{path} has no list of deployments")
    return found


def _runner_deployment(declared: dict[str, Any], variables: dict[str, str]) -> RunnerDeployment:
    name = declared.get("name", "(no name)")
    unknown = sorted(set(declared) - READ - POOL_ONLY)
    if unknown:
        raise DeploymentsInvalid(f"deployment {name}: serve cannot carry out {unknown}")
    used = _resolved({k: v for k, v in declared.items() if k in READ}, variables, name)
    options = {key: used[key] for key in PASSED_ON if key in used}
    if used.get("schedules"):
        options["schedules"] = [_schedule(entry, name) for entry in used["schedules"]]
    return _flow(used.get("entrypoint"), name).to_deployment(name=name, **options)


def _resolved(value: Any, variables: dict[str, str], name: str) -> Any:
    """The value with its `{{ $VAR }}` templates replaced, in every string it holds."""
    if isinstance(value, dict):
        return {k: _resolved(v, variables, name) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolved(v, variables, name) for v in value]
    if not isinstance(value, str):
        return value

    def variable(match: re.Match[str]) -> str:
        if match.group(1) not in variables:
            raise DeploymentsInvalid(f"deployment {name}: serve has no ${match.group(1)}")
        return variables[match.group(1)]

    return TEMPLATE.sub(variable, value)


def _schedule(entry: Any, name: str) -> Cron:
    """A cron schedule (`cron`, and Cron's own keywords such as `timezone`)."""
    if not isinstance(entry, dict) or "cron" not in entry:
        raise DeploymentsInvalid(f"deployment {name}: serve builds cron schedules only")
    options = {k: v for k, v in entry.items() if k != "cron"}
    try:
        return Cron(entry["cron"], **options)
    except (TypeError, ValueError) as exc:
        raise DeploymentsInvalid(
            f"deployment {name}: a schedule serve cannot build ({type(exc).__name__})"
        ) from None


def _flow(entrypoint: Any, name: str) -> Flow[..., Any]:
    """The flow an entrypoint (`flows/pipeline.py:nightly_sync`) names, from the installed
    package: the module the file is, not the file loaded a second time."""
    file, _, attribute = str(entrypoint).partition(":")
    module = file.removesuffix(".py").replace("/", ".")
    try:
        found = getattr(importlib.import_module(module), attribute, None)
    except ModuleNotFoundError as exc:
        if not f"{module}.".startswith(f"{exc.name}."):  # a module it imports is missing
            raise
        found = None
    if not isinstance(found, Flow):
        raise DeploymentsInvalid(f"deployment {name}: {entrypoint} is not a flow")
    return found


@dataclass(frozen=True)
class Stopped:
    """How serving ended, for the one line `demographics serve` prints."""

    signal: str
    stopped: int = 0  # flow runs in flight when the stop came (sent SIGTERM by the runner)
    killed: int = 0  # of those, still running at the deadline and killed
    flow_run: FlowRun | None = None  # the run `run_served` waited for, as it ended

    def line(self) -> str:
        line = f"stopped serving ({self.signal})"
        if self.stopped:
            line += f"; {_runs(self.stopped)} in flight stopped"
        if self.killed:
            line += f" ({self.killed} killed after {STOP_SECONDS:g} s)"
        return line


def _runs(n: int) -> str:
    return f"{n} flow run{'s' if n != 1 else ''}"


def serve_all() -> Stopped:
    """Serve the deployments until SIGTERM or SIGINT; returns how it stopped."""
    served = deployments()
    with _one_line_connection_errors():
        return asyncio.run(_serve(served))


NIGHTLY = "nightly-sync/nightly-demographics-sync"


def run_now(deployment: str) -> FlowRun | None:
    """Run the deployment once, now, and wait for it to end. With PREFECT_API_URL set, it
    runs where that server runs it (a work pool's workers, or `demographics serve`); unset, a
    Prefect server on the embedded PostgreSQL is started and the deployments are served from
    this process until the run has ended (`demo`, `nightly`). None when SIGTERM or SIGINT
    stopped it first."""
    from flows.local import prefect_api

    with prefect_api() as local:
        if local is None:
            return run_deployed(deployment)
        return run_served(deployment).flow_run


def run_deployed(deployment: str) -> FlowRun:
    """Run the deployment (`flow/deployment`) on the configured Prefect server, where its
    runs run (a work pool's workers, or `demographics serve`), and wait until it ends;
    NotServed when nothing would run it."""
    from prefect.deployments import run_deployment

    from flows.fanout import check_served

    check_served(deployment)
    return run_deployment(deployment, timeout=None, as_subflow=False)


def run_served(deployment: str) -> Stopped:
    """Serve the deployments from this process just long enough to run `deployment`
    (`flow/deployment`) once, and the runs it starts (the nightly's districts); returns how
    it ended, with the flow run as it ended unless SIGTERM or SIGINT stopped it first."""
    served = deployments()
    with _one_line_connection_errors():
        return asyncio.run(_serve(served, once=deployment))


class StopRequest:
    """SIGTERM or SIGINT as an event the serving loop awaits.

    A Python signal handler runs on the main thread between two bytecodes of whatever the
    loop was doing, so it only records the signal and wakes the loop, thread-safely.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.event = asyncio.Event()
        self.signal: str | None = None

    def __call__(self, signum: int, _frame: object = None) -> None:
        if self.signal is None:
            self.signal = signal.Signals(signum).name
        self.loop.call_soon_threadsafe(self.event.set)


class _Runner(Runner):
    """Prefect's Runner, whose SIGTERM is ours: `Runner.start` installs `handle_sigterm`,
    which would stop it with no bound (and `sys.exit` before it has started)."""

    def __init__(self, stop: StopRequest, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._stop_request = stop

    def handle_sigterm(self, *args: Any, **kwargs: Any) -> None:
        self._stop_request(signal.SIGTERM)


# The runner asks for due runs every QUERY_SECONDS: a district run started by the nightly run
# waits at most that long to start. Besides the nightly run, it runs at most
# DEMOGRAPHICS_DISTRICT_CONCURRENCY flow runs at once (districts, or runs started from the UI).
QUERY_SECONDS = 2.0


def new_runner(stop: StopRequest) -> Runner:
    """The runner that serves the deployments, stopped by `stop`'s signals."""
    return _Runner(
        stop,
        pause_on_shutdown=False,  # see the module's doc
        limit=load_settings().district_concurrency + 1,
        query_seconds=QUERY_SECONDS,
    )


async def _serve(served: list[RunnerDeployment], once: str | None = None) -> Stopped:
    stop = StopRequest(asyncio.get_running_loop())
    previous = {number: signal.signal(number, stop) for number in STOP_SIGNALS}
    try:
        runner = new_runner(stop)
        registering = asyncio.ensure_future(register(runner, served))
        if await _stop_first(stop, registering):
            await _cancel(registering)
            return Stopped(stop.signal or "stopped")
        _registered(registering)
        serving = asyncio.ensure_future(runner.start())
        if once is None:
            _announce(served)
            if not await _stop_first(stop, serving):
                serving.result()  # the runner ended by itself: its error, if any, goes up
                return Stopped("the runner ended by itself")
            return await _stop_runner(runner, serving, stop.signal or "stopped")
        return await _serve_once(runner, serving, stop, once)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


async def _serve_once(
    runner: Runner, serving: asyncio.Future[Any], stop: StopRequest, deployment: str
) -> Stopped:
    """Run the deployment once while the runner serves; then stop serving."""
    running = asyncio.ensure_future(_run_to_the_end(deployment))
    waiter = asyncio.ensure_future(stop.event.wait())
    await asyncio.wait({running, serving, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if running.done():
        ended = running.result()
        await _exited(runner, FINISH_SECONDS)
        stopped = await _stop_runner(runner, serving, "done")
        return Stopped("done", stopped.stopped, stopped.killed, flow_run=ended)
    await _cancel(running)
    if serving.done():
        serving.result()
        return Stopped("the runner ended by itself")
    return await _stop_runner(runner, serving, stop.signal or "stopped")


# A run whose state is final still writes its last logs and exits on its own: stopping the
# runner at once would SIGTERM it there ("Flow run was cancelled" after Completed).
FINISH_SECONDS = 10.0


async def _exited(runner: Runner, seconds: float) -> None:
    """Wait until the runner's flow run processes have exited, for at most `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while _flow_run_processes(runner) and loop.time() < deadline:
        await asyncio.sleep(0.1)


async def _run_to_the_end(deployment: str) -> FlowRun:
    """Start a run of the deployment and wait until it is in a final state."""
    from prefect import get_client
    from prefect.deployments import arun_deployment

    flow_run = await arun_deployment(deployment, timeout=0, as_subflow=False)
    async with get_client() as client:
        while flow_run.state is None or not flow_run.state.is_final():
            await asyncio.sleep(QUERY_SECONDS / 2)
            flow_run = await client.read_flow_run(flow_run.id)
    return flow_run


async def register(runner: Runner, served: Iterable[RunnerDeployment]) -> None:
    for deployment in served:
        await runner.aadd_deployment(deployment)


class ApiUnavailable(DemographicsError):
    """The Prefect API cannot be reached to register the deployments; safe to print."""

    transient = True


def _registered(registering: asyncio.Future[None]) -> None:
    """Raise what stopped the registration: an unreachable API in words naming the setting."""
    try:
        registering.result()
    except (httpx.TransportError, OSError) as exc:
        raise ApiUnavailable(
            f"cannot reach the Prefect API at {safe_url(PREFECT_API_URL.value() or '')} "
            f"({type(exc).__name__}); "
            "start it (prefect server start) or set PREFECT_API_URL"
        ) from None


def _announce(served: list[RunnerDeployment]) -> None:
    names = ", ".join(f"{d.flow_name}/{d.name}" for d in served)
    print(f"serving {len(served)} deployments: {names}", flush=True)
    print("stop with Ctrl-C or SIGTERM", flush=True)


async def _stop_first(stop: StopRequest, task: asyncio.Future[Any]) -> bool:
    """Wait for the task or a stop request; True when the stop came first."""
    waiter = asyncio.ensure_future(stop.event.wait())
    await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    return stop.event.is_set()


async def _stop_runner(runner: Runner, serving: asyncio.Future[Any], why: str) -> Stopped:
    """The runner's own stop (no more polling; the runs in flight are sent SIGTERM) for at
    most STOP_SECONDS; then the flow runs still running are killed and the runner cancelled."""
    in_flight = len(_flow_run_processes(runner))
    stopping = asyncio.ensure_future(runner.astop() if runner.started else asyncio.sleep(0))
    if runner.started:
        # Done when the runner is, or when no flow run is left to wait for: the runner itself
        # may linger after its runs have ended (then it is cancelled below, nothing lost).
        deadline = asyncio.get_running_loop().time() + STOP_SECONDS
        while not serving.done() and asyncio.get_running_loop().time() < deadline:
            await asyncio.wait({serving}, timeout=0.1)
            if in_flight and not _flow_run_processes(runner):
                break
    killed = [] if serving.done() else _flow_run_processes(runner)
    for handle in killed:
        with suppress(OSError):  # gone meanwhile
            handle.hard_kill()
    await _cancel(serving, stopping)
    return Stopped(why, stopped=in_flight, killed=len(killed))


def _flow_run_processes(runner: Runner) -> list[Any]:
    """The processes of the flow runs the runner runs, alive. Prefect's process manager is
    internal: should it change, this finds none, and the runner's own stop is all there is."""
    manager = getattr(runner, "_process_manager", None)
    handles = [manager.get(i) for i in getattr(manager, "flow_run_ids", list)()]
    return [h for h in handles if h is not None and h.is_alive()]


async def _cancel(*tasks: asyncio.Future[Any]) -> None:
    """Cancel the tasks still running, give them LAST_WORDS_SECONDS to unwind, and collect
    their outcomes, so that nothing is left for asyncio to report."""
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=LAST_WORDS_SECONDS)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()


# --- the API going away is one line, not a traceback -------------------------------------


def _is_connection_error(exc: BaseException | None) -> bool:
    """True when the exception, or one it came from, is a connection failing."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (OSError, httpx.TransportError, ConnectionClosed)):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


class _ConnectionErrorsInOneLine(logging.Filter):
    """Prefect's runner logs a lost API connection with its traceback; the API going away is
    expected (a restart, a network cut), so it is one line naming the error's type."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if _is_connection_error(exc):
            record.msg = f"{record.getMessage()} ({type(exc).__name__})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


@contextmanager
def _one_line_connection_errors() -> Iterator[None]:
    """The filter on the root logger's handlers (Prefect's console) while serving."""
    one_line = _ConnectionErrorsInOneLine()
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(one_line)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(one_line)

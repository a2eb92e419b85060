"""The deployments: the nightly schedule and the manual runs people start from the Prefect UI.

`demographics serve` (or `make serve`) serves them from this process, so the schedule and the
UI's Run button work with no work pool; `deployments/prefect.yaml` declares the same six for
a work pool in production.

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
import logging
import signal
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import httpx
from prefect.deployments.runner import RunnerDeployment
from prefect.runner import Runner
from prefect.schedules import Cron
from prefect.settings import PREFECT_API_URL
from websockets.exceptions import ConnectionClosed

from flows.pipeline import (
    apply_access_views,
    approve_held_sync,
    change_teacher_fields,
    discard_held_sync,
    nightly_sync,
    process_file,
)
from tasks.db import safe_url
from tasks.errors import DemographicsError
from tasks.settings import load_settings

NIGHTLY_CRON = "0 2 * * *"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
STOP_SECONDS = 3.0  # for the runner to stop by itself; the promise (README) is 5 s
LAST_WORDS_SECONDS = 0.5  # for a task to unwind once cancelled


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


@dataclass(frozen=True)
class Stopped:
    """How serving ended, for the one line `demographics serve` prints."""

    signal: str
    stopped: int = 0  # flow runs in flight when the stop came (sent SIGTERM by the runner)
    killed: int = 0  # of those, still running at the deadline and killed

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


class _StopRequest:
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

    def __init__(self, stop: _StopRequest, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._stop_request = stop

    def handle_sigterm(self, *args: Any, **kwargs: Any) -> None:
        self._stop_request(signal.SIGTERM)


async def _serve(served: list[RunnerDeployment]) -> Stopped:
    stop = _StopRequest(asyncio.get_running_loop())
    previous = {number: signal.signal(number, stop) for number in STOP_SIGNALS}
    try:
        runner = _Runner(stop, pause_on_shutdown=False)  # see the module's doc
        registering = asyncio.ensure_future(_register(runner, served))
        if await _stop_first(stop, registering):
            await _cancel(registering)
            return Stopped(stop.signal or "stopped")
        _registered(registering)
        _announce(served)
        serving = asyncio.ensure_future(runner.start())
        if not await _stop_first(stop, serving):
            serving.result()  # the runner ended by itself: its error, if any, goes up
            return Stopped("the runner ended by itself")
        return await _stop_runner(runner, serving, stop.signal or "stopped")
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


async def _register(runner: Runner, served: Iterable[RunnerDeployment]) -> None:
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


async def _stop_first(stop: _StopRequest, task: asyncio.Future[Any]) -> bool:
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

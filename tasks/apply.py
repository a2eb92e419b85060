"""Write one sync's changes: the changed students' values and one history row per value.

Set-based and in the caller's transaction: the changed rows arrive in one COPY, then one UPDATE
(and one INSERT for students with no values yet) joins them by key. Values that do not differ
were already left out by the diff, so unchanged students cost nothing here.
"""

from __future__ import annotations

import polars as pl
import psycopg
from psycopg import sql

from tasks.db import copy_frame, hash_joins_off
from tasks.match import STUDENT_ID, VALUE_COLUMNS
from tasks.progress import SILENT, Progress

_DELTA_TABLE = """
CREATE TEMP TABLE sync_delta (
    student_id bigint PRIMARY KEY, has_row boolean NOT NULL,
    gender text, ethnicity text, race text,
    english_learner boolean, migrant boolean, gifted_learner boolean, special_ed boolean,
    sed boolean, homeless boolean, foster boolean
) ON COMMIT DROP"""

_ASSIGN = sql.SQL(", ").join(
    sql.SQL("{0} = x.{0}").format(sql.Identifier(c)) for c in VALUE_COLUMNS
)
_COLUMNS = sql.SQL(", ").join(map(sql.Identifier, VALUE_COLUMNS))


def apply_changes(
    cur: psycopg.Cursor,
    run_id: int,
    delta: pl.DataFrame,
    history: pl.DataFrame,
    progress: Progress = SILENT,
) -> None:
    """Apply `delta` (final values of changing students) and record `history` for `run_id`."""
    if delta.height == 0:
        return
    progress.phase("apply", delta.height)
    cur.execute(_DELTA_TABLE)
    copy_frame(cur, "sync_delta", delta.select(STUDENT_ID, "has_row", *VALUE_COLUMNS))
    cur.execute("ANALYZE sync_delta")
    # By key, in key order (a merge join over both primary keys): a hash join of a district's
    # changes spills to disk, and at 1.5 million changed students of 5 million the UPDATE took
    # 14.5 s hashed (8.5 s with 256 MB of work_mem) against 5.3 s merged; 1.2 vs 0.9 s at 0.3M.
    with hash_joins_off(cur):
        cur.execute(
            sql.SQL(
                """UPDATE core.student_demographics d SET {}, updated_at = now()
                FROM sync_delta x WHERE x.has_row AND d.student_id = x.student_id"""
            ).format(_ASSIGN)
        )
    cur.execute(
        sql.SQL(
            """INSERT INTO core.student_demographics (student_id, {0})
            SELECT student_id, {0} FROM sync_delta WHERE NOT has_row"""
        ).format(_COLUMNS)
    )
    progress.phase("history", history.height)
    copy_frame(
        cur,
        "core.demographic_changes",
        history.select(
            pl.lit(run_id, dtype=pl.Int64).alias("run_id"),
            STUDENT_ID,
            "field",
            "old_value",
            "new_value",
        ),
    )

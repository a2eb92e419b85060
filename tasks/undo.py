"""Undo a sync run: put back the values it changed, as a new run with its own history.

A value that a later run changed again is kept as it is (the later decision stands), and the
undo says which ones. Undo takes the district's lock like a sync and runs in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
from psycopg import sql

from schemas.columns import FLAG_COLUMNS
from tasks import store
from tasks.db import connect
from tasks.errors import DemographicsError
from tasks.match import VALUE_COLUMNS
from tasks.progress import SILENT, Progress


class UndoRefused(DemographicsError):
    """The run cannot be undone; the message says why and is safe to print."""


@dataclass
class UndoOutcome:
    run_id: int
    undone_run_id: int
    district: str
    restored: int  # values put back
    students: int  # students whose values were put back
    kept: int  # values left alone because a later run changed them
    kept_examples: list[tuple[str, str, int]] = field(default_factory=list)
    # (student sourcedId, field, the later run that changed it)

    @property
    def message(self) -> str:
        text = (
            f"undo run {self.run_id}: restored {self.restored} values of run "
            f"{self.undone_run_id} for {self.students} students"
        )
        if self.kept:
            text += (
                f"; {self.kept} values were changed again by later runs and were kept as they are"
            )
        return text


def _restore_expression(column: str) -> sql.Composable:
    value = sql.Identifier("u", column)
    if column in FLAG_COLUMNS:
        value = sql.SQL("{}::boolean").format(value)
    return sql.SQL("{} = CASE WHEN {} THEN {} ELSE {} END").format(
        sql.Identifier(column),
        sql.Identifier("u", f"has_{column}"),
        value,
        sql.Identifier("d", column),
    )


def _pivot(column: str) -> sql.Composable:
    return sql.SQL(
        "bool_or(field = {0}) AS {1}, max(old_value) FILTER (WHERE field = {0}) AS {2}"
    ).format(sql.Literal(column), sql.Identifier(f"has_{column}"), sql.Identifier(column))


_RESTORE = sql.SQL(
    """
UPDATE core.student_demographics d
SET {}, updated_at = now()
FROM (SELECT student_id, {} FROM undo_changes WHERE later_run IS NULL
      GROUP BY student_id) u
WHERE d.student_id = u.student_id"""
).format(
    sql.SQL(", ").join(map(_restore_expression, VALUE_COLUMNS)),
    sql.SQL(", ").join(map(_pivot, VALUE_COLUMNS)),
)


def undo_run(
    url: str,
    run_id: int,
    requested_by: str,
    lock_wait_seconds: float = 60.0,
    progress: Progress = SILENT,
) -> UndoOutcome:
    """Undo sync run `run_id` as a new run of its own, under the district's lock, in one
    transaction; values changed again by a later run are kept (and counted). `progress` is
    told the phases."""
    started_at = datetime.now(UTC)
    with connect(url, autocommit=True) as conn:
        district_id, code, undone_by = _undoable(conn, run_id)
        with conn.transaction(), conn.cursor() as cur:
            store.lock_district(cur, district_id, code, lock_wait_seconds)
            again = cur.execute(
                "SELECT undone_by FROM core.sync_runs WHERE run_id = %s", (run_id,)
            ).fetchone()
            if undone_by is not None or (again and again[0] is not None):
                raise UndoRefused(f"run {run_id} was already undone by run {undone_by or again[0]}")
            undo_id = store.insert_run(
                cur,
                district_id=district_id,
                kind="undo",
                status="succeeded",
                requested_by=requested_by,
                started_at=started_at,
                undoes_run_id=run_id,
            )
            progress.phase("restore")
            outcome = _restore(cur, run_id, undo_id, code)
            store.update_run(
                cur,
                undo_id,
                updated=outcome.students,
                values_changed=outcome.restored,
                message=outcome.message,
            )
            cur.execute(
                "UPDATE core.sync_runs SET undone_by = %s WHERE run_id = %s", (undo_id, run_id)
            )
            progress.phase("commit")
    return outcome


def _undoable(conn: psycopg.Connection, run_id: int) -> tuple[int, str, int | None]:
    """The run's district (id, code) and the run that undid it, if it may be undone at all."""
    row = conn.execute(
        """SELECT r.district_id, d.code, r.kind, r.status, r.same_as_run_id, r.undone_by,
                  r.values_changed
           FROM core.sync_runs r JOIN core.districts d USING (district_id)
           WHERE r.run_id = %s""",
        (run_id,),
    ).fetchone()
    if row is None:
        raise UndoRefused(f"there is no run {run_id}")
    district_id, code, kind, status, same_as, undone_by, changed = row
    if kind != "sync" or status != "succeeded":
        raise UndoRefused(
            f"run {run_id} is a {status} {kind} run; only a succeeded sync can be undone"
        )
    if same_as is not None or not changed:
        raise UndoRefused(f"run {run_id} changed no values; there is nothing to undo")
    return district_id, code, undone_by


def _restore(cur: psycopg.Cursor, run_id: int, undo_id: int, code: str) -> UndoOutcome:
    """Put back the old values of `run_id` not changed since, with history rows for `undo_id`."""
    cur.execute(
        """CREATE TEMP TABLE undo_changes ON COMMIT DROP AS
           SELECT c.student_id, c.field, c.old_value, c.new_value, l.later_run
           FROM core.demographic_changes c
           LEFT JOIN (SELECT student_id, field, min(run_id) AS later_run
                      FROM core.demographic_changes WHERE run_id > %(run)s
                      GROUP BY student_id, field) l USING (student_id, field)
           WHERE c.run_id = %(run)s""",
        {"run": run_id},
    )
    cur.execute(_RESTORE)
    cur.execute(
        """INSERT INTO core.demographic_changes
               (run_id, student_id, field, old_value, new_value)
           SELECT %s, student_id, field, new_value, old_value
           FROM undo_changes WHERE later_run IS NULL""",
        (undo_id,),
    )
    counts = cur.execute(
        """SELECT count(*) FILTER (WHERE later_run IS NULL),
                  count(DISTINCT student_id) FILTER (WHERE later_run IS NULL),
                  count(*) FILTER (WHERE later_run IS NOT NULL)
           FROM undo_changes"""
    ).fetchone()
    assert counts is not None
    examples = cur.execute(
        """SELECT s.sourced_id, u.field, u.later_run
           FROM undo_changes u JOIN core.students s USING (student_id)
           WHERE u.later_run IS NOT NULL
           ORDER BY u.later_run, s.sourced_id, u.field LIMIT 20"""
    ).fetchall()
    return UndoOutcome(
        run_id=undo_id,
        undone_run_id=run_id,
        district=code,
        restored=counts[0],
        students=counts[1],
        kept=counts[2],
        kept_examples=[(r[0], r[1], int(r[2])) for r in examples],
    )

"""The district as the store knows it: settings, the per-district lock, and run records."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import errors, sql

from schemas.districts import DISTRICT_CODE_RULE, is_district_code, shown_code
from tasks.errors import DemographicsError


class UnknownDistrict(DemographicsError):
    """No district with that code; the message is safe to print."""


class DistrictBusy(DemographicsError):
    """Another sync, undo or roster load of the same district holds its lock."""

    transient = True


@dataclass(frozen=True)
class District:
    district_id: int
    code: str
    name: str
    error_limit: float
    hold_limit: float
    gender_codes: tuple[str, ...]
    recipients: tuple[str, ...]
    roster_limit: float = 0.10


def get_district(conn: psycopg.Connection, code: str) -> District:
    row = conn.execute(
        """SELECT d.district_id, d.code, d.name, s.error_limit, s.hold_limit, s.gender_codes,
                  s.notification_recipients, s.roster_limit
           FROM core.districts d JOIN core.district_settings s USING (district_id)
           WHERE d.code = %s AND d.active""",
        (code,),
    ).fetchone()
    if row is None:
        shown = shown_code(code)
        raise UnknownDistrict(
            f"district {shown} is not in the database; an operator adds it first "
            f"(demographics district add {shown} --name NAME --manager EMAIL)"
        )
    return District(
        district_id=row[0],
        code=row[1],
        name=row[2],
        error_limit=float(row[3]),
        hold_limit=float(row[4]),
        gender_codes=tuple(row[5]),
        recipients=tuple(row[6]),
        roster_limit=float(row[7]),
    )


EMAIL_SHAPE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


class DistrictExists(DemographicsError):
    """The code is taken; the message is safe to print."""


def add_district(
    conn: psycopg.Connection, code: str, name: str, manager_email: str, added_by: str
) -> int:
    """Add a district before its first roster (an operator's act); returns its id.

    Its first data manager is pending until a roster lists them as active staff (see
    `tasks.access.grant_pending_managers`); until then the district's emails go to them.
    """
    if not is_district_code(code):
        raise InvalidSetting(DISTRICT_CODE_RULE)
    if not name.strip():
        raise InvalidSetting("the district's name is empty")
    if not EMAIL_SHAPE.fullmatch(manager_email):
        raise InvalidSetting("the data manager's email is not an email address (name@domain)")
    with conn.transaction():
        row = conn.execute(
            """INSERT INTO core.districts (code, name) VALUES (%s, %s)
               ON CONFLICT (code) DO NOTHING RETURNING district_id""",
            (code, name.strip()),
        ).fetchone()
        if row is None:
            raise DistrictExists(f"district {code} already exists; nothing was changed")
        district_id = int(row[0])
        conn.execute("INSERT INTO core.district_settings (district_id) VALUES (%s)", (district_id,))
        conn.execute(
            "INSERT INTO core.pending_managers (district_id, email, added_by) VALUES (%s, %s, %s)",
            (district_id, manager_email, added_by),
        )
    return district_id


def lock_district(cur: psycopg.Cursor, district_id: int, code: str, wait_seconds: float) -> None:
    """Take the district's transaction lock: syncs, undos and roster loads never interleave.

    The lock is the district's row in `core.districts`, locked `FOR NO KEY UPDATE`: a table
    no SQL login can read, so (unlike an advisory lock, which any role may take) a reporting
    login cannot hold a district's syncs hostage. It is released when the transaction ends
    (commit, rollback or a dropped connection). Waits up to `wait_seconds`, then refuses
    with a clear message.
    """
    busy = DistrictBusy(
        f"another sync, undo or roster load of district {code} is running; "
        "try again when it has finished"
    )
    statement = "SELECT 1 FROM core.districts WHERE district_id = %s FOR NO KEY UPDATE"
    if wait_seconds <= 0:
        try:
            with cur.connection.transaction():
                cur.execute(statement + " NOWAIT", (district_id,))
        except errors.LockNotAvailable:
            raise busy from None
        return
    cur.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(wait_seconds * 1000)}ms",))
    try:
        with cur.connection.transaction():  # a savepoint: a timeout must not poison the caller
            cur.execute(statement, (district_id,))
    except errors.LockNotAvailable:
        raise busy from None
    finally:
        cur.execute("SELECT set_config('lock_timeout', '0', true)")


RUN_COLUMNS = (
    "district_id",
    "kind",
    "status",
    "file_name",
    "file_sha256",
    "file_bytes",
    "file_encoding",
    "requested_by",
    "started_at",
    "rows",
    "valid_rows",
    "error_rows",
    "warning_rows",
    "errors",
    "warnings",
    "matched",
    "updated",
    "unchanged",
    "unmatched",
    "values_changed",
    "approves_run_id",
    "same_as_run_id",
    "undoes_run_id",
    "message",
)


def insert_run(cur: psycopg.Cursor, **values: Any) -> int:
    """Record a run; returns its id. Only the known columns are accepted."""
    unknown = set(values) - set(RUN_COLUMNS)
    if unknown:
        raise TypeError(f"unknown run fields: {sorted(unknown)}")
    names = list(values)
    row = cur.execute(
        sql.SQL("INSERT INTO core.sync_runs ({}) VALUES ({}) RETURNING run_id").format(
            sql.SQL(", ").join(map(sql.Identifier, names)),
            sql.SQL(", ").join(sql.Placeholder() * len(names)),
        ),
        [values[n] for n in names],
    ).fetchone()
    assert row is not None
    return int(row[0])


def update_run(cur: psycopg.Cursor, run_id: int, **values: Any) -> None:
    unknown = set(values) - set(RUN_COLUMNS)
    if unknown:
        raise TypeError(f"unknown run fields: {sorted(unknown)}")
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(n), sql.Placeholder()) for n in values
    )
    cur.execute(
        sql.SQL(
            "UPDATE core.sync_runs SET {}, finished_at = clock_timestamp() WHERE run_id = %s"
        ).format(assignments),
        [*values.values(), run_id],
    )


@dataclass(frozen=True)
class RunRow:
    run_id: int
    district: str
    kind: str
    status: str
    file_name: str | None
    file_sha256: str | None
    requested_by: str
    started_at: datetime
    finished_at: datetime
    rows: int | None
    matched: int | None
    updated: int | None
    unchanged: int | None
    unmatched: int | None
    values_changed: int | None
    resolution: str | None
    resolved_by: str | None
    undone_by: int | None
    message: str | None


def list_runs(
    conn: psycopg.Connection,
    district: str | None = None,
    limit: int = 50,
    after_run: int | None = None,
) -> list[RunRow]:
    """The latest runs first: of one district, or only those recorded after `after_run`."""
    rows = conn.execute(
        """SELECT r.run_id, d.code, r.kind, r.status, r.file_name, r.file_sha256,
                  r.requested_by, r.started_at, r.finished_at, r.rows, r.matched, r.updated,
                  r.unchanged, r.unmatched, r.values_changed, r.resolution, r.resolved_by,
                  r.undone_by,
                  r.message
           FROM core.sync_runs r JOIN core.districts d USING (district_id)
           WHERE (%(d)s::text IS NULL OR d.code = %(d)s)
             AND (%(a)s::bigint IS NULL OR r.run_id > %(a)s)
           ORDER BY r.run_id DESC LIMIT %(n)s""",
        {"d": district, "n": limit, "a": after_run},
    ).fetchall()
    return [RunRow(*row) for row in rows]


def last_run_id(conn: psycopg.Connection) -> int:
    """The id of the latest run recorded (0 before any): what came after it is new."""
    row = conn.execute("SELECT coalesce(max(run_id), 0) FROM core.sync_runs").fetchone()
    return int(row[0]) if row else 0


class InvalidSetting(DemographicsError):
    """A district setting out of range; the message is safe to print."""


def update_settings(
    conn: psycopg.Connection,
    code: str,
    error_limit: float | None = None,
    hold_limit: float | None = None,
    gender_codes: tuple[str, ...] | None = None,
    recipients: tuple[str, ...] | None = None,
    roster_limit: float | None = None,
) -> District:
    """Change a district's settings; only the ones given. Returns the settings now in force."""
    for name, value in (
        ("error limit", error_limit),
        ("hold limit", hold_limit),
        ("roster limit", roster_limit),
    ):
        if value is not None and not 0 <= value <= 1:
            raise InvalidSetting(f"the {name} is a share between 0 and 1 (0.2 = 20 %)")
    if gender_codes is not None and (
        not gender_codes or any(not c.isalnum() or len(c) > 8 for c in gender_codes)
    ):
        raise InvalidSetting("gender codes are one or more short codes such as M,F,X")
    if recipients is not None and any("@" not in r for r in recipients):
        raise InvalidSetting("notification recipients are email addresses")
    district = get_district(conn, code)
    with conn.transaction():
        conn.execute(
            """UPDATE core.district_settings SET
                   error_limit = coalesce(%s, error_limit),
                   hold_limit = coalesce(%s, hold_limit),
                   gender_codes = coalesce(%s, gender_codes),
                   notification_recipients = coalesce(%s, notification_recipients),
                   roster_limit = coalesce(%s, roster_limit),
                   updated_at = now()
               WHERE district_id = %s""",
            (
                error_limit,
                hold_limit,
                None if gender_codes is None else list(gender_codes),
                None if recipients is None else list(recipients),
                roster_limit,
                district.district_id,
            ),
        )
    return get_district(conn, code)


def active_district_codes(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute("SELECT code FROM core.districts WHERE active ORDER BY code").fetchall()
    return [r[0] for r in rows]


def record_email(conn: psycopg.Connection, run_id: int, status: str, detail: str) -> None:
    """How the results email went; never touches the run's own outcome or finish time."""
    conn.execute(
        """UPDATE core.sync_runs SET email_status = %s, email_detail = %s,
                  emailed_at = clock_timestamp()
           WHERE run_id = %s""",
        (status, detail, run_id),
    )


def record_file_deleted(conn: psycopg.Connection, run_ids: list[int]) -> None:
    conn.execute(
        "UPDATE core.sync_runs SET file_deleted_at = clock_timestamp() WHERE run_id = ANY(%s)",
        (run_ids,),
    )


@dataclass(frozen=True)
class RunDelivery:
    """What became of a run's results email and of its source file in the drop."""

    email_status: str | None
    email_detail: str | None
    file_deleted_at: datetime | None


def run_delivery(conn: psycopg.Connection, run_id: int) -> RunDelivery | None:
    """How run `run_id`'s email went and whether its file was deleted; None: no such run."""
    row = conn.execute(
        "SELECT email_status, email_detail, file_deleted_at FROM core.sync_runs WHERE run_id = %s",
        (run_id,),
    ).fetchone()
    return None if row is None else RunDelivery(*row)


class NotHeld(DemographicsError):
    """The run is not a held sync waiting for a decision; the message is safe to print."""


@dataclass(frozen=True)
class HeldRun:
    run_id: int
    district: str
    file_name: str
    file_sha256: str
    kind: str = "sync"  # or "roster": a roster the guard held


def held_roster(conn: psycopg.Connection, district_id: int) -> tuple[int, str] | None:
    """The district's roster waiting for a decision, as (run id, its name), if any."""
    row = conn.execute(
        """SELECT run_id, file_name FROM core.sync_runs
           WHERE district_id = %s AND kind = 'roster' AND status = 'held'
             AND resolution IS NULL
           ORDER BY run_id DESC LIMIT 1""",
        (district_id,),
    ).fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


def held_run(conn: psycopg.Connection, run_id: int) -> HeldRun:
    """The held sync `run_id`, still waiting for approval or discarding."""
    row = conn.execute(
        """SELECT r.status, r.resolution, r.resolved_by, d.code, r.file_name, r.file_sha256,
                  r.kind
           FROM core.sync_runs r JOIN core.districts d USING (district_id)
           WHERE r.run_id = %s""",
        (run_id,),
    ).fetchone()
    if row is None:
        raise NotHeld(f"there is no run {run_id}")
    status, resolution, resolved_by, code, name, sha, kind = row
    if status != "held":
        raise NotHeld(f"run {run_id} was not held (its status is {status}); nothing to decide")
    if resolution is not None:
        raise NotHeld(f"held run {run_id} was already {resolution} by {resolved_by}")
    return HeldRun(run_id, code, name, sha, kind)


def unresolved_hold(conn: psycopg.Connection, district_id: int, sha: str) -> int | None:
    """The latest held run of this exact file (same SHA-256) still waiting for a decision."""
    row = conn.execute(
        """SELECT run_id FROM core.sync_runs
           WHERE district_id = %s AND file_sha256 = %s AND status = 'held'
             AND resolution IS NULL
           ORDER BY run_id DESC LIMIT 1""",
        (district_id, sha),
    ).fetchone()
    return None if row is None else int(row[0])


def loaded_roster(conn: psycopg.Connection, district_id: int, sha: str) -> int | None:
    """The run that loaded this very roster (same SHA-256), if it is what the district holds:
    its latest roster run that loaded one, with no load since (`roster load` records none,
    but stamps the district). The same export again then changes nothing."""
    row = conn.execute(
        """SELECT r.run_id, r.file_sha256, r.finished_at >= d.roster_loaded_at
           FROM core.sync_runs r JOIN core.districts d USING (district_id)
           WHERE r.district_id = %s AND r.kind = 'roster' AND r.status = 'succeeded'
             AND r.same_as_run_id IS NULL
           ORDER BY r.run_id DESC LIMIT 1""",
        (district_id,),
    ).fetchone()
    return int(row[0]) if row is not None and row[1] == sha and row[2] else None


def resolve_hold(cur: psycopg.Cursor, run_id: int, by: str) -> None:
    """Mark a held run approved, in the transaction of the run that applied it; NotHeld (the
    transaction then rolls back) when it was decided meanwhile."""
    cur.execute(
        """UPDATE core.sync_runs SET resolution = 'approved', resolved_by = %s,
                  resolved_at = now()
           WHERE run_id = %s AND resolution IS NULL""",
        (by, run_id),
    )
    if cur.rowcount != 1:
        raise NotHeld(f"held run {run_id} was decided meanwhile; nothing was applied")


def discard_holds(
    conn: psycopg.Connection,
    district_id: int,
    by: str,
    run_id: int | None = None,
    file_name: str | None = None,
    kind: str = "sync",
) -> list[int]:
    """Mark held runs discarded: one run, or every waiting hold of a file name or of a kind
    (retention: a demographics file's holds, or the roster's)."""
    rows = conn.execute(
        """UPDATE core.sync_runs SET resolution = 'discarded', resolved_by = %s,
                  resolved_at = now()
           WHERE district_id = %s AND status = 'held' AND resolution IS NULL
             AND (%s::bigint IS NULL OR run_id = %s)
             AND (%s::text IS NULL OR file_name = %s)
             AND (%s::bigint IS NOT NULL OR kind = %s)
           RETURNING run_id""",
        (by, district_id, run_id, run_id, file_name, file_name, run_id, kind),
    ).fetchall()
    return [int(r[0]) for r in rows]


def _in_folder(folder: str) -> tuple[str, str]:
    """How core.drop_files names the entries of a folder (`roster/users.csv`; a drop name
    never holds '/'), and a LIKE pattern for the names of that folder alone."""
    if not folder:
        return "", "%"
    return f"{folder}/", f"{folder}/%"


def observe_drop(
    conn: psycopg.Connection,
    district_id: int,
    files: list[tuple[str, int, datetime]],
    refused: list[tuple[str, str]],
    folder: str = "",
    others: list[tuple[str, int, datetime, str]] | None = None,
) -> dict[str, datetime]:
    """Record what a folder of the drop holds now; returns when each file was first seen
    unchanged (by its name in the folder). `others`: files of another kind (an .xlsx), with
    why they are not read, to be told about once like a refused entry.

    A file whose size or time changed counts as new (first seen now); entries no longer in
    the folder are forgotten, so a refused entry that comes back is reported again.
    """
    prefix, pattern = _in_folder(folder)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    rows = [(prefix + n, s, m, None) for n, s, m in files]
    rows += [(prefix + n, s, m, r) for n, s, m, r in others or []]
    rows += [(prefix + n, 0, epoch, r) for n, r in refused]
    conn.execute(
        """DELETE FROM core.drop_files WHERE district_id = %s AND NOT (name = ANY(%s))
             AND name LIKE %s AND (%s OR position('/' in name) = 0)""",
        (district_id, [r[0] for r in rows], pattern, bool(folder)),
    )
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO core.drop_files (district_id, name, size, modified, refused_reason)
               VALUES (%s, %s, %s, %s, %s)
               ON CONFLICT (district_id, name) DO UPDATE SET
                   size = excluded.size, modified = excluded.modified,
                   refused_reason = excluded.refused_reason,
                   first_seen = CASE
                       WHEN (core.drop_files.size, core.drop_files.modified)
                            IS DISTINCT FROM (excluded.size, excluded.modified)
                       THEN now() ELSE core.drop_files.first_seen END,
                   notified_at = CASE
                       WHEN core.drop_files.refused_reason IS DISTINCT FROM excluded.refused_reason
                       THEN NULL ELSE core.drop_files.notified_at END""",
            [(district_id, *r) for r in rows],
        )
    seen = conn.execute(
        "SELECT name, first_seen FROM core.drop_files WHERE district_id = %s AND name = ANY(%s)",
        (district_id, [r[0] for r in rows]),
    ).fetchall()
    return {name.removeprefix(prefix): when for name, when in seen}


def refusals_to_report(conn: psycopg.Connection, district_id: int, folder: str = "") -> set[str]:
    prefix, _pattern = _in_folder(folder)
    rows = conn.execute(
        """SELECT name FROM core.drop_files WHERE district_id = %s
             AND refused_reason IS NOT NULL AND notified_at IS NULL""",
        (district_id,),
    ).fetchall()
    names = (r[0] for r in rows)
    if prefix:
        return {n.removeprefix(prefix) for n in names if n.startswith(prefix)}
    return {n for n in names if "/" not in n}


def mark_refusals_reported(
    conn: psycopg.Connection, district_id: int, names: list[str], folder: str = ""
) -> None:
    prefix, _pattern = _in_folder(folder)
    conn.execute(
        """UPDATE core.drop_files SET notified_at = now()
           WHERE district_id = %s AND name = ANY(%s)""",
        (district_id, [prefix + n for n in names]),
    )

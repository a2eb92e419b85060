"""Helpers for the access tests: a roster with every kind of person, and real logins.

District `org` (code given at load) has two schools. s1: school admin `sadm`, teachers `t1`
(class c1: st1, st2) and `t2` (class c2: st2, st3), an aide, a disabled teacher `off` and an
inactive student st6 (both in c1). s2: teacher `t3` (class c3: st4, st5). `adm` is the
district admin, `sadm2` the school admin of both schools. Every user's sourcedId and email
start with the district org, so two districts never share one; each student's race is
`R-<sourcedId>`, so a leaked value names its student.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from storehelp import line, load, sync

from schemas.roster import ONEROSTER_HEADERS

STUDENTS = {  # sourcedId suffix: (school, classes)
    "st1": ("s1", ("c1",)),
    "st2": ("s1", ("c1", "c2")),
    "st3": ("s1", ("c2",)),
    "st4": ("s2", ("c3",)),
    "st5": ("s2", ("c3",)),
    "st6": ("s1", ("c1",)),  # inactive (tobedeleted)
}
STAFF = {  # suffix: (role, orgs, classes taught, enabledUser)
    "adm": ("administrator", ("",), (), "true"),
    "sadm": ("administrator", ("s1",), (), "true"),
    "sadm2": ("administrator", ("s1", "s2"), (), "true"),
    "t1": ("teacher", ("s1",), ("c1",), "true"),
    "t2": ("teacher", ("s1",), ("c2",), "true"),
    "t3": ("teacher", ("s2",), ("c3",), "true"),
    "aide": ("aide", ("s1",), (), "true"),
    "off": ("teacher", ("s1",), ("c1",), "false"),
}
CLASSES = {"c1": "s1", "c2": "s1", "c3": "s2"}
INACTIVE = {"st6"}


def email(org: str, who: str) -> str:
    return f"{who}@{org}.example.org"


def ssid(org: str, student: str) -> str:
    return f"{zlib.crc32(org.encode()) % 1000:03d}{int(student[2:]):07d}"


def write_access_roster(
    folder: Path,
    org: str,
    *,
    inactive: Iterable[str] = (),
    without_enrollments: Iterable[tuple[str, str]] = (),
    disabled: Iterable[str] = (),
    inactive_schools: Iterable[str] = (),
) -> Path:
    """The roster above; `inactive` users and `inactive_schools` (s1, s2) are `tobedeleted`;
    `disabled` staff have enabledUser=false; `without_enrollments` drops (user suffix, class)
    pairs, as a roster where that teacher left that class."""
    gone = set(INACTIVE) | set(inactive) | set(inactive_schools)
    dropped = set(without_enrollments)
    off = set(disabled)
    folder.mkdir(parents=True, exist_ok=True)

    def status(who: str) -> str:
        return "tobedeleted" if who in gone else ""

    def orgs(short: Iterable[str]) -> str:
        ids = [f"{org}-{s}" if s else org for s in short]
        return ids[0] if len(ids) == 1 else '"' + ",".join(ids) + '"'

    users = [
        f"{org}-{who},{status(who)},,{'false' if who in off else enabled},{orgs(where)},{role},"
        f"{who},,Staff,{who},,{who.upper()},{email(org, who)},,,,,"
        for who, (role, where, _taught, enabled) in STAFF.items()
    ] + [
        f"{org}-{who},{status(who)},,true,{orgs((school,))},student,{who},,Given,{who},,"
        f"{ssid(org, who)},{email(org, who)},,,,09,"
        for who, (school, _classes) in STUDENTS.items()
    ]
    enrollments = [
        f"{org}-e-{who}-{c},,,{org}-{c},{org}-{CLASSES[c]},{org}-{who},{role},false,,"
        for who, role, classes in (
            *((w, "teacher", s[2]) for w, s in STAFF.items()),
            *((w, "student", s[1]) for w, s in STUDENTS.items()),
        )
        for c in classes
        if (who, c) not in dropped
    ]
    files = {
        "orgs.csv": [
            f"{org},,,District {org},district,{org.upper()},",
            f"{org}-s1,{status('s1')},,School one of {org},school,S1,{org}",
            f"{org}-s2,{status('s2')},,School two of {org},school,S2,{org}",
        ],
        "users.csv": users,
        "classes.csv": [
            f"{org}-{c},,,Class {c},09,crs,{c.upper()},scheduled,,{org}-{school},term,,,"
            for c, school in CLASSES.items()
        ],
        "enrollments.csv": enrollments,
    }
    for name, lines in files.items():
        (folder / name).write_text(
            ONEROSTER_HEADERS[name] + "\n" + "".join(row + "\n" for row in lines),
            encoding="utf-8",
        )
    return folder


def load_and_sync(url: str, code: str, org: str, folder: Path, **roster: Any) -> None:
    """Load the roster and give every active student distinct values (all fields set)."""
    load(url, code, write_access_roster(folder, org, **roster))
    rows = [
        line(ssid(org, who), email(org, who), "F", "Eth", f"R-{org}-{who}", "Y,N,Y,N,Y,N,Y")
        for who in STUDENTS
        if who not in INACTIVE
    ]
    outcome = sync(url, code, rows)
    assert outcome.status == "succeeded", outcome.message


def login_url(url: str, role: str, password: str | None = None) -> str:
    """The test database's URL for another user (the test server trusts its socket)."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["user"] = role
    info.pop("password", None)
    if password is not None:
        info["password"] = password
    return psycopg.conninfo.make_conninfo(**info)


def visible(conn: psycopg.Connection) -> dict[str, dict[str, Any]]:
    """student_sourced_id -> the row as the connected login sees it."""
    cur = conn.execute("SELECT * FROM reporting.student_demographics")
    names = [d.name for d in cur.description or ()]
    return {r[2]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}


def drop_roles(url: str, roles: Iterable[str]) -> None:
    """Drop login roles (server-wide objects) with whatever was granted to them here."""
    with psycopg.connect(url, autocommit=True) as conn:
        for role in dict.fromkeys(roles):
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                ident = sql.Identifier(role)
                conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
                conn.execute(sql.SQL("DROP ROLE {}").format(ident))

"""The checks of a roster's four files, as a table of rules applied by one loop.

Each rule names the file and column an issue is reported on, the rows it judges (the file, or a
view of the files such as the students in users.csv), the condition a bad row meets, and the
severity, code and message. Rules run in table order, and the caller sorts the issues by file,
row and column (stably), so issues at the same place keep the table's order. Messages never
quote a value; the row and column say where.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import polars as pl

from schemas.cells import SSID_PATTERN
from schemas.roster import (
    BOOLEANS,
    ENROLLMENT_ROLES,
    FILE_ORDER,
    ORG_TYPES,
    REQUIRED_VALUES,
    ROSTER_FILES,
    STAFF_ROLES,
    STATUSES,
    USER_ROLES,
    RosterIssue,
    RosterSeverity,
)
from tasks.read import ROW

Views = Mapping[str, pl.DataFrame]
# A bad row's condition: an expression, or one built from the files (other files' ids).
Condition = pl.Expr | Callable[[Views], pl.Expr]

_ORG_TYPE = pl.col("type").str.to_lowercase()
_ROLE = pl.col("role").str.to_lowercase()
_USER_ROLE = pl.col("_user_role")
# The views some rules judge instead of a whole file.
STUDENTS = "students in users.csv"
ACTIVE_SSIDS = "active students in users.csv with an identifier"
ENROLLED_USERS = "enrollments.csv with the role of each user in users.csv"


def is_active() -> pl.Expr:
    """Not `tobedeleted` (an empty status is active)."""
    return pl.col("status").is_null() | (pl.col("status").str.to_lowercase() != "tobedeleted")


@dataclass(frozen=True)
class Rule:
    """Every row of `view` (default: the file itself) that meets `condition` is one issue."""

    file: str
    column: str | None
    condition: Condition
    severity: RosterSeverity
    code: str
    message: str
    view: str | None = None

    def __call__(self, views: Views) -> list[RosterIssue]:
        frame = views[self.view or self.file]
        condition = self.condition if isinstance(self.condition, pl.Expr) else self.condition(views)
        rows = frame.filter(condition)[ROW].to_list()
        return [
            RosterIssue(self.file, self.severity, self.code, self.message, row, self.column)
            for row in rows
        ]


def _views(frames: Views) -> dict[str, pl.DataFrame]:
    """The files, and the views of them that some rules judge."""
    users = frames["users.csv"]
    students = users.filter(_ROLE == "student")
    user_roles = users.select(
        pl.col("sourcedId").alias("userSourcedId"), _ROLE.alias("_user_role")
    ).unique("userSourcedId", keep="first")
    return {
        **frames,
        STUDENTS: students,
        ACTIVE_SSIDS: students.filter(is_active() & pl.col("identifier").is_not_null()),
        ENROLLED_USERS: frames["enrollments.csv"].join(user_roles, on="userSourcedId", how="left"),
    }


def every_file(name: str) -> list[Rule]:
    """The rules every file has: required values, unique ids, a known status."""
    return [
        *(
            Rule(
                name,
                column,
                pl.col(column).is_null(),
                "error",
                "missing_value",
                f"{column} is empty",
            )
            for column in REQUIRED_VALUES[name]
        ),
        Rule(
            name,
            "sourcedId",
            # The frame is in file order, so a repeat is any row but an id's first (one hash
            # pass; a window of the earliest row per id cost 0.6-0.9 s per million rows).
            pl.col("sourcedId").is_not_null() & ~pl.col("sourcedId").is_first_distinct(),
            "error",
            "duplicate_id",
            "this sourcedId is already used by an earlier row of the file",
        ),
        Rule(
            name,
            "status",
            pl.col("status").is_not_null() & ~pl.col("status").str.to_lowercase().is_in(STATUSES),
            "error",
            "invalid_value",
            "status must be empty, active or tobedeleted",
        ),
    ]


def _one_district(views: Views) -> list[RosterIssue]:
    """orgs.csv names the one district being loaded."""
    districts = views["orgs.csv"].filter(_ORG_TYPE == "district")
    if districts.height == 1:
        return []
    return [
        RosterIssue(
            "orgs.csv",
            "error",
            "one_district",
            "orgs.csv must hold exactly one org of type district (the district being "
            f"loaded); it holds {districts.height}",
            column="type",
        )
    ]


def _unknown_org(views: Views) -> pl.Expr:
    """A user whose orgSourcedIds (a comma-separated list) names an org not in orgs.csv."""
    org_ids = set(views["orgs.csv"]["sourcedId"].drop_nulls().to_list())
    org_lists = (
        views["users.csv"]
        .select(
            ROW, pl.col("orgSourcedIds").str.split(",").list.eval(pl.element().str.strip_chars())
        )
        .explode("orgSourcedIds")
    )
    unknown = org_lists.filter(
        pl.col("orgSourcedIds").is_not_null() & ~pl.col("orgSourcedIds").is_in(list(org_ids))
    )[ROW].unique(maintain_order=True)
    return pl.col(ROW).is_in(unknown.implode())


def _unknown_school(views: Views) -> pl.Expr:
    orgs = views["orgs.csv"]
    schools = set(orgs.filter(_ORG_TYPE == "school")["sourcedId"].drop_nulls().to_list())
    return pl.col("schoolSourcedId").is_not_null() & ~pl.col("schoolSourcedId").is_in(list(schools))


def _unknown_class(views: Views) -> pl.Expr:
    classes = views["classes.csv"]["sourcedId"].drop_nulls().implode()
    return pl.col("classSourcedId").is_not_null() & ~pl.col("classSourcedId").is_in(classes)


RULES: list[Callable[[Views], list[RosterIssue]]] = [
    *(rule for name in ROSTER_FILES for rule in every_file(name)),
    Rule(
        "orgs.csv",
        "type",
        pl.col("type").is_not_null() & ~_ORG_TYPE.is_in(ORG_TYPES),
        "error",
        "invalid_value",
        f"type must be one of {', '.join(ORG_TYPES)}",
    ),
    _one_district,
    Rule(
        "users.csv",
        "role",
        pl.col("role").is_not_null() & ~_ROLE.is_in(USER_ROLES),
        "error",
        "invalid_value",
        f"role must be one of {', '.join(USER_ROLES)}",
    ),
    Rule(
        "users.csv",
        "enabledUser",
        pl.col("enabledUser").is_not_null()
        & ~pl.col("enabledUser").str.to_lowercase().is_in(BOOLEANS),
        "error",
        "invalid_value",
        "enabledUser must be true or false",
    ),
    Rule(
        "users.csv",
        "orgSourcedIds",
        _unknown_org,
        "error",
        "unknown_reference",
        "orgSourcedIds names an org that is not in orgs.csv",
    ),
    Rule(
        "users.csv",
        "identifier",
        pl.col("identifier").is_null(),
        "warning",
        "no_ssid",
        "this student has no identifier (SSID): a demographics row can match them only by email",
        view=STUDENTS,
    ),
    Rule(
        "users.csv",
        "identifier",
        pl.col("identifier").is_not_null() & ~pl.col("identifier").str.contains(SSID_PATTERN),
        "warning",
        "invalid_ssid",
        "this student's identifier is not a 10-digit SSID: a demographics row can match them "
        "only by email",
        view=STUDENTS,
    ),
    Rule(
        "users.csv",
        "identifier",
        pl.col("identifier").is_duplicated(),
        "error",
        "duplicate_ssid",
        "two active students have the same identifier (SSID); each SSID must belong to one student",
        view=ACTIVE_SSIDS,
    ),
    Rule(
        "classes.csv",
        "schoolSourcedId",
        _unknown_school,
        "error",
        "unknown_reference",
        "schoolSourcedId is not a school in orgs.csv",
    ),
    Rule(
        "enrollments.csv",
        "role",
        pl.col("role").is_not_null() & ~_ROLE.is_in(ENROLLMENT_ROLES),
        "error",
        "invalid_value",
        f"role must be one of {', '.join(ENROLLMENT_ROLES)}",
    ),
    Rule(
        "enrollments.csv",
        "classSourcedId",
        _unknown_class,
        "error",
        "unknown_reference",
        "classSourcedId is not a class in classes.csv",
    ),
    Rule(
        "enrollments.csv",
        "userSourcedId",
        pl.col("userSourcedId").is_not_null() & _USER_ROLE.is_null(),
        "error",
        "unknown_reference",
        "userSourcedId is not a user in users.csv",
        view=ENROLLED_USERS,
    ),
    Rule(
        "enrollments.csv",
        "role",
        (_ROLE == "student") & _USER_ROLE.is_not_null() & (_USER_ROLE != "student"),
        "error",
        "role_mismatch",
        "enrolled as a student, but the user's role in users.csv is not student",
        view=ENROLLED_USERS,
    ),
    Rule(
        "enrollments.csv",
        "role",
        (_ROLE == "teacher") & _USER_ROLE.is_not_null() & ~_USER_ROLE.is_in(STAFF_ROLES),
        "error",
        "role_mismatch",
        "enrolled as a teacher, but the user's role in users.csv is not a staff role",
        view=ENROLLED_USERS,
    ),
]


def check_files(frames: Views) -> list[RosterIssue]:
    """The issues the rules find in the four read files (one frame each), in table order."""
    views = _views(frames)
    return [issue for rule in RULES for issue in rule(views)]


def issue_order(issue: RosterIssue) -> tuple[int, int, str]:
    """Issues are shown by file (in FILE_ORDER), row, then column."""
    place = FILE_ORDER.index(issue.file) if issue.file in FILE_ORDER else -1  # a .zip: first
    return (place, issue.row or 0, issue.column or "")

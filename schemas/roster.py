"""What a OneRoster 1.1 or 1.2 CSV roster looks like, as far as this project reads it.

Only the columns the project uses are required; any other OneRoster column may be present and
is ignored. Headers are matched ignoring case and spaces, like the demographics file's.
`manifest.csv` (`oneroster.version`) says which version a roster is; without one it is 1.1.
1.2 moves each user's role and orgs from users.csv to roles.csv (one row per user, org and
role); a 1.2 roster is read as the 1.1 one it amounts to (tasks/roster/oneroster12.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

# The full OneRoster 1.1 CSV headers, as a student information system writes them.
ONEROSTER_HEADERS: dict[str, str] = {
    "orgs.csv": "sourcedId,status,dateLastModified,name,type,identifier,parentSourcedId",
    "users.csv": (
        "sourcedId,status,dateLastModified,enabledUser,orgSourcedIds,role,username,userIds,"
        "givenName,familyName,middleName,identifier,email,sms,phone,agentSourcedIds,grades,"
        "password"
    ),
    "classes.csv": (
        "sourcedId,status,dateLastModified,title,grades,courseSourcedId,classCode,classType,"
        "location,schoolSourcedId,termSourcedIds,subjects,subjectCodes,periods"
    ),
    "enrollments.csv": (
        "sourcedId,status,dateLastModified,classSourcedId,schoolSourcedId,userSourcedId,role,"
        "primary,beginDate,endDate"
    ),
}

ROSTER_FILES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # file: (required columns, optional columns used)
    "orgs.csv": (("sourcedId", "name", "type"), ("status", "identifier", "parentSourcedId")),
    "users.csv": (
        ("sourcedId", "orgSourcedIds", "role", "givenName", "familyName"),
        ("status", "enabledUser", "identifier", "email"),
    ),
    "classes.csv": (("sourcedId", "title", "schoolSourcedId"), ("status",)),
    "enrollments.csv": (("sourcedId", "classSourcedId", "userSourcedId", "role"), ("status",)),
}
# Values that must be present on every row (beyond sourcedId).
REQUIRED_VALUES: dict[str, tuple[str, ...]] = {
    "orgs.csv": ("sourcedId", "name", "type"),
    "users.csv": ("sourcedId", "orgSourcedIds", "role"),
    "classes.csv": ("sourcedId", "title", "schoolSourcedId"),
    "enrollments.csv": ("sourcedId", "classSourcedId", "userSourcedId", "role"),
    "roles.csv": ("sourcedId", "userSourcedId", "roleType", "role", "orgSourcedId"),  # 1.2
}

# OneRoster 1.2: users.csv loses role and orgSourcedIds, which roles.csv carries.
ROSTER_FILES_12: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    **ROSTER_FILES,
    "users.csv": (
        ("sourcedId", "givenName", "familyName"),
        ("status", "enabledUser", "identifier", "email"),
    ),
    "roles.csv": (("sourcedId", "userSourcedId", "roleType", "role", "orgSourcedId"), ("status",)),
}
ROLE_TYPES = ("primary", "secondary")
# The 1.2 role vocabulary (lower case), and the 1.1 role each one is kept as. Counselors and
# `ext:` roles have no place in this project's access model: such users are not loaded.
ROLES_12: dict[str, str | None] = {
    "aide": "aide",
    "counselor": None,
    "districtadministrator": "administrator",
    "guardian": "guardian",
    "parent": "parent",
    "principal": "administrator",
    "proctor": "proctor",
    "relative": "relative",
    "siteadministrator": "administrator",
    "student": "student",
    "systemadministrator": "administrator",
    "teacher": "teacher",
}
ONEROSTER_VERSIONS = ("1.1", "1.2")
# The files shown first to last in a report (manifest.csv and roles.csv among them).
FILE_ORDER = (
    "manifest.csv",
    "orgs.csv",
    "users.csv",
    "roles.csv",
    "classes.csv",
    "enrollments.csv",
)

ORG_TYPES = ("department", "school", "district", "local", "state", "national")
USER_ROLES = (
    "administrator",
    "aide",
    "guardian",
    "parent",
    "proctor",
    "relative",
    "student",
    "teacher",
)
STAFF_ROLES = ("administrator", "aide", "proctor", "teacher")
ENROLLMENT_ROLES = ("administrator", "proctor", "student", "teacher")
STATUSES = ("active", "tobedeleted")
BOOLEANS = ("true", "false")

RosterSeverity = Literal["error", "warning"]


@dataclass(frozen=True)
class RosterIssue:
    """One finding in a roster file: which file, row and column, and what is wrong."""

    file: str
    severity: RosterSeverity
    code: str
    message: str
    row: int | None = None
    column: str | None = None


@dataclass
class RosterCounts:
    """What a load did to one kind of record."""

    added: int = 0
    updated: int = 0
    deactivated: int = 0
    active: int = 0


@dataclass(frozen=True)
class SchoolLoss:
    """A school's active students before a roster, and how many the roster would deactivate."""

    school: str
    active: int
    leaving: int


@dataclass
class RosterResult:
    district: str
    issues: list[RosterIssue]
    counts: dict[str, RosterCounts]
    loaded: bool
    granted: list[str] = field(default_factory=list)  # pending data managers now granted
    held: str | None = None  # why the guard held it (nothing loaded), in words
    losses: list[SchoolLoss] = field(default_factory=list)  # by school, when held

    @property
    def errors(self) -> int:
        return sum(1 for i in self.issues if i.severity == "error")

    def to_json(self) -> str:
        return json.dumps(
            {
                "district": self.district,
                "loaded": self.loaded,
                "counts": {k: asdict(v) for k, v in self.counts.items()},
                "granted_managers": self.granted,
                "held": self.held,
                "losses": [asdict(loss) for loss in self.losses],
                "issues": [asdict(i) for i in self.issues],
            },
            indent=2,
            ensure_ascii=False,
        )

"""OneRoster 1.2 read as the 1.1 roster it amounts to.

1.2 takes each user's role and orgs out of users.csv and puts them in roles.csv, one row per
user, org and role (`roleType` primary or secondary). Read here: roles.csv is checked (a table
of rules, as the other files are), then each user gets the 1.1 role of their primary role (the
first of their roles when none is primary) and, as orgSourcedIds, every org they have an active
role in. The 1.2 administrators (district, site, system, principal) are 1.1's administrator;
a counselor or an `ext:` role has no place in this project's access model and is not loaded.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping

import polars as pl

from schemas.roster import ONEROSTER_VERSIONS, ROLE_TYPES, ROLES_12, RosterIssue
from tasks.read import ROW
from tasks.roster.rules import Rule, Views, every_file, is_active

_ROLE = pl.col("role").str.to_lowercase()


def roster_version(files: Mapping[str, bytes], issues: list[RosterIssue]) -> str | None:
    """The OneRoster version manifest.csv gives (`oneroster.version`), 1.1 without one (and
    for 1.0); None, with the issue why, for a manifest that cannot be read or another one."""
    data = files.get("manifest.csv")
    if data is None:
        return "1.1"
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error):
        issues.append(_manifest_issue("manifest.csv cannot be read as UTF-8 CSV"))
        return None
    properties = {r[0].strip().casefold(): r[1].strip() for r in rows if len(r) >= 2}
    delta = sorted(
        k.removeprefix("file.")
        for k, v in properties.items()
        if k.startswith("file.") and v.casefold() == "delta"
    )
    if delta:  # only the changes: read as a full snapshot, it would deactivate everyone else
        issues.append(
            _manifest_issue(
                f"{', '.join(delta)} is a delta export; export the roster in bulk (a full snapshot)"
            )
        )
        return None
    version = properties.get("oneroster.version", "1.1")
    if version == "1.0":
        return "1.1"
    if version not in ONEROSTER_VERSIONS:
        issues.append(_manifest_issue("oneroster.version must be 1.1 or 1.2"))
        return None
    return version


def _manifest_issue(message: str) -> RosterIssue:
    return RosterIssue("manifest.csv", "error", "unsupported_version", message, column="value")


def _unknown_user(views: Views) -> pl.Expr:
    users = views["users.csv"]["sourcedId"].drop_nulls().implode()
    return pl.col("userSourcedId").is_not_null() & ~pl.col("userSourcedId").is_in(users)


def _unknown_org(views: Views) -> pl.Expr:
    orgs = views["orgs.csv"]["sourcedId"].drop_nulls().implode()
    return pl.col("orgSourcedId").is_not_null() & ~pl.col("orgSourcedId").is_in(orgs)


ROLE_RULES = [
    *every_file("roles.csv"),
    Rule(
        "roles.csv",
        "roleType",
        pl.col("roleType").is_not_null() & ~pl.col("roleType").str.to_lowercase().is_in(ROLE_TYPES),
        "error",
        "invalid_value",
        "roleType must be primary or secondary",
    ),
    Rule(
        "roles.csv",
        "role",
        pl.col("role").is_not_null()
        & ~_ROLE.is_in(list(ROLES_12))
        & ~_ROLE.str.starts_with("ext:"),
        "error",
        "invalid_value",
        "role must be a OneRoster 1.2 role (student, teacher, aide, proctor, principal, "
        "siteAdministrator, districtAdministrator, ...) or an ext: role",
    ),
    Rule(
        "roles.csv",
        "userSourcedId",
        _unknown_user,
        "error",
        "unknown_reference",
        "userSourcedId is not a user in users.csv",
    ),
    Rule(
        "roles.csv",
        "orgSourcedId",
        _unknown_org,
        "error",
        "unknown_reference",
        "orgSourcedId is not an org in orgs.csv",
    ),
]


def as_oneroster_11(
    frames: Mapping[str, pl.DataFrame], issues: list[RosterIssue]
) -> dict[str, pl.DataFrame]:
    """The four 1.1 files a 1.2 roster amounts to: roles.csv checked (its issues appended)
    and folded into users.csv as role and orgSourcedIds."""
    issues.extend(issue for rule in ROLE_RULES for issue in rule(frames))
    users = frames["users.csv"].join(
        _roles_by_user(frames),
        left_on="sourcedId",
        right_on="userSourcedId",
        how="left",
        maintain_order="left",  # the rules tell "an earlier row" by the file's order
    )
    for row in users.filter(pl.col("_has_role").is_null())[ROW].to_list():
        issues.append(
            RosterIssue(
                "users.csv",
                "error",
                "no_role",
                "this user has no role in roles.csv; every user needs at least one",
                row=row,
                column="sourcedId",
            )
        )
    gone = pl.col("_any_active").not_()  # every role tobedeleted: the user is too
    kept = (
        users.filter(pl.col("role").is_not_null())
        .with_columns(pl.when(gone).then(pl.lit("tobedeleted")).otherwise("status").alias("status"))
        .drop("_has_role", "_any_active")
    )
    others = {k: v for k, v in frames.items() if k not in ("users.csv", "roles.csv")}
    return {**others, "users.csv": kept}


def _roles_by_user(frames: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    """Per user: the 1.1 role of their primary active role (else their first), and the orgs
    of their active roles; a user whose roles are all `tobedeleted` keeps their role and orgs
    and is marked inactive with them. Rows with an error are left out (reported already)."""
    users = frames["users.csv"]["sourcedId"].drop_nulls().implode()
    orgs = frames["orgs.csv"]["sourcedId"].drop_nulls().implode()
    roles = frames["roles.csv"].filter(
        pl.col("userSourcedId").is_in(users)
        & pl.col("orgSourcedId").is_in(orgs)
        & pl.col("role").is_not_null()
    )
    ranked = roles.with_columns(
        _ROLE.replace_strict(ROLES_12, default=None, return_dtype=pl.String).alias("_kept"),
        (pl.col("roleType").str.to_lowercase() != "primary").alias("_secondary"),
        (~is_active()).alias("_inactive"),
    ).sort("_inactive", "_secondary", ROW)
    org = pl.col("orgSourcedId")
    return (
        ranked.group_by("userSourcedId", maintain_order=True)
        .agg(
            pl.col("_kept").first().alias("role"),
            org.filter(~pl.col("_inactive")).unique(maintain_order=True).str.join(",").alias("_on"),
            org.unique(maintain_order=True).str.join(",").alias("_all"),
            (~pl.col("_inactive")).any().alias("_any_active"),
            pl.lit(True).alias("_has_role"),
        )
        .select(
            "userSourcedId",
            "role",
            pl.when("_any_active").then("_on").otherwise("_all").alias("orgSourcedIds"),
            "_any_active",
            "_has_role",
        )
    )

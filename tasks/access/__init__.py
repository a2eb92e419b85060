"""Who may do what (access-model.md): data managers, teacher fields, SQL logins, the view.

The reporting view itself and its grants are SQL (`sql/900_reporting_always.sql`); this package
records who may act (`managers`, `fields`), creates the PostgreSQL login roles that the view
maps to roster users (`logins`, `credentials`), and re-applies the view (`views`). Every act
is written to `core.access_acts` with who and when (`common.record_act`).

Messages never carry a student value, a password, or an email the caller typed that is not
known to be staff's (an unknown email could be a student's): they name the district instead.

The names below are the package's API, as they were when this was one module.
"""

from __future__ import annotations

from tasks.access.common import (
    ACTS,
    FIELDS,
    GROUP_ROLE,
    AccessError,
    AccessRefused,
    AccessViewsBusy,
    InvalidField,
    InvalidPassword,
    NotAManager,
    Person,
    UnknownPerson,
    find_staff,
    record_act,
)
from tasks.access.credentials import (
    PASSWORD_LENGTH,
    ROLE_PREFIX,
    SCRAM_ITERATIONS,
    check_password,
    generate_password,
    role_name,
    scram_sha256_verifier,
)
from tasks.access.fields import TeacherFields, parse_fields, set_teacher_fields, teacher_fields
from tasks.access.logins import (
    LOGIN_CONNECTION_LIMIT,
    RevokedLogin,
    SqlLogin,
    create_sql_login,
    login_roles,
    revoke_sql_login,
)
from tasks.access.managers import (
    Manager,
    grant_manager,
    grant_pending_managers,
    list_managers,
    manager_emails,
    pending_manager_emails,
    record_manager_act,
    require_manager,
    revoke_manager,
)
from tasks.access.views import AccessViews, OwnerStep, apply_access_views, owner_steps, view_summary

__all__ = [
    "ACTS",
    "FIELDS",
    "GROUP_ROLE",
    "LOGIN_CONNECTION_LIMIT",
    "PASSWORD_LENGTH",
    "ROLE_PREFIX",
    "SCRAM_ITERATIONS",
    "AccessError",
    "AccessRefused",
    "AccessViews",
    "AccessViewsBusy",
    "InvalidField",
    "InvalidPassword",
    "Manager",
    "NotAManager",
    "OwnerStep",
    "Person",
    "RevokedLogin",
    "SqlLogin",
    "TeacherFields",
    "UnknownPerson",
    "apply_access_views",
    "check_password",
    "create_sql_login",
    "find_staff",
    "generate_password",
    "grant_manager",
    "grant_pending_managers",
    "list_managers",
    "login_roles",
    "manager_emails",
    "owner_steps",
    "parse_fields",
    "pending_manager_emails",
    "record_act",
    "record_manager_act",
    "require_manager",
    "revoke_manager",
    "revoke_sql_login",
    "role_name",
    "scram_sha256_verifier",
    "set_teacher_fields",
    "teacher_fields",
    "view_summary",
]

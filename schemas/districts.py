"""A district's code: how operators, drop folders, flows and the store name a district."""

from __future__ import annotations

import re

# The same rule as core.districts.code's CHECK (sql/001_core.sql); safe as a folder name.
DISTRICT_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
DISTRICT_CODE_RULE = (
    "a district code is 1 to 64 letters, digits, '-' or '_', starting with a letter or digit"
)


def is_district_code(value: object) -> bool:
    return isinstance(value, str) and DISTRICT_CODE.fullmatch(value) is not None


def shown_code(value: object) -> str:
    """The code as a message may show it: itself when it has a district code's shape, else
    words only, since what was typed in its place (an email, a name) may be a student's."""
    return str(value) if is_district_code(value) else "(a value that is not a district code)"

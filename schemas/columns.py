"""The demographics CSV columns, as the contract names them."""

from __future__ import annotations

IDENTIFIER_COLUMNS: tuple[str, ...] = ("SSID", "email")
CODED_COLUMNS: tuple[str, ...] = ("gender",)
TEXT_COLUMNS: tuple[str, ...] = ("ethnicity", "race")
FLAG_COLUMNS: tuple[str, ...] = (
    "english_learner",
    "migrant",
    "gifted_learner",
    "special_ed",
    "sed",
    "homeless",
    "foster",
)
DEMOGRAPHIC_COLUMNS: tuple[str, ...] = ("gender", *TEXT_COLUMNS, *FLAG_COLUMNS)
KNOWN_COLUMNS: tuple[str, ...] = (*IDENTIFIER_COLUMNS, *DEMOGRAPHIC_COLUMNS)

# Upper-cased before checking; a lower-case original earns `normalized_value`.
CASE_NORMALIZED_COLUMNS: tuple[str, ...] = (*CODED_COLUMNS, *FLAG_COLUMNS)

DEFAULT_GENDER_CODES: tuple[str, ...] = ("M", "F")
MAX_TEXT_LENGTH = 255
MAX_EMAIL_LENGTH = 254

_BY_KEY = {name.casefold(): name for name in KNOWN_COLUMNS}


def canonical_column(header: str) -> str | None:
    """Match a header cell the way the contract says: trimmed, case ignored."""
    return _BY_KEY.get(header.strip().casefold())

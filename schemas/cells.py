"""The per-cell rules of the contract, as a pandera polars DataFrameModel.

The model is validated on a collected DataFrame with `lazy=True`, so every bad cell is
collected at once (on a LazyFrame pandera would check only the schema). Coded columns are
upper-cased before they reach the model; empty cells are null and never checked. Callers must
read `SchemaErrors.failure_cases` only: pandera's exception text embeds raw student values.
"""

from __future__ import annotations

from functools import lru_cache

import pandera.polars as pa

from schemas.columns import (
    DEFAULT_GENDER_CODES,
    FLAG_COLUMNS,
    MAX_EMAIL_LENGTH,
    MAX_TEXT_LENGTH,
)
from schemas.issues import Code

SSID_PATTERN = r"^[0-9]{10}$"
# How an SSID that a spreadsheet turned into a number looks: the shapes validate.py's
# messages and the advice (tasks/advice.py) both tell apart.
SSID_LOST_ZEROS = r"^[0-9]{1,9}$"
SSID_SCIENTIFIC = r"^[0-9]+(?:\.[0-9]+)?[eE][+-]?[0-9]+$"
SSID_DECIMAL = r"^[0-9]+\.[0-9]*$"
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# Syntax only (no DNS): dot-atom local part, dotted domain with a letter TLD.
EMAIL_PATTERN = rf"^{_ATOM}(?:\.{_ATOM})*@(?:{_LABEL}\.)+[A-Za-z]{{2,63}}$"
FLAG_VALUES = ["Y", "N"]


def _field(**checks: object) -> object:
    return pa.Field(nullable=True, coerce=False, **checks)


class DemographicsCells(pa.DataFrameModel):
    """Cell rules. Every column is optional: an absent column changes nothing."""

    SSID: str | None = _field(str_matches=SSID_PATTERN)
    email: str | None = _field(
        str_matches=EMAIL_PATTERN, str_length={"max_value": MAX_EMAIL_LENGTH}
    )
    gender: str | None = _field(isin=list(DEFAULT_GENDER_CODES))
    ethnicity: str | None = _field(str_length={"max_value": MAX_TEXT_LENGTH})
    race: str | None = _field(str_length={"max_value": MAX_TEXT_LENGTH})
    english_learner: str | None = _field(isin=FLAG_VALUES)
    migrant: str | None = _field(isin=FLAG_VALUES)
    gifted_learner: str | None = _field(isin=FLAG_VALUES)
    special_ed: str | None = _field(isin=FLAG_VALUES)
    sed: str | None = _field(isin=FLAG_VALUES)
    homeless: str | None = _field(isin=FLAG_VALUES)
    foster: str | None = _field(isin=FLAG_VALUES)

    class Config:
        strict = False
        coerce = False


# Each column has one rule, so a failing column names its code.
CODE_BY_COLUMN: dict[str, Code] = {
    "SSID": Code.INVALID_SSID,
    "email": Code.INVALID_EMAIL,
    "gender": Code.INVALID_GENDER,
    "ethnicity": Code.VALUE_TOO_LONG,
    "race": Code.VALUE_TOO_LONG,
    **{name: Code.INVALID_FLAG for name in FLAG_COLUMNS},
}


@lru_cache(maxsize=32)
def cells_model(gender_codes: tuple[str, ...] = DEFAULT_GENDER_CODES) -> type[DemographicsCells]:
    """The model with a district's allowed gender codes (a district setting, default M, F)."""
    if gender_codes == DEFAULT_GENDER_CODES:
        return DemographicsCells

    class DistrictCells(DemographicsCells):
        gender: str | None = _field(isin=list(gender_codes))

    return DistrictCells

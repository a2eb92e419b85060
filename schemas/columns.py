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


def _squeezed(header: str) -> str:
    """A header without case, spaces, dashes, underscores, dots or '#': how alike two are."""
    return "".join(ch for ch in header.casefold() if ch.isalnum())


# What people call the columns in the exports they make; each points to the column meant.
_ALSO_CALLED: dict[str, str] = {
    **{_squeezed(name): name for name in KNOWN_COLUMNS},
    **dict.fromkeys(
        (
            "studentid",
            "stateid",
            "statestudentid",
            "studentnumber",
            "sasid",
            "stateidnumber",
        ),
        "SSID",
    ),
    **dict.fromkeys(("emailaddress", "studentemail", "mail", "emailid"), "email"),
    **dict.fromkeys(("sex", "gendercode"), "gender"),
    **dict.fromkeys(("hispanic", "hispaniclatino", "ethnicgroup", "hispanicorlatino"), "ethnicity"),
    **dict.fromkeys(("races", "racecode", "racialgroup"), "race"),
    **dict.fromkeys(
        ("ell", "el", "lep", "englishlanguagelearner", "englishlearnerstatus", "elstatus"),
        "english_learner",
    ),
    **dict.fromkeys(("migrantstatus", "migrantstudent"), "migrant"),
    **dict.fromkeys(
        ("gifted", "gt", "gate", "giftedandtalented", "giftedtalented"), "gifted_learner"
    ),
    **dict.fromkeys(
        ("specialed", "specialeducation", "sped", "iep", "studentwithdisability", "swd"),
        "special_ed",
    ),
    **dict.fromkeys(
        (
            "economicallydisadvantaged",
            "socioeconomicallydisadvantaged",
            "ecodis",
            "frl",
            "freereducedlunch",
            "lowincome",
        ),
        "sed",
    ),
    **dict.fromkeys(("homelessstatus", "mckinneyvento"), "homeless"),
    **dict.fromkeys(("fostercare", "fosterstatus", "infostercare"), "foster"),
}


def resembled_column(header: str) -> str | None:
    """The column an unknown header resembles (other case, spaces or dashes, or a name
    people give it, such as Student ID for SSID); None when it resembles none. A header is
    never taken for it: the contract matches by name, and the person is told instead."""
    return _ALSO_CALLED.get(_squeezed(header))

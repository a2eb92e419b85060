"""Settings, read from environment variables prefixed `DEMOGRAPHICS_` (see README)."""

from __future__ import annotations

import functools
import os
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasks.errors import DemographicsError

ENV_PREFIX = "DEMOGRAPHICS_"


class SettingsError(DemographicsError):
    """A DEMOGRAPHICS_ variable holds a value its setting cannot take. The message names the
    variable and what it accepts, never the value (it may be a password in a URL)."""


def _default_home() -> Path:
    return Path.home() / ".local" / "share" / "demographics-sync"


class Settings(BaseSettings):
    # No inf or nan: "a number of days" must be one a timedelta can hold.
    # Frozen: load_settings hands the same instance to every caller while the environment
    # stays the same.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", allow_inf_nan=False, frozen=True
    )

    home: Path = Field(
        default_factory=_default_home,
        description="Folder for everything the project keeps locally (reports, embedded data).",
    )
    database_url: str | None = Field(
        default=None,
        description="PostgreSQL connection URL; unset, an embedded server under `home` is used.",
    )
    lock_wait_seconds: float = Field(
        default=60.0,
        ge=0,
        description="How long a sync waits for another sync of the same district to finish.",
    )

    drop_url: str | None = Field(
        default=None,
        description="Where districts drop files: `sftp://user@host:port/base` or "
        "`file:///folder`; unset, the folder `home/drop`. One sub-folder per district code.",
    )
    ssh_key: Path | None = Field(
        default=None, description="Private key file for the SFTP drop (key authentication only)."
    )
    known_hosts: Path | None = Field(
        default=None,
        description="known_hosts file pinning the SFTP server's host key; required for sftp://.",
    )
    sftp_attempts: int = Field(
        default=4, ge=1, description="Tries of an SFTP operation before the drop is unavailable."
    )
    sftp_backoff_seconds: float = Field(
        default=2.0, ge=0, description="First wait between SFTP tries; doubles each time."
    )
    settle_seconds: float = Field(
        default=120.0,
        ge=0,
        description="A file modified more recently than this may still be uploading; left alone.",
    )
    # A full file runs about 100-120 bytes a student: 1 GB leaves a 5-million-student
    # district's 500-600 MB export room to grow (README, "Sizing").
    max_file_mb: float = Field(
        default=1024.0, gt=0, description="Files larger than this are rejected unread."
    )
    retention_days: float = Field(
        default=7.0,
        gt=0,
        description="A dropped file older than this is deleted whatever its state.",
    )
    staging_dir: Path | None = Field(
        default=None,
        description="Where private (0700) download folders are made; unset, the system temp.",
    )
    smtp_url: str | None = Field(
        default=None,
        description="`smtp://user:pass@host:587` (STARTTLS) or `smtps://...:465`; unset, "
        "messages are written to the outbox folder under `home`.",
    )
    smtp_password_secret: str | None = Field(
        default=None,
        description="Name of a Prefect Secret block with the SMTP password (instead of the URL).",
    )
    smtp_ca_file: Path | None = Field(
        default=None, description="CA bundle to verify the SMTP server with (a private CA)."
    )
    mail_from: str = Field(
        default="demographics-sync@localhost", description="From address of results emails."
    )
    mail_attempts: int = Field(
        default=3, ge=1, description="Tries to send a results email before the failure is recorded."
    )
    mail_retry_seconds: float = Field(
        default=30.0, ge=0, description="Wait between tries to send a results email."
    )
    timezone: str = Field(
        default="UTC",
        description="Time zone of the nightly schedule (an IANA name).",
        json_schema_extra={"accepts": "an IANA time zone name, such as America/Chicago"},
    )
    district_concurrency: int = Field(
        default=4, ge=1, description="How many districts the nightly flow syncs at once."
    )

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        # OSError: a name that is a folder of the zone database ("America") is read as a file
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError("not a time zone") from None
        return value

    @property
    def drop(self) -> str:
        return self.drop_url or (self.home.expanduser() / "drop").resolve().as_uri()

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1024 * 1024)

    @property
    def outbox_dir(self) -> Path:
        return self.home.expanduser() / "outbox"

    @property
    def reports_dir(self) -> Path:
        return self.home.expanduser() / "reports"

    @property
    def pgdata(self) -> Path:
        return self.home.expanduser() / "pgdata"


def load_settings() -> Settings:
    """The settings in force; SettingsError (one line naming the variables) when any is wrong.
    Read again whenever the environment they come from changed; else the same instance (a
    flow run asks dozens of times, and building them costs milliseconds each time)."""
    try:
        return _settings(_environment())
    except ValidationError as exc:
        names = [str(e["loc"][0]) for e in exc.errors() if e["loc"]]
        raise SettingsError(invalid_settings_message(names)) from None


def _environment() -> tuple[tuple[str, str], ...]:
    """What the settings are read from: the DEMOGRAPHICS_ variables, and HOME (the default
    home folder)."""
    return tuple(
        sorted(
            (k, v) for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIX) or k == "HOME"
        )
    )


@functools.lru_cache(maxsize=32)
def _settings(_environment: tuple[tuple[str, str], ...]) -> Settings:
    return Settings()


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


# A unit read off the setting's name: `settle_seconds` is a number of seconds.
_UNITS = {"_seconds": "seconds", "_days": "days", "_mb": "megabytes"}
_KINDS = {int: "a whole number", float: "a number", Path: "a path", str: "text"}


def _plain_type(annotation: Any) -> Any:
    """`float` for `float`, `Path` for `Path | None`."""
    if get_origin(annotation) in (Union, types.UnionType):
        kept = [a for a in get_args(annotation) if a is not type(None)]
        return kept[0] if len(kept) == 1 else annotation
    return annotation


_BOUNDS = {"ge": "{} or more", "gt": "more than {}", "le": "{} or less", "lt": "less than {}"}


def _bound(constraint: Any) -> str | None:
    """`Field(ge=0)` is kept as an `annotated_types.Ge(ge=0)` in the field's metadata."""
    for attr, words in _BOUNDS.items():
        limit = getattr(constraint, attr, None)
        if isinstance(limit, int | float):
            return words.format(f"{limit:g}")
    return None


def accepts(name: str, field: FieldInfo) -> str:
    """What a setting accepts, in words, from its type and constraints: "a number of
    seconds, 0 or more"."""
    extra = field.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("accepts"), str):
        return str(extra["accepts"])
    kind = _KINDS.get(_plain_type(field.annotation), "a valid value")
    unit = next((u for suffix, u in _UNITS.items() if name.endswith(suffix)), None)
    if unit and kind in ("a number", "a whole number"):
        kind = f"{kind} of {unit}"
    bounds = [b for b in map(_bound, field.metadata) if b]
    return ", ".join([kind, *bounds])


def invalid_settings_message(fields: list[str]) -> str:
    """One line naming each wrong variable and what it accepts (each once, in field order)."""
    known = Settings.model_fields
    wrong = [name for name in known if name in set(fields)]
    if not wrong:
        return f"the {ENV_PREFIX}* settings are not valid (see the README's Configuration)"
    return "; ".join(f"{env_name(n)} must be {accepts(n, known[n])}" for n in wrong)

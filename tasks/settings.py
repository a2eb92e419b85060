"""Settings, read from environment variables prefixed `DEMOGRAPHICS_` (see README)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path.home() / ".local" / "share" / "demographics-sync"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEMOGRAPHICS_", extra="ignore")

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

    @property
    def reports_dir(self) -> Path:
        return self.home.expanduser() / "reports"

    @property
    def pgdata(self) -> Path:
        return self.home.expanduser() / "pgdata"


def load_settings() -> Settings:
    return Settings()

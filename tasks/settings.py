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
    max_file_mb: float = Field(
        default=512.0, gt=0, description="Files larger than this are rejected unread."
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
        default="UTC", description="Time zone of the nightly schedule (an IANA name)."
    )
    district_concurrency: int = Field(
        default=4, ge=1, description="How many districts the nightly flow syncs at once."
    )

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
    return Settings()

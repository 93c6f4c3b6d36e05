"""Conveyor's settings: one class, read from the environment and `.env`.

Every variable is documented in `.env.example`. `REDIS_URL` and
`DATABASE_URL` keep their conventional names; everything else is prefixed
`CONVEYOR_`.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

DEFAULT_SECRET = "change-me-in-production"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_ignore_empty=True, extra="ignore", env_prefix="CONVEYOR_"
    )

    environment: Literal["development", "production", "test"] = "development"

    database_url: str = Field(
        default="", validation_alias=AliasChoices("DATABASE_URL", "CONVEYOR_DATABASE_URL")
    )
    database_password: str = ""
    redis_url: str = Field(default="", validation_alias=AliasChoices("REDIS_URL", "CONVEYOR_REDIS_URL"))
    data_dir: Path = Path(".conveyor")

    secret_key: str = DEFAULT_SECRET

    task_modules: list[str] = ["worker.tasks"]
    default_queue: str = "default"
    queues: list[str] = ["default"]

    job_timeout: int = Field(default=900, ge=1)
    result_ttl: int = Field(default=3600, ge=0)
    failure_ttl: int = Field(default=7 * 86400, ge=0)
    snapshot_ttl: int = Field(default=7 * 86400, ge=60)

    max_body_bytes: int = Field(default=1_048_576, ge=1024)

    progress_interval: float = Field(default=0.05, ge=0)
    progress_journal_interval: float = Field(default=1.0, ge=0)
    heartbeat_interval: float = Field(default=2.0, gt=0)
    heartbeat_ttl: int = Field(default=10, ge=2)

    redact_keys: list[str] = [
        "password",
        "passwd",
        "secret",
        "token",
        "apikey",
        "authorization",
        "credential",
        "privatekey",
        "accesskey",
        "cookie",
    ]

    compat_endpoints: bool = True
    metrics_namespace: str = "Conveyor"
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.secret_key == DEFAULT_SECRET:
            message = "CONVEYOR_SECRET_KEY is the default value; set a long random secret"
            if self.environment == "production":
                raise ValueError(message)
            if self.environment == "development":
                log.warning(message)
        if self.default_queue not in self.queues:
            self.queues = [*self.queues, self.default_queue]
        return self

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL with the psycopg 3 driver made explicit (and the password, if given apart)."""
        url = sqlalchemy_url(self.database_url or f"sqlite:///{self.data_dir / 'conveyor.db'}")
        return with_password(url, self.database_password) if self.database_password else url


def with_password(url: str, password: str) -> str:
    """``url`` with its password set (quoted), for deployments that inject the password as a secret."""
    parts = urlsplit(url)
    if not parts.hostname:
        return url
    user = parts.username or ""
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    netloc = f"{user}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def sqlalchemy_url(url: str) -> str:
    """``url`` with PostgreSQL URLs pointed at the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (cached; tests clear the cache to reconfigure)."""
    return Settings()

"""Run Alembic migrations from code (`conveyor migrate`, `conveyor dev`, the tests)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from jobs.settings import ensure_private_file, get_settings, sqlalchemy_url


def alembic_config(url: str | None = None) -> Config:
    spec = importlib.util.find_spec("migrations")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the migrations package is not installed next to Conveyor")
    config = Config()
    config.set_main_option("script_location", str(Path(next(iter(spec.submodule_search_locations)))))
    url = sqlalchemy_url(url) if url else get_settings().sqlalchemy_url
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Bring the database at ``url`` (default: the configured one) up to ``revision``."""
    url = sqlalchemy_url(url) if url else get_settings().sqlalchemy_url
    if url.startswith("sqlite:///"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            ensure_private_file(Path(path))
    command.upgrade(alembic_config(url), revision)

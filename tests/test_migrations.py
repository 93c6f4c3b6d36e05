"""Alembic's migrations produce exactly the models' schema, on SQLite and on PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import jobs.history.models  # noqa: F401
from jobs.history.db import get_engine
from tests.conftest import Backend


def test_migrations_match_the_models(env: Backend):
    with get_engine().connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        diff = compare_metadata(context, SQLModel.metadata)
    assert diff == [], f"migrations and models differ on {env.name}: {diff}"


def test_migrations_downgrade_and_upgrade_cleanly(tmp_path):
    from alembic import command

    from jobs.history.migrate import alembic_config, upgrade

    url = f"sqlite:///{tmp_path / 'roundtrip.db'}"
    upgrade(url)
    command.downgrade(alembic_config(url), "base")
    upgrade(url)

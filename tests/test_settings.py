"""Settings refuse unsafe production values and normalise database URLs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from jobs.settings import DEFAULT_SECRET, Settings


def test_production_refuses_the_default_secret():
    with pytest.raises(ValidationError, match="CONVEYOR_SECRET_KEY"):
        Settings(environment="production", secret_key=DEFAULT_SECRET)


def test_postgres_urls_use_psycopg3():
    s = Settings(database_url="postgres://u:p@db:5432/conveyor", secret_key="x")
    assert s.sqlalchemy_url == "postgresql+psycopg://u:p@db:5432/conveyor"


def test_default_database_is_sqlite_in_the_data_dir(tmp_path):
    s = Settings(database_url="", data_dir=tmp_path, secret_key="x")
    assert s.sqlalchemy_url == f"sqlite:///{tmp_path / 'conveyor.db'}"


def test_the_default_queue_is_always_served():
    s = Settings(queues=["reports"], default_queue="default", secret_key="x")
    assert s.queues == ["reports", "default"]


def test_a_separately_injected_password_is_quoted_into_the_url():
    s = Settings(
        database_url="postgresql://conveyor@db.internal:5432/conveyor",
        database_password="p@ss/w:rd",
        secret_key="x",
    )
    assert s.sqlalchemy_url == "postgresql+psycopg://conveyor:p%40ss%2Fw%3Ard@db.internal:5432/conveyor"

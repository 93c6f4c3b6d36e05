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


# --- issue 11: no usable default secret ------------------------------------------------------


def test_the_old_default_secret_is_refused_in_every_environment():
    for environment in ("development", "test", "production"):
        with pytest.raises(ValidationError, match="CONVEYOR_SECRET_KEY"):
            Settings(environment=environment, secret_key=DEFAULT_SECRET)


def test_production_refuses_a_missing_secret_and_says_how_to_make_one(monkeypatch):
    monkeypatch.delenv("CONVEYOR_SECRET_KEY", raising=False)
    with pytest.raises(ValidationError, match=r"secrets\.token_urlsafe"):
        Settings(environment="production", _env_file=None)


@pytest.mark.parametrize(
    "weak",
    ["short-secret", "x" * 64, "ab" * 40, "changemechangemechangemechangeme"],
    ids=["short", "one-char", "two-chars", "repeated-word"],
)
def test_production_refuses_short_or_low_entropy_secrets(weak):
    with pytest.raises(ValidationError, match="CONVEYOR_SECRET_KEY"):
        Settings(environment="production", secret_key=weak)


def test_production_accepts_a_random_secret():
    import secrets

    for secret in (secrets.token_urlsafe(32), secrets.token_hex(32), secrets.token_urlsafe(48)):
        assert Settings(environment="production", secret_key=secret).secret_key == secret


def test_test_mode_draws_a_random_secret_per_process(monkeypatch):
    monkeypatch.delenv("CONVEYOR_SECRET_KEY", raising=False)
    first = Settings(environment="test", _env_file=None).secret_key
    assert first != DEFAULT_SECRET and len(first) >= 32
    assert Settings(environment="test", _env_file=None).secret_key == first


def test_development_keeps_a_random_secret_in_the_data_dir_0600(monkeypatch, tmp_path):
    import os
    import stat

    monkeypatch.delenv("CONVEYOR_SECRET_KEY", raising=False)
    first = Settings(environment="development", data_dir=tmp_path, _env_file=None).secret_key
    path = tmp_path / "secret-key"
    assert path.read_text().strip() == first and len(first) >= 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Settings(environment="development", data_dir=tmp_path, _env_file=None).secret_key == first
    other = tmp_path / "elsewhere"
    assert Settings(environment="development", data_dir=other, _env_file=None).secret_key != first


def test_the_sqlite_database_is_created_0600(tmp_path):
    import os
    import stat

    from jobs.history.db import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'conveyor.db'}")
    with engine.connect() as connection:
        connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        connection.commit()
    engine.dispose()
    assert stat.S_IMODE(os.stat(tmp_path / "data" / "conveyor.db").st_mode) == 0o600

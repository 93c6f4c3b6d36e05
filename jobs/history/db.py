"""The SQL engine: created lazily, once per process (Lambda and forked work-horses alike)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from jobs.settings import ensure_private_file, get_settings

# How a long-running domain object (the reconciler's passes) opens a fresh session for each
# unit of work: `open_session`, or a test's factory bound to another engine.
SessionFactory = Callable[[], Session]

_lock = threading.Lock()
_engine: sa.Engine | None = None
_engine_pid: int | None = None
_engine_url: str | None = None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> sa.Engine:
    """A new engine for ``url`` with Conveyor's connection settings.

    ``hide_parameters``: a database error's text (logged, kept in the set-aside journal) names
    the statement but never its values, which hold params, results and messages.
    """
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            ensure_private_file(Path(path))
        engine = sa.create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 10}, hide_parameters=True
        )
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    size = get_settings().database_pool_size
    return sa.create_engine(
        url, pool_pre_ping=True, pool_size=size, max_overflow=size, pool_recycle=1800, hide_parameters=True
    )


def get_engine() -> sa.Engine:
    """The engine for the configured database; a forked child gets its own."""
    global _engine, _engine_pid, _engine_url
    url = get_settings().sqlalchemy_url
    pid = os.getpid()
    if _engine is not None and _engine_pid == pid and _engine_url == url:
        return _engine
    with _lock:
        if _engine is None or _engine_pid != pid or _engine_url != url:
            if _engine is not None and _engine_pid == pid:
                _engine.dispose()
            elif _engine is not None:
                _engine.dispose(close=False)  # inherited over fork: never touch the parent's sockets
            _engine, _engine_pid, _engine_url = make_engine(url), pid, url
    return _engine


def reset_engine() -> None:
    """Forget the engine (tests that switch databases call this)."""
    global _engine, _engine_pid, _engine_url
    with _lock:
        if _engine is not None and _engine_pid == os.getpid():
            _engine.dispose()
        _engine = _engine_pid = _engine_url = None


def open_session() -> Session:
    """A new session on the process's engine, for an edge to open, pass in and close.

    Routes get one through `api.deps.SessionDep`, the CLI and the worker at their entry
    points; domain functions take it as ``session=`` and commit what they write themselves
    (the row must be committed before the job is enqueued, not when the request ends).
    """
    return Session(get_engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on error (for the edges' own work)."""
    with open_session() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise

"""A submission's SQL: the new row and its first event in one statement, without ORM objects.

Building SQLModel objects and letting the unit of work flush them cost a submit most of its
time (issue 16: two INSERTs, a separate idempotency SELECT, BEGIN and COMMIT, seven round
trips on PostgreSQL). Here the row is a plain :class:`NewJob` and the write is one Core
statement compiled once per dialect: on PostgreSQL a CTE inserts the row and, only when it
went in, its event (``ON CONFLICT DO NOTHING`` on the Idempotency-Key is the check); on
SQLite, which has no INSERT in a CTE, two statements in one transaction, which costs no
round trip in process. A batch of jobs can reuse :func:`row_values` and the statements.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from jobs.history.models import Job, JobEvent

if TYPE_CHECKING:
    from sqlmodel import Session

JOBS: sa.Table = Job.__table__  # type: ignore[attr-defined]
EVENTS: sa.Table = JobEvent.__table__  # type: ignore[attr-defined]
IDEMPOTENCY_COLUMNS = ("tenant", "idempotency_key")  # uq_jobs_tenant_idempotency_key
EVENT_DATA = "event_data"


@dataclass(slots=True)
class NewJob:
    """A job about to be stored, as the values of its row (the fields a new job can have)."""

    job_id: str
    tenant: str
    owner: str | None
    task: str
    queue: str
    status: str
    params: dict[str, Any]
    max_retries: int
    timeout_s: int | None
    tags: list[str] | None
    trace_id: str | None
    idempotency_key: str | None
    request_hash: str | None
    scheduled_for: datetime | None
    created_at: datetime
    enqueued_at: datetime | None
    updated_at: datetime
    parent_id: str | None = None
    depends_on: list[str] | None = None
    attempt: int = 1
    seq: int = 1
    progress: float | None = None
    message: str | None = None
    result: Any = None
    result_ref: dict[str, Any] | None = None
    error_type: str | None = None
    error_detail: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None


def row_values(job: NewJob | Job, data: dict[str, Any] | None) -> dict[str, Any]:
    """The statement's parameters: every column of the row (by name) and the event's data."""
    values = {column.name: getattr(job, column.name, None) for column in JOBS.columns}
    values[EVENT_DATA] = data
    return values


def _job_insert(dialect: Any) -> Any:
    binds = {column.name: sa.bindparam(column.name, type_=column.type) for column in JOBS.columns}
    return dialect.insert(JOBS).values(binds).on_conflict_do_nothing(index_elements=IDEMPOTENCY_COLUMNS)


EVENT_COLUMNS = ("job_id", "seq", "event", "status", "attempt", "progress", "message", "data", "created_at")


def _postgres_statement() -> sa.Insert:
    new = _job_insert(postgresql).returning(
        JOBS.c.job_id, JOBS.c.seq, JOBS.c.status, JOBS.c.attempt, JOBS.c.progress, JOBS.c.message,
        JOBS.c.created_at,
    ).cte("new_job")  # fmt: skip
    first_event = sa.select(
        new.c.job_id, new.c.seq, new.c.status, new.c.status, new.c.attempt, new.c.progress,
        new.c.message, sa.bindparam(EVENT_DATA, type_=EVENTS.c.data.type), new.c.created_at,
    )  # fmt: skip
    return sa.insert(EVENTS).from_select(list(EVENT_COLUMNS), first_event)


def _sqlite_event_statement() -> sa.Insert:
    binds: dict[str, Any] = {name: sa.bindparam(name, type_=EVENTS.c[name].type) for name in EVENT_COLUMNS}
    binds["event"] = sa.bindparam("status", type_=EVENTS.c.event.type)
    binds["data"] = sa.bindparam(EVENT_DATA, type_=EVENTS.c.data.type)
    return sa.insert(EVENTS).values(binds)


# Built once: SQLAlchemy caches each one's compiled form, so a submit pays only for its values.
# `preserve_rowcount`: without it SQLAlchemy 2.1 reports -1 rows for an INSERT without RETURNING.
COUNTED = {"preserve_rowcount": True}
POSTGRES_INSERT = _postgres_statement().execution_options(**COUNTED)
SQLITE_JOB_INSERT = _job_insert(sqlite).execution_options(**COUNTED)
SQLITE_EVENT_INSERT = _sqlite_event_statement()


def insert_new_job(session: Session, job: NewJob | Job, *, data: dict[str, Any] | None = None) -> bool:
    """Write the row and its first event (the caller commits); False when the Idempotency-Key
    already names a row of the tenant (nothing was written).

    On PostgreSQL, a session with no transaction under way runs the one statement in
    autocommit: it is atomic alone, and BEGIN and COMMIT would be two more round trips.
    """
    values = row_values(job, data)
    if session.get_bind().dialect.name == "postgresql":
        options = {} if session.in_transaction() else {"isolation_level": "AUTOCOMMIT"}
        return session.connection(execution_options=options).execute(POSTGRES_INSERT, values).rowcount == 1
    connection = session.connection()
    if connection.execute(SQLITE_JOB_INSERT, values).rowcount != 1:
        return False
    connection.execute(SQLITE_EVENT_INSERT, values)
    return True


_sqlite_writer = threading.Lock()


@contextmanager
def one_writer(session: Session) -> Iterator[None]:
    """Around a write transaction: on SQLite, one thread of the process at a time.

    SQLite lets one writer in and the others poll for the lock with growing sleeps (up to
    100 ms each), so 20 concurrent submits spent their time waiting in those sleeps (p95 over
    200 ms). Queued on a lock here they take turns as soon as the lock is free. PostgreSQL
    takes concurrent writers as they come.
    """
    if session.get_bind().dialect.name != "sqlite":
        yield
        return
    with _sqlite_writer:
        yield

"""A job's log in SQL, and the one read path for a job's log.

The recorder process copies what the worker appended to Redis (jobs/state/job_logs.py)
into ``job_logs`` (:func:`copy_logs`, about every half second), so a job's log
stays readable after Redis forgot the job, and is deleted with the job by
retention. A copy is idempotent (the primary key is the job and the line's
seq), so several recorders may copy the same lines.

Reads take Redis first, where every line lands first, and SQL once Redis has
no log for the job (expired, or Redis unreachable).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import TYPE_CHECKING

import redis.exceptions
import sqlalchemy as sa
from sqlmodel import col

from jobs.state.job_logs import (
    LogLine,
    ack_copied,
    copied_upto,
    dirty_jobs,
    forget,
    read_live,
    read_live_async,
)

if TYPE_CHECKING:
    from redis import Redis
    from sqlmodel import Session

log = logging.getLogger(__name__)

COPY_BATCH = 1000


def _insert_ignoring_copies(session: Session) -> sa.Insert:
    from jobs.history.models import JobLogLine

    table = JobLogLine.__table__  # type: ignore[attr-defined]
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing()


def _known_jobs(session: Session, job_ids: list[str]) -> set[str]:
    from jobs.history.models import Job

    query = sa.select(col(Job.job_id)).where(col(Job.job_id).in_(job_ids))
    return set(session.execute(query).scalars())


def copy_logs(client: Redis, *, session: Session, jobs: int = 100) -> int:
    """Copy up to ``COPY_BATCH`` new lines of each of up to ``jobs`` marked jobs into SQL, one
    transaction in all; returns how many lines were copied (0: nothing waits)."""
    marked = dirty_jobs(client, limit=jobs)
    if not marked:
        return 0
    known = _known_jobs(session, marked)
    rows: list[dict[str, object]] = []
    done: list[tuple[str, int]] = []
    for job_id in marked:
        start = copied_upto(client, job_id)
        lines, exists = read_live(client, job_id, after=start, limit=COPY_BATCH)
        if not exists or job_id not in known:  # expired, or a job SQL never had or has pruned
            forget(client, [job_id])
            continue
        rows.extend(_row(job_id, line) for line in lines)
        done.append((job_id, start + len(lines)))
    if rows:
        session.execute(_insert_ignoring_copies(session), rows)
    session.commit()
    for job_id, upto in done:
        ack_copied(client, job_id, upto)
    return len(rows)


def _row(job_id: str, line: LogLine) -> dict[str, object]:
    return {
        "job_id": job_id,
        "seq": line.seq,
        "attempt": line.attempt,
        "level": line.level[:16],
        "logger": line.logger[:200],
        "message": line.message,
        "created_at": datetime.fromisoformat(line.at.replace("Z", "+00:00")),
    }


def run_copier(client: Redis, stop: threading.Event, *, interval: float = 0.5) -> None:
    """Copy logs into SQL until ``stop``, then once more (the recorder process's thread)."""
    from jobs.history.db import session_scope

    while True:
        stopping = stop.is_set()
        try:
            with session_scope() as session:
                while copy_logs(client, session=session):
                    pass
        except (redis.exceptions.RedisError, sa.exc.SQLAlchemyError) as exc:
            log.warning("job logs: could not copy to SQL now: %s", exc)
        if stopping:
            return
        stop.wait(interval)


def sql_lines(session: Session, job_id: str, *, after: int, limit: int) -> list[LogLine]:
    from jobs.history.models import JobLogLine

    table = JobLogLine.__table__  # type: ignore[attr-defined]
    query = (
        sa.select(table)
        .where(table.c.job_id == job_id, table.c.seq > after)
        .order_by(table.c.seq)
        .limit(limit)
    )
    return [
        LogLine(
            seq=row.seq,
            at=row.created_at.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            level=row.level,
            logger=row.logger,
            message=row.message,
            attempt=row.attempt,
        )
        for row in session.execute(query)
    ]


def read_log(job_id: str, *, after: int, limit: int, client: Redis) -> list[LogLine]:
    """Lines past ``after`` (at most ``limit``): Redis while it holds the log, else SQL.

    The caller has checked that the reader may see the job.
    """
    try:
        lines, exists = read_live(client, job_id, after=after, limit=limit)
    except redis.exceptions.RedisError:
        exists = False
    return lines if exists else _from_sql(job_id, after, limit)


async def read_log_async(job_id: str, *, after: int, limit: int) -> list[LogLine]:
    """:func:`read_log` for the event loop: the API's pipelined Redis, SQL in a worker thread."""
    from starlette.concurrency import run_in_threadpool

    from jobs.state.pipelined_redis import pipelined_redis

    try:
        lines, exists = await read_live_async(pipelined_redis(), job_id, after=after, limit=limit)
    except (redis.exceptions.RedisError, OSError):
        exists = False
    return lines if exists else await run_in_threadpool(_from_sql, job_id, after, limit)


def _from_sql(job_id: str, after: int, limit: int) -> list[LogLine]:
    from jobs.history.db import session_scope

    with session_scope() as session:
        return sql_lines(session, job_id, after=after, limit=limit)

"""Retention: delete old ended jobs and compact old progress events, in small batches.

`conveyor prune --older-than 90d` (default `CONVEYOR_RETENTION_DAYS`) deletes
jobs that ended before the cutoff, with their events, logs and stored results, and
drops their live snapshots and logs from Redis. Jobs that never ended are kept however
old they are: they are the reconciler's business, not history.

Events are compacted separately (`--compact-events-older-than 30d`, default
`CONVEYOR_EVENT_COMPACT_DAYS`, 0 = never): progress events older than that
are deleted; the lifecycle events (queued, started, retry, finished, …) stay.
A batch (issue 16) created before the cutoff goes once none of its jobs is left.

Every batch is its own short transaction, selected through an index
(`ended_at`, `job_events.created_at`), so writers wait at most one batch on
SQLite and never on PostgreSQL's row locks for long; children's `parent_id`
is cleared by the foreign key through its own index.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from redis import Redis
from sqlmodel import Session, col, select

from jobs.clock import utcnow
from jobs.history.models import Batch, Job, JobEvent, JobLogLine, JobResult
from jobs.state.job_logs import forget as forget_logs
from jobs.state.live import job_key
from jobs.status import TERMINAL

COMPACTED_EVENTS = ("progress",)


@dataclass
class PruneReport:
    cutoff: datetime
    events_cutoff: datetime | None
    dry_run: bool
    jobs: int = 0
    events: int = 0
    results: int = 0
    log_lines: int = 0
    compacted_events: int = 0
    job_batches: int = 0  # batches of jobs (issue 16) deleted once none of their jobs is left
    batches: int = 0
    seconds: float = 0.0
    longest_batch_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def _old_jobs(cutoff: datetime) -> Any:
    return select(Job.job_id).where(
        col(Job.ended_at) < cutoff, col(Job.status).in_([s.value for s in TERMINAL])
    )


def _emptied_batches(cutoff: datetime) -> Any:
    """Batches created before the cutoff whose every job is gone (retention deleted them, or will)."""
    has_jobs = sa.exists(sa.select(1).where(col(Job.batch_id) == col(Batch.batch_id)))
    return select(Batch.batch_id).where(col(Batch.created_at) < cutoff, ~has_jobs)


def _count(session: Session, query: Any) -> int:
    return int(session.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one())


def prune(
    *,
    session: Session,
    older_than: timedelta,
    compact_events_older_than: timedelta | None = None,
    batch_size: int = 1000,
    pause: float = 0.0,
    dry_run: bool = False,
    client: Redis | None = None,
    progress: Callable[[PruneReport], None] | None = None,
) -> PruneReport:
    """Delete what is past retention (see the module docstring); returns what was (or would be) done.

    Each batch is committed on ``session`` before the next (short transactions); ``client``,
    when given, loses the live state of the jobs deleted.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    now = utcnow()
    report = PruneReport(
        cutoff=now - older_than,
        events_cutoff=now - compact_events_older_than if compact_events_older_than else None,
        dry_run=dry_run,
    )
    started = time.monotonic()
    old_events = None
    if report.events_cutoff is not None:
        old_events = select(JobEvent.id).where(
            col(JobEvent.created_at) < report.events_cutoff, col(JobEvent.event).in_(COMPACTED_EVENTS)
        )
    if dry_run:
        report.jobs = _count(session, _old_jobs(report.cutoff))
        doomed = _old_jobs(report.cutoff).subquery()
        report.events = int(
            session.execute(
                sa.select(sa.func.count()).where(col(JobEvent.job_id).in_(sa.select(doomed.c.job_id)))
            ).scalar_one()
        )
        report.compacted_events = _count(session, old_events) if old_events is not None else 0
        report.job_batches = _count(session, _emptied_batches(report.cutoff))
        session.rollback()  # end the read transaction: nothing was written
        report.seconds = time.monotonic() - started
        return report

    while True:
        batch_started = time.monotonic()
        ids = list(session.exec(_old_jobs(report.cutoff).limit(batch_size)).all())
        if not ids:
            session.rollback()
            break
        report.events += _rowcount(session.execute(sa.delete(JobEvent).where(col(JobEvent.job_id).in_(ids))))
        report.results += _rowcount(
            session.execute(sa.delete(JobResult).where(col(JobResult.job_id).in_(ids)))
        )
        report.log_lines += _rowcount(
            session.execute(sa.delete(JobLogLine).where(col(JobLogLine.job_id).in_(ids)))
        )
        report.jobs += _rowcount(session.execute(sa.delete(Job).where(col(Job.job_id).in_(ids))))
        session.commit()
        if client is not None:
            client.delete(*(job_key(job_id) for job_id in ids))
            forget_logs(client, ids)
        _batch_done(report, batch_started, progress, pause)
        if len(ids) < batch_size:
            break

    while True:
        batch_started = time.monotonic()
        emptied = list(session.exec(_emptied_batches(report.cutoff).limit(batch_size)).all())
        if emptied:
            report.job_batches += _rowcount(
                session.execute(sa.delete(Batch).where(col(Batch.batch_id).in_(emptied)))
            )
            session.commit()
            _batch_done(report, batch_started, progress, pause)
        else:
            session.rollback()
        if len(emptied) < batch_size:
            break

    while old_events is not None:
        batch_started = time.monotonic()
        batch = old_events.limit(batch_size).scalar_subquery()
        deleted = _rowcount(session.execute(sa.delete(JobEvent).where(col(JobEvent.id).in_(batch))))
        session.commit()
        report.compacted_events += deleted
        if deleted:
            _batch_done(report, batch_started, progress, pause)
        if deleted < batch_size:
            break
    report.seconds = time.monotonic() - started
    return report


def _rowcount(result: sa.Result) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def _batch_done(
    report: PruneReport, batch_started: float, progress: Callable[[PruneReport], None] | None, pause: float
) -> None:
    report.batches += 1
    report.longest_batch_s = max(report.longest_batch_s, time.monotonic() - batch_started)
    if progress is not None:
        progress(report)
    if pause:
        time.sleep(pause)


def delete_ended(*, session: Session, client: Redis | None, job_ids: list[str]) -> list[str]:
    """Delete these jobs, those of them that have ended, with their events and stored results
    (bulk delete); commits, and drops their live state. Returns the ids deleted."""
    ended = [s.value for s in TERMINAL]
    ids = list(
        session.exec(select(Job.job_id).where(col(Job.job_id).in_(job_ids), col(Job.status).in_(ended)))
    )
    if not ids:
        return []
    session.execute(sa.delete(JobEvent).where(col(JobEvent.job_id).in_(ids)))
    session.execute(sa.delete(JobResult).where(col(JobResult.job_id).in_(ids)))
    session.execute(sa.delete(Job).where(col(Job.job_id).in_(ids), col(Job.status).in_(ended)))
    session.commit()
    if client is not None:
        client.delete(*(job_key(job_id) for job_id in ids))
    return ids

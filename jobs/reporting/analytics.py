"""Analytics over the jobs that ended in a window: the same numbers from SQLite and PostgreSQL.

Definitions (also in the response's `definitions`):

- The population is every job whose `ended_at` (finished, failed or canceled)
  lies in [from, to), narrowed by tenant, queue and task.
- success_rate = finished / (finished + failed); canceled jobs are left out.
- retry_rate = retries / ended jobs (retries = attempts - 1: seed 003's "average
  retries per job"); retried_jobs counts the jobs that needed more than one.
- run_ms (ended - started) over finished and failed jobs; wait_ms (started -
  enqueued, of the last attempt) over ended jobs that started.
- Percentiles are nearest-rank (jobs/reporting/percentiles.py): the value at rank
  ceil(p * n / 100) of the ascending values, computed per dialect to the
  same number. Tests hold both databases to a hand count.
- Throughput is per UTC day of `ended_at`, every day of the window listed.
- Error signatures are computed when a failure is written (jobs/reporting/error_signature.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col

from jobs.access.redaction import redact_text
from jobs.history.models import Job
from jobs.reporting.percentiles import ALL, Measure, percentiles
from jobs.reporting.reports import (
    AnalyticsSummary,
    DayCount,
    ErrorSignature,
    GroupSummary,
    Outcomes,
    Percentiles,
    QueueSummary,
    TaskSummary,
)
from jobs.status import JobStatus

TOP_ERRORS = 10


DEFINITIONS = {
    "population": "jobs whose ended_at is in [from, to)",
    "success_rate": "finished / (finished + failed)",
    "retry_rate": "retries / ended jobs, where retries = attempts - 1",
    "run_ms": "ended_at - started_at, finished and failed jobs",
    "wait_ms": "started_at - enqueued_at of the last attempt, ended jobs that started",
    "percentile": "nearest rank: the value at rank ceil(p * n / 100) of the ascending values",
    "throughput": "jobs ended per UTC day",
}


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    tenant: str | None = None
    queue: str | None = None
    task: str | None = None

    def where(self) -> list[Any]:
        clauses: list[Any] = [col(Job.ended_at) >= self.start, col(Job.ended_at) < self.end]
        if self.tenant is not None:
            clauses.append(Job.tenant == self.tenant)
        if self.queue is not None:
            clauses.append(Job.queue == self.queue)
        if self.task is not None:
            clauses.append(Job.task == self.task)
        return clauses


def _day(session: Session) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return sa.func.to_char(sa.func.timezone("UTC", col(Job.ended_at)), "YYYY-MM-DD")
    return sa.func.substr(col(Job.ended_at), 1, 10)  # SQLite stores 'YYYY-MM-DD HH:MM:SS.ffffff' UTC


@dataclass
class Tallies:
    queues: dict[str, Outcomes]
    tasks: dict[str, Outcomes]
    days: dict[str, DayCount]


def _tallies(session: Session, window: Window) -> Tallies:
    """Outcomes per queue and per task, and ends per day: one pass over the covering index."""
    day = _day(session).label("day")
    group = (col(Job.queue), col(Job.task), col(Job.status), day)
    query = (
        sa.select(
            *group,
            sa.func.count(),
            sa.func.sum(col(Job.attempt) - 1),
            sa.func.sum(sa.case((col(Job.attempt) > 1, 1), else_=0)),
        )
        .where(*window.where())
        .group_by(*group)
    )
    tallies = Tallies(queues={}, tasks={}, days={})
    current, last = window.start.date(), (window.end - timedelta(microseconds=1)).date()
    while current <= last:
        tallies.days[current.isoformat()] = DayCount(day=current.isoformat())
        current += timedelta(days=1)
    for queue, task, status, day_key, n, retries, retried in session.execute(query).all():
        n, retries, retried = int(n), int(retries or 0), int(retried or 0)
        tallies.queues.setdefault(queue, Outcomes()).add(status, n, retries, retried)
        tallies.tasks.setdefault(task, Outcomes()).add(status, n, retries, retried)
        entry = tallies.days.setdefault(day_key, DayCount(day=day_key))
        if status in ("finished", "failed", "canceled"):
            setattr(entry, status, getattr(entry, status) + n)
    return tallies


def _top_errors(session: Session, window: Window) -> list[ErrorSignature]:
    n = sa.func.count().label("n")
    query = (
        sa.select(
            col(Job.error_signature),
            col(Job.error_type),
            n,
            sa.func.max(col(Job.ended_at)),
            sa.func.max(col(Job.job_id)),
        )
        .where(
            *window.where(), col(Job.status) == JobStatus.FAILED.value, col(Job.error_signature).isnot(None)
        )
        .group_by(col(Job.error_signature), col(Job.error_type))
        .order_by(n.desc(), col(Job.error_signature))
        .limit(TOP_ERRORS)
    )
    rows = session.execute(query).all()
    ids = [row[4] for row in rows]
    found = session.execute(sa.select(col(Job.job_id), col(Job.error_detail)).where(col(Job.job_id).in_(ids)))
    details: dict[str, str | None] = {job_id: detail for job_id, detail in found.all()}
    return [
        ErrorSignature(
            signature=signature,
            error_type=error_type,
            count=count,
            last_seen=last_seen,
            example_job_id=job_id,
            example_detail=redact_text(details.get(job_id) or "")[:500],
        )
        for signature, error_type, count, last_seen, job_id in rows
    ]


def summary(session: Session, window: Window) -> AnalyticsSummary:
    """Every figure of the analytics summary for ``window`` (three statements)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.text("SET LOCAL work_mem = '64MB'"))  # the percentile sorts stay in memory
    tallies = _tallies(session, window)
    decided = col(Job.status).in_([JobStatus.FINISHED.value, JobStatus.FAILED.value])
    stats = percentiles(
        session,
        where=window.where(),
        measures=[Measure("run_ms", col(Job.run_ms), decided), Measure("wait_ms", col(Job.wait_ms))],
        groups={"queue": col(Job.queue), "task": col(Job.task)},
        skip=frozenset({("wait_ms", "task")}),
    )

    def pct(measure: str, group: str, key: str) -> Percentiles:
        return stats.get((measure, group, key), Percentiles())

    totals = GroupSummary()
    for outcome in tallies.queues.values():
        for name in ("ended", "finished", "failed", "canceled", "retries", "retried_jobs"):
            setattr(totals, name, getattr(totals, name) + getattr(outcome, name))
    totals.close()
    totals.run_ms, totals.wait_ms = pct("run_ms", ALL, ALL), pct("wait_ms", ALL, ALL)
    queues = [
        QueueSummary(
            queue=name,
            **o.close().model_dump(),
            run_ms=pct("run_ms", "queue", name),
            wait_ms=pct("wait_ms", "queue", name),
        )
        for name, o in sorted(tallies.queues.items())
    ]
    tasks = [
        TaskSummary(task=name, **o.close().model_dump(), run_ms=pct("run_ms", "task", name))
        for name, o in sorted(tallies.tasks.items())
    ]
    return AnalyticsSummary(
        from_=window.start,
        to=window.end,
        tenant=window.tenant,
        queue=window.queue,
        task=window.task,
        definitions=DEFINITIONS,
        totals=totals,
        throughput=[tallies.days[k] for k in sorted(tallies.days)],
        queues=queues,
        tasks=tasks,
        top_errors=_top_errors(session, window),
    )

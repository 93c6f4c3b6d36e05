"""Analytics over the jobs that ended in a window: the same numbers from SQLite and PostgreSQL.

Definitions (also in the response's `definitions`):

- The population is every job whose `ended_at` (finished, failed or canceled)
  lies in [from, to), narrowed by tenant, queue and task.
- success_rate = finished / (finished + failed); canceled jobs are left out.
- retry_rate = retries / ended jobs (retries = attempts - 1: seed 003's "average
  retries per job"); retried_jobs counts the jobs that needed more than one.
- run_ms (ended - started) over finished and failed jobs; wait_ms (started -
  enqueued, of the last attempt) over ended jobs that started.
- Percentiles are nearest-rank: p is the smallest value with at least p% of
  the values at or below it, i.e. the value at rank ceil(p * n / 100).
  PostgreSQL computes it with `percentile_disc` (which is exactly that);
  SQLite with ROW_NUMBER over the sorted values, picking rank
  (p * n + 99) / 100 in integer arithmetic. Tests hold both to a hand count.
- Throughput is per UTC day of `ended_at`, every day of the window listed.
- Error signatures are computed when a failure is written (jobs/error_signature.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.dialects import postgresql
from sqlmodel import Session, col

from jobs.models import Job
from jobs.redaction import redact_text
from jobs.status import JobStatus

PERCENTILES = (50, 95, 99)
TOP_ERRORS = 10


class Percentiles(BaseModel):
    count: int = 0
    p50: int | None = None
    p95: int | None = None
    p99: int | None = None
    avg: float | None = None
    max: int | None = None


class Outcomes(BaseModel):
    ended: int = 0
    finished: int = 0
    failed: int = 0
    canceled: int = 0
    success_rate: float | None = None
    retries: int = 0
    retried_jobs: int = 0
    retry_rate: float | None = None

    def add(self, status: str, n: int, retries: int, retried: int) -> None:
        self.ended += n
        if status in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED):
            setattr(self, status, getattr(self, status) + n)
        self.retries += retries
        self.retried_jobs += retried

    def close(self) -> Outcomes:
        decided = self.finished + self.failed
        self.success_rate = round(self.finished / decided, 6) if decided else None
        self.retry_rate = round(self.retries / self.ended, 6) if self.ended else None
        return self


class GroupSummary(Outcomes):
    run_ms: Percentiles = Field(default_factory=Percentiles)
    wait_ms: Percentiles = Field(default_factory=Percentiles)


class QueueSummary(GroupSummary):
    queue: str


class TaskSummary(GroupSummary):
    task: str


class DayCount(BaseModel):
    day: str
    finished: int = 0
    failed: int = 0
    canceled: int = 0


class ErrorSignature(BaseModel):
    signature: str
    error_type: str
    count: int
    last_seen: datetime
    example_job_id: str
    example_detail: str


class AnalyticsSummary(BaseModel):
    from_: datetime = Field(alias="from")
    to: datetime
    tenant: str | None
    queue: str | None
    task: str | None
    definitions: dict[str, str]
    totals: GroupSummary
    throughput: list[DayCount]
    queues: list[QueueSummary]
    tasks: list[TaskSummary]
    top_errors: list[ErrorSignature]

    model_config = {"populate_by_name": True}


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


def _percentiles(session: Session, window: Window, value: Any, group: Any | None, extra: list[Any]) -> dict:
    """{group key: Percentiles} of ``value`` (rows where it is not null), nearest-rank."""
    key = group if group is not None else sa.literal("*")
    where = [*window.where(), value.isnot(None), *extra]
    if session.get_bind().dialect.name == "postgresql":
        fractions = postgresql.array([sa.literal(p / 100, sa.Float) for p in PERCENTILES])
        picked = sa.func.percentile_disc(fractions).within_group(value)
        query = sa.select(
            key.label("k"),
            sa.func.count(),
            sa.type_coerce(picked, postgresql.ARRAY(sa.Integer)),
            sa.func.sum(value),
            sa.func.max(value),
        ).where(*where)
        if group is not None:
            query = query.group_by(group)
        return {
            k: Percentiles(count=n, p50=ps[0], p95=ps[1], p99=ps[2], avg=_avg(total, n), max=top)
            for k, n, ps, total, top in session.execute(query).all()
            if n
        }
    partition = [group] if group is not None else []
    ranked = (
        sa.select(
            key.label("k"),
            value.label("v"),
            sa.func.row_number().over(partition_by=partition, order_by=value).label("rn"),
            sa.func.count().over(partition_by=partition).label("n"),
        )
        .where(*where)
        .subquery()
    )
    picks = [
        sa.func.min(sa.case((ranked.c.rn >= (p * ranked.c.n + 99) // 100, ranked.c.v))) for p in PERCENTILES
    ]
    query = sa.select(
        ranked.c.k, sa.func.count(), *picks, sa.func.sum(ranked.c.v), sa.func.max(ranked.c.v)
    ).group_by(ranked.c.k)
    return {
        k: Percentiles(count=n, p50=p50, p95=p95, p99=p99, avg=_avg(total, n), max=top)
        for k, n, p50, p95, p99, total, top in session.execute(query).all()
    }


def _avg(total: Any, n: int) -> float | None:
    """The mean from an exact integer sum, so both databases round it the same way."""
    return round(int(total) / n, 3) if n else None


def _outcomes(session: Session, window: Window, group: Any) -> dict[Any, Outcomes]:
    retries = sa.func.sum(col(Job.attempt) - 1)
    retried = sa.func.sum(sa.case((col(Job.attempt) > 1, 1), else_=0))
    query = (
        sa.select(group, col(Job.status), sa.func.count(), retries, retried)
        .where(*window.where())
        .group_by(group, Job.status)
    )
    out: dict[Any, Outcomes] = {}
    for key, status, n, r, rj in session.execute(query).all():
        out.setdefault(key, Outcomes()).add(status, int(n), int(r or 0), int(rj or 0))
    return out


def _day(session: Session) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return sa.func.to_char(sa.func.timezone("UTC", col(Job.ended_at)), "YYYY-MM-DD")
    return sa.func.substr(col(Job.ended_at), 1, 10)  # SQLite stores 'YYYY-MM-DD HH:MM:SS.ffffff' UTC


def _throughput(session: Session, window: Window) -> list[DayCount]:
    day = _day(session).label("day")
    status = col(Job.status)
    query = sa.select(day, status, sa.func.count()).where(*window.where()).group_by(day, status)
    days: dict[str, DayCount] = {}
    current, last = window.start.date(), (window.end - timedelta(microseconds=1)).date()
    while current <= last:
        days[current.isoformat()] = DayCount(day=current.isoformat())
        current += timedelta(days=1)
    for key, status, n in session.execute(query).all():
        entry = days.setdefault(key, DayCount(day=key))
        if status in ("finished", "failed", "canceled"):
            setattr(entry, status, getattr(entry, status) + int(n))
    return [days[k] for k in sorted(days)]


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
    """Every figure of the analytics summary for ``window``."""
    decided = [col(Job.status).in_([JobStatus.FINISHED.value, JobStatus.FAILED.value])]
    by_queue = _outcomes(session, window, Job.queue)
    by_task = _outcomes(session, window, Job.task)
    run_total = _percentiles(session, window, col(Job.run_ms), None, decided)
    wait_total = _percentiles(session, window, col(Job.wait_ms), None, [])
    run_queue = _percentiles(session, window, col(Job.run_ms), Job.queue, decided)
    wait_queue = _percentiles(session, window, col(Job.wait_ms), Job.queue, [])
    run_task = _percentiles(session, window, col(Job.run_ms), Job.task, decided)
    wait_task = _percentiles(session, window, col(Job.wait_ms), Job.task, [])

    totals = GroupSummary()
    for outcome in by_queue.values():
        for field in ("ended", "finished", "failed", "canceled", "retries", "retried_jobs"):
            setattr(totals, field, getattr(totals, field) + getattr(outcome, field))
    totals.close()
    totals.run_ms = run_total.get("*", Percentiles())
    totals.wait_ms = wait_total.get("*", Percentiles())
    queues = [
        QueueSummary(
            queue=name,
            **o.close().model_dump(),
            run_ms=run_queue.get(name, Percentiles()),
            wait_ms=wait_queue.get(name, Percentiles()),
        )
        for name, o in sorted(by_queue.items())
    ]
    tasks = [
        TaskSummary(
            task=name,
            **o.close().model_dump(),
            run_ms=run_task.get(name, Percentiles()),
            wait_ms=wait_task.get(name, Percentiles()),
        )
        for name, o in sorted(by_task.items())
    ]
    return AnalyticsSummary(
        from_=window.start,
        to=window.end,
        tenant=window.tenant,
        queue=window.queue,
        task=window.task,
        definitions=DEFINITIONS,
        totals=totals,
        throughput=_throughput(session, window),
        queues=queues,
        tasks=tasks,
        top_errors=_top_errors(session, window),
    )

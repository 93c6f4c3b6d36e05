"""Queue statistics (seed 002): counts per queue and in total, workers, oldest wait, and a health verdict.

Where each number comes from, and why:

- Job counts come from SQL. It holds every job (Redis forgets finished ones
  after their TTL and RQ's registries after `result_ttl`), it knows each job's
  tenant (members see only theirs), and its indexes answer these counts fast.
  Live statuses are counted whole; ended jobs within a window (default
  `CONVEYOR_STATS_WINDOW`, 24 h), which is what "completed" means on a
  dashboard and keeps the query bounded however long the history is.
- Workers, and RQ's own queue depth, come from Redis: only RQ knows which
  workers are registered and what each runs. RQ's depth is tenant-blind, so
  only admins see it; SQL's `pending` and RQ's depth disagreeing means jobs
  waiting in SQL that Redis lost (the reconciler's business).

Buckets are disjoint, so `total` is their sum: pending (queued or deferred,
first attempt), scheduled (first attempt), retrying (waiting for a later
attempt), running (started), paused, then completed, failed and cancelled
(ended within the window).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from redis import Redis
from rq import Worker
from sqlmodel import Session, col

from jobs.clock import utcnow
from jobs.history import set_aside
from jobs.history.models import Job
from jobs.queues.queue_control import queue_states
from jobs.queues.queueing import SERIALIZER, get_queue
from jobs.reporting.reports import (
    Counts,
    Health,
    HealthReason,
    QueueStats,
    QueueStatsReport,
    RQDepth,
    WorkerInfo,
    WorkerSummary,
)
from jobs.settings import get_settings
from jobs.state.live import JobHead, read_heads
from jobs.status import LIVE, WAITING, JobStatus


def bucket_of(status: JobStatus, attempt: int) -> str:
    if status in WAITING and attempt > 1:
        return "retrying"
    return {
        JobStatus.QUEUED: "pending",
        JobStatus.DEFERRED: "pending",
        JobStatus.SCHEDULED: "scheduled",
        JobStatus.STARTED: "running",
        JobStatus.PAUSED: "paused",
        JobStatus.FINISHED: "completed",
        JobStatus.FAILED: "failed",
        JobStatus.CANCELED: "cancelled",
    }[status]


def _count_rows(session: Session, *, tenant: str | None, since: datetime) -> list[tuple[Any, ...]]:
    """(queue, status, retried 0/1, n, oldest enqueued_at) for live jobs and jobs ended since ``since``."""
    retried = sa.case((col(Job.attempt) > 1, 1), else_=0).label("retried")
    scope = [col(Job.tenant) == tenant] if tenant is not None else []
    live = (
        sa.select(
            col(Job.queue), col(Job.status), retried, sa.func.count(), sa.func.min(col(Job.enqueued_at))
        )
        .where(col(Job.status).in_([s.value for s in LIVE]), *scope)
        .group_by(Job.queue, Job.status, retried)
    )
    ended = (
        sa.select(col(Job.queue), col(Job.status), sa.literal(0), sa.func.count(), sa.null())
        .where(col(Job.ended_at) >= since, *scope)  # only ended jobs have ended_at
        .group_by(Job.queue, Job.status)
    )
    return [tuple(row) for row in session.execute(live).all()] + [
        tuple(row) for row in session.execute(ended).all()
    ]


def _workers(client: Redis, tenant: str | None, now: datetime) -> list[WorkerInfo]:
    workers = Worker.all(connection=client, serializer=SERIALIZER)
    running = [w.get_current_job_id() for w in workers]
    ids = [running_id for running_id in running if running_id]
    heads = dict(zip(ids, read_heads(client, ids, ("tenant", "task")), strict=True))
    items = []
    for worker, job_id in zip(workers, running, strict=True):
        head = heads.get(job_id or "", JobHead())
        visible = job_id is not None and (tenant is None or (head.tenant or "") == tenant)
        beat = worker.last_heartbeat
        items.append(
            WorkerInfo(
                name=worker.name,
                state=str(getattr(worker.get_state(), "value", worker.get_state())),
                queues=worker.queue_names(),
                current_job_id=job_id if visible else None,
                current_task=head.task if visible and head.task else None,
                last_heartbeat=beat,
                heartbeat_age_s=round((now - beat).total_seconds(), 3) if beat else None,
                started_at=worker.birth_date,
                successful_jobs=worker.successful_job_count,
                failed_jobs=worker.failed_job_count,
            )
        )
    return sorted(items, key=lambda w: w.name)


def _rq_depth(client: Redis, name: str) -> RQDepth:
    """RQ's counts, read without RQ's `count` properties (which clean registries up as a side effect)."""
    queue = get_queue(name, client)
    with client.pipeline(transaction=False) as pipe:
        pipe.llen(queue.key)
        for registry in (
            queue.started_job_registry,
            queue.scheduled_job_registry,
            queue.deferred_job_registry,
            queue.failed_job_registry,
        ):
            pipe.zcard(registry.key)
        queued, started, scheduled, deferred, failed = pipe.execute()
    return RQDepth(queued=queued, started=started, scheduled=scheduled, deferred=deferred, failed=failed)


def _set_aside_reason(client: Redis, tenant: str | None) -> HealthReason | None:
    """History is incomplete while journal entries are held aside: say so, and why.

    The database's own message is shown to operators (tenant None) only: it may quote
    a value of another tenant's job; a tenant's caller gets its error type.
    """
    count = set_aside.held(client)
    if not count:
        return None
    last = set_aside.latest(client)
    why = last.reason if last else ""
    if tenant is not None:
        why = why.split(":", 1)[0]
    return HealthReason(
        code="journal_set_aside",
        severity="degraded",
        message=f"{count} journal entries could not be written to SQL and are set aside, so those jobs' "
        f"history is incomplete (latest: {why}); an admin lists them at GET /api/v1/journal/set-aside.",
    )


def _health(
    queues: list[QueueStats], totals: Counts, workers: WorkerSummary, extra: list[HealthReason] | None = None
) -> Health:
    settings = get_settings()
    reasons: list[HealthReason] = list(extra or [])
    if workers.active == 0:
        reasons.append(
            HealthReason(code="no_workers", severity="unhealthy", message="No live worker: nothing will run.")
        )
    for q in queues:
        waiting = q.counts.pending + q.counts.retrying
        if workers.active and q.workers == 0 and waiting:
            reasons.append(
                HealthReason(
                    code="queue_unserved",
                    severity="unhealthy",
                    queue=q.name,
                    message=f"No live worker listens on queue {q.name!r}, where {waiting} jobs wait.",
                )
            )
        if waiting > settings.health_max_backlog:
            reasons.append(
                HealthReason(
                    code="backlog",
                    severity="degraded",
                    queue=q.name,
                    message=f"{waiting} jobs wait on queue {q.name!r} "
                    f"(threshold {settings.health_max_backlog}, CONVEYOR_HEALTH_MAX_BACKLOG).",
                )
            )
        age = q.oldest_waiting_age_s
        if age is not None and age > settings.health_max_wait:
            reasons.append(
                HealthReason(
                    code="slow_start",
                    severity="degraded",
                    queue=q.name,
                    message=f"The oldest job waiting on queue {q.name!r} has waited {age:.0f} s "
                    f"(threshold {settings.health_max_wait:.0f} s, CONVEYOR_HEALTH_MAX_WAIT).",
                )
            )
    ended = totals.completed + totals.failed
    if ended >= settings.health_min_ended and totals.failed / ended > settings.health_max_failure_rate:
        reasons.append(
            HealthReason(
                code="failure_rate",
                severity="degraded",
                message=f"{totals.failed} of {ended} jobs failed ({totals.failed / ended:.0%}; threshold "
                f"{settings.health_max_failure_rate:.0%}, CONVEYOR_HEALTH_MAX_FAILURE_RATE).",
            )
        )
    status: Literal["healthy", "degraded", "unhealthy"] = "healthy"
    if any(r.severity == "unhealthy" for r in reasons):
        status = "unhealthy"
    elif reasons:
        status = "degraded"
    return Health(status=status, reasons=reasons)


def _steered_reasons(queues: list[QueueStats]) -> list[HealthReason]:
    """A paused or draining queue is said so: its backlog grows on purpose (jobs.queues.queue_control)."""
    reasons = []
    for queue in queues:
        if queue.paused or queue.draining:
            what = "paused: no new job starts" if queue.paused else "draining: submits are refused"
            if queue.paused and queue.draining:
                what = "paused and draining: nothing new starts and submits are refused"
            reasons.append(
                HealthReason(
                    code="queue_paused" if queue.paused else "queue_draining",
                    severity="degraded",
                    message=f"Queue {queue.name!r} is {what} until an operator resumes it.",
                    queue=queue.name,
                )
            )
    return reasons


def queue_stats(
    session: Session,
    client: Redis,
    *,
    tenant: str | None,
    window: timedelta | None = None,
    include_rq: bool = False,
) -> QueueStatsReport:
    """The stats report for one tenant (None: all); ``include_rq`` adds RQ's tenant-blind depth."""
    settings = get_settings()
    now = utcnow()
    window = window or timedelta(seconds=settings.stats_window)
    rows = _count_rows(session, tenant=tenant, since=now - window)

    workers = _workers(client, tenant, now)
    paused, draining = queue_states(client)
    names = list(dict.fromkeys([*settings.queues, *sorted({str(r[0]) for r in rows})]))
    per_queue = {name: Counts() for name in names}
    by_status = {name: {s.value: 0 for s in JobStatus} for name in names}
    oldest: dict[str, datetime] = {}
    totals = Counts()
    for queue_name, status, retried, n, oldest_enqueued in rows:
        state = JobStatus(status)
        bucket = bucket_of(state, 2 if retried else 1)
        per_queue[queue_name].add(bucket, n)
        totals.add(bucket, n)
        by_status[queue_name][state.value] += n
        if state == JobStatus.QUEUED and oldest_enqueued is not None:
            oldest[queue_name] = min(oldest.get(queue_name, oldest_enqueued), oldest_enqueued)

    def age(when: datetime | None) -> float | None:
        return round(max(0.0, (now - when).total_seconds()), 3) if when else None

    queues = [
        QueueStats(
            name=name,
            counts=per_queue[name],
            by_status=by_status[name],
            oldest_waiting_age_s=age(oldest.get(name)),
            workers=sum(1 for w in workers if name in w.queues),
            rq=_rq_depth(client, name) if include_rq else None,
            paused=name in paused,
            draining=name in draining,
        )
        for name in names
    ]
    busy = sum(1 for w in workers if w.state == "busy")
    summary = WorkerSummary(active=len(workers), busy=busy, idle=len(workers) - busy, items=workers)
    all_status = {s.value: sum(by_status[q][s.value] for q in names) for s in JobStatus}
    return QueueStatsReport(
        generated_at=now,
        tenant=tenant,
        window_s=int(window.total_seconds()),
        totals=totals,
        by_status=all_status,
        oldest_waiting_age_s=age(min(oldest.values())) if oldest else None,
        queues=queues,
        workers=summary,
        health=_health(
            queues,
            totals,
            summary,
            [r for r in [_set_aside_reason(client, tenant)] if r] + _steered_reasons(queues),
        ),
    )

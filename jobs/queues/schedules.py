"""Recurring jobs: `@cron` declares, next to a task, when it runs by itself.

    @cron("0 3 * * *", payload={"months": 1})
    @task(queue="reports")
    def monthly_report(payload: ReportPayload, progress: Progress) -> dict: ...

Timing is RQ's: each declaration becomes an `rq.cron.CronJob` (a cron
expression through croniter, or a fixed ``interval`` in seconds), driven by an
`rq.cron.CronScheduler` in every worker's recorder process, where RQ's cron
registries show it. What a firing creates is not a bare RQ job but a Conveyor
job, submitted like any other (SQL row, live state, history) under the tenant
``CONVEYOR_CRON_TENANT``. Every worker runs the schedules; each firing carries
an Idempotency-Key made of the schedule's name and its time slot, so however
many workers fire a slot, it creates one job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from croniter import croniter
from redis import Redis
from rq import cron_job_registry
from rq.cron import CronJob, CronScheduler, get_cron_job_history_key

from jobs.actions.submit import submit_job
from jobs.clock import isoformat, utcnow
from jobs.history.db import open_session
from jobs.queues.rq_private import add_cron_jobs
from jobs.settings import get_settings
from jobs.tasks import load_tasks, task_of

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Schedule:
    """One recurring job: which task, when, with what payload, for which tenant."""

    name: str
    task: str
    cron: str | None = None
    interval: int | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    queue: str | None = None
    tenant: str | None = None


_schedules: dict[str, Schedule] = {}


def cron(
    expression: str | None = None,
    *,
    interval: int | None = None,
    payload: dict[str, Any] | None = None,
    name: str | None = None,
    queue: str | None = None,
    tenant: str | None = None,
) -> Callable[[F], F]:
    """Run the task below on a cron ``expression`` (UTC) or every ``interval`` seconds.

    Stack it on `@task`; several `@cron` lines may share a task. The payload is
    validated against the task's model at import time.
    """
    if (expression is None) == (interval is None):
        raise ValueError("@cron takes a cron expression or interval=seconds (one of them)")
    if expression is not None and not croniter.is_valid(expression):
        raise ValueError(f"@cron: {expression!r} is not a valid cron expression")
    if interval is not None and interval < 1:
        raise ValueError("@cron: interval must be at least 1 second")

    def register(fn: F) -> F:
        spec = task_of(fn)
        spec.validate(payload or {})
        label = expression if expression is not None else f"every {interval}s"
        schedule = Schedule(
            name=name or f"{spec.name} {label}",
            task=spec.name,
            cron=expression,
            interval=interval,
            payload=dict(payload or {}),
            queue=queue,
            tenant=tenant,
        )
        existing = _schedules.get(schedule.name)
        if existing is not None and existing != schedule:
            raise ValueError(f"@cron: a different schedule is already named {schedule.name!r}")
        _schedules[schedule.name] = schedule
        return fn

    return register


def schedules() -> list[Schedule]:
    """Every declared schedule (importing the task modules first)."""
    load_tasks()
    return list(_schedules.values())


class Firing(CronJob):
    """RQ's CronJob for one schedule, whose firing submits a Conveyor job for its time slot."""

    def __init__(self, schedule: Schedule) -> None:
        super().__init__(
            queue_name=schedule.queue or "",
            func_name=f"conveyor:{schedule.task}",
            kwargs={"payload": schedule.payload},
            interval=schedule.interval,
            cron=schedule.cron,
            name=schedule.name,
        )
        self.schedule = schedule
        if schedule.interval:
            self.next_enqueue_time = self._slot(utcnow())  # due now: the slot under way

    def _slot(self, moment: datetime) -> datetime:
        """The start of the interval slot ``moment`` falls in (slots are aligned to the epoch)."""
        step = self.schedule.interval or 1
        return datetime.fromtimestamp(int(moment.timestamp()) // step * step, UTC)

    def should_run(self) -> bool:
        return self.next_enqueue_time is not None and utcnow() >= self.next_enqueue_time

    def get_next_enqueue_time(self) -> datetime:
        if self.schedule.interval:
            return self._slot(self.latest_enqueue_time or utcnow()) + timedelta(
                seconds=self.schedule.interval
            )
        return super().get_next_enqueue_time()

    def enqueue(self, connection: Redis) -> Any:
        slot = self.next_enqueue_time or utcnow()
        with open_session() as session:
            submission = submit_job(
                session=session,
                client=connection,
                tenant=self.schedule.tenant or get_settings().cron_tenant,
                owner="cron",
                task=self.schedule.task,
                payload=self.schedule.payload,
                queue=self.schedule.queue,
                idempotency_key=f"cron:{self.schedule.name}:{isoformat(slot)}",
            )
        with connection.pipeline() as pipe:
            pipe.zadd(get_cron_job_history_key(self.name), {submission.job_id: slot.timestamp()})
            cron_job_registry.add(self.name, pipe, enqueue_timestamp=slot.timestamp())
            pipe.execute()
        if submission.created:
            log.info("cron: %s fired for %s: job %s", self.name, isoformat(slot), submission.job_id)
        return submission


class CronRunner(CronScheduler):
    """RQ's cron scheduler, stepped by the maintenance loop instead of its own blocking loop."""

    HEARTBEAT_EVERY = 10.0

    def __init__(self, connection: Redis, *, name: str, declared: list[Schedule]) -> None:
        super().__init__(connection=connection, name=name)
        add_cron_jobs(self, (Firing(s) for s in declared))
        self._last_beat = 0.0
        self.register_birth()

    def tick(self) -> float:
        """Fire what is due; returns the seconds until the next firing."""
        if self.enqueue_jobs():
            self.save()
        if time.monotonic() - self._last_beat >= self.HEARTBEAT_EVERY:
            self.heartbeat()
            self._last_beat = time.monotonic()
        return self.calculate_sleep_interval()

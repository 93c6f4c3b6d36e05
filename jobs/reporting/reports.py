"""The shapes Conveyor reports in: the analytics summary and the queue stats.

Pydantic models only, apart from the queries that fill them (jobs/reporting/analytics.py,
jobs/reporting/queue_stats.py, jobs/reporting/percentiles.py), so that declaring the API's routes
imports no database or Redis client: the Lambda handler's cold start stays light.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from jobs.lazy_model import LazyModel
from jobs.status import JobStatus


class Percentiles(LazyModel):
    count: int = 0
    p50: int | None = None
    p95: int | None = None
    p99: int | None = None
    avg: float | None = None
    max: int | None = None


class Outcomes(LazyModel):
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


class TaskSummary(Outcomes):
    task: str
    run_ms: Percentiles = Field(default_factory=Percentiles)


class DayCount(LazyModel):
    day: str
    finished: int = 0
    failed: int = 0
    canceled: int = 0


class ErrorSignature(LazyModel):
    signature: str
    error_type: str
    count: int
    last_seen: datetime
    example_job_id: str
    example_detail: str


class AnalyticsSummary(LazyModel):
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


BUCKETS = ("pending", "scheduled", "retrying", "running", "paused", "completed", "failed", "cancelled")


class Counts(LazyModel):
    pending: int = 0
    scheduled: int = 0
    retrying: int = 0
    running: int = 0
    paused: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    total: int = 0

    def add(self, bucket: str, n: int) -> None:
        setattr(self, bucket, getattr(self, bucket) + n)
        self.total += n


class RQDepth(LazyModel):
    """What RQ itself holds for a queue (every tenant): admins only."""

    queued: int
    started: int
    scheduled: int
    deferred: int
    failed: int


class QueueStats(LazyModel):
    name: str
    counts: Counts
    by_status: dict[str, int] = Field(description="Canonical statuses (ended ones within the window).")
    oldest_waiting_age_s: float | None = Field(description="Age of the oldest job queued and ready to run.")
    workers: int = Field(description="Live workers listening on this queue.")
    rq: RQDepth | None = None
    paused: bool = Field(default=False, description="No new job starts (running ones go on).")
    draining: bool = Field(default=False, description="Submits to it are refused (409).")


class WorkerInfo(LazyModel):
    name: str
    state: str
    queues: list[str]
    current_job_id: str | None = Field(description="Shown only for jobs of a tenant you may see.")
    current_task: str | None = None
    last_heartbeat: datetime | None
    heartbeat_age_s: float | None
    started_at: datetime | None
    successful_jobs: int
    failed_jobs: int


class HealthReason(LazyModel):
    code: str
    severity: Literal["degraded", "unhealthy"]
    message: str
    queue: str | None = None


class Health(LazyModel):
    status: Literal["healthy", "degraded", "unhealthy"]
    reasons: list[HealthReason]


class WorkerSummary(LazyModel):
    active: int
    busy: int
    idle: int
    items: list[WorkerInfo]


class QueueStatsReport(LazyModel):
    generated_at: datetime
    tenant: str | None = Field(description="The tenant counted; null means every tenant.")
    window_s: int = Field(description="Ended jobs are counted over this many seconds back.")
    totals: Counts
    by_status: dict[str, int]
    oldest_waiting_age_s: float | None
    queues: list[QueueStats]
    workers: WorkerSummary
    health: Health

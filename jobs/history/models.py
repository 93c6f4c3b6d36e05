"""SQL tables: jobs, their append-only events and logs, batches, large results, and API keys.

Alembic owns the schema (`migrations/`); a test checks that the migrations
produce exactly these models.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from jobs.status import JobStatus


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores naive text)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; Conveyor stores UTC-aware timestamps only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = sa.JSON().with_variant(JSONB(), "postgresql")
BigIntPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

STATUS_CHECK = "status IN ({})".format(", ".join(f"'{s.value}'" for s in JobStatus))


ANALYTICS_COLUMNS = ("queue", "task", "status", "attempt", "run_ms", "wait_ms")


def _ts(*, index: bool = False, nullable: bool = True) -> Any:
    return Field(default=None, sa_type=UTCDateTime, index=index, nullable=nullable)


class Job(SQLModel, table=True):
    """One row per job: its request, its latest state and its lifecycle timestamps."""

    __tablename__ = "jobs"
    __table_args__ = (
        sa.CheckConstraint(STATUS_CHECK, name="ck_jobs_status"),
        sa.UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        sa.Index("ix_jobs_tenant_created", "tenant", "created_at"),
        sa.Index("ix_jobs_tenant_status_created", "tenant", "status", "created_at"),
        sa.Index("ix_jobs_status_created", "status", "created_at"),
        sa.Index("ix_jobs_status_updated", "status", "updated_at"),  # the reconciler's recent sweep
        sa.Index("ix_jobs_created", "created_at", "job_id"),
        sa.Index("ix_jobs_owner_created", "owner", "created_at"),
        # Analytics, stats and retention read ended jobs by time from these alone (index-only scans).
        sa.Index("ix_jobs_ended", "ended_at", *ANALYTICS_COLUMNS),
        sa.Index("ix_jobs_tenant_ended", "tenant", "ended_at", *ANALYTICS_COLUMNS),
        sa.Index("ix_jobs_parent_id", "parent_id"),
        sa.Index("ix_jobs_trace_id", "trace_id"),
        sa.Index("ix_jobs_batch_created", "batch_id", "created_at"),
    )

    job_id: str = Field(primary_key=True, max_length=36)
    tenant: str = Field(max_length=64)
    owner: str | None = Field(default=None, max_length=64)
    task: str = Field(max_length=100)
    queue: str = Field(max_length=64)
    status: str = Field(max_length=16)
    params: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    result: Any | None = Field(default=None, sa_type=JSONType)
    result_ref: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    error_type: str | None = Field(default=None, max_length=200)
    error_detail: str | None = Field(default=None, sa_type=sa.Text)
    error_signature: str | None = Field(default=None, max_length=255)
    tags: list[str] | None = Field(default=None, sa_type=JSONType)
    message: str | None = Field(default=None, sa_type=sa.Text)
    progress: float | None = None
    attempt: int = 1
    max_retries: int = 0
    timeout_s: int | None = None
    seq: int = 1
    parent_id: str | None = Field(default=None, max_length=36, foreign_key="jobs.job_id", ondelete="SET NULL")
    depends_on: list[str] | None = Field(default=None, sa_type=JSONType)
    trace_id: str | None = Field(default=None, max_length=64)
    idempotency_key: str | None = Field(default=None, max_length=255)
    request_hash: str | None = Field(default=None, max_length=64)
    worker: str | None = Field(default=None, max_length=200)
    canceled_by: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    enqueued_at: datetime | None = _ts()
    scheduled_for: datetime | None = _ts()
    started_at: datetime | None = _ts()
    finished_at: datetime | None = _ts()
    failed_at: datetime | None = _ts()
    canceled_at: datetime | None = _ts()
    ended_at: datetime | None = _ts()
    updated_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    wait_ms: int | None = None
    run_ms: int | None = None
    # No foreign key: retention deletes a batch's jobs before the batch, and a job's insert must
    # not pay for a lookup (a batch writes thousands of rows in one statement).
    batch_id: str | None = Field(default=None, max_length=36)
    # A job that waits for a whole batch (its id is depends_on[0]): "finished" runs it once every
    # job of the batch finished (else DependencyFailed), "ended" once every job ended at all.
    after_batch: str | None = Field(default=None, max_length=16)


class Batch(SQLModel, table=True):
    """Jobs submitted together in one request; its state is read from its jobs (jobs.batch_id)."""

    __tablename__ = "batches"
    __table_args__ = (
        sa.UniqueConstraint("tenant", "idempotency_key", name="uq_batches_tenant_idempotency_key"),
        sa.Index("ix_batches_tenant_created", "tenant", "created_at"),
        sa.Index("ix_batches_created", "created_at", "batch_id"),
    )

    batch_id: str = Field(primary_key=True, max_length=36)
    tenant: str = Field(max_length=64)
    owner: str | None = Field(default=None, max_length=64)
    name: str | None = Field(default=None, max_length=200)
    tags: list[str] | None = Field(default=None, sa_type=JSONType)
    size: int
    idempotency_key: str | None = Field(default=None, max_length=255)
    request_hash: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(sa_type=UTCDateTime, nullable=False)


class JobEvent(SQLModel, table=True):
    """One lifecycle event of a job; `seq` is the job's version after the event."""

    __tablename__ = "job_events"
    __table_args__ = (sa.UniqueConstraint("job_id", "seq", name="uq_job_events_job_seq"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=BigIntPK)
    job_id: str = Field(max_length=36, foreign_key="jobs.job_id", ondelete="CASCADE")
    seq: int
    event: str = Field(max_length=32)
    status: str = Field(max_length=16)
    attempt: int = 1
    progress: float | None = None
    message: str | None = Field(default=None, sa_type=sa.Text)
    data: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    created_at: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)


class JobLogLine(SQLModel, table=True):
    """One line of a job's log (what its task logged), copied from Redis by the recorder process;
    ``seq`` is the line's place in the job's log, the API's cursor."""

    __tablename__ = "job_logs"

    job_id: str = Field(primary_key=True, max_length=36, foreign_key="jobs.job_id", ondelete="CASCADE")
    seq: int = Field(primary_key=True)
    attempt: int = 1
    level: str = Field(max_length=16)
    logger: str = Field(max_length=200)
    message: str = Field(sa_type=sa.Text)
    created_at: datetime = Field(sa_type=UTCDateTime, nullable=False)


class JobResult(SQLModel, table=True):
    """A result too large to keep inline: the job row and its snapshot carry ``result_ref`` instead.

    ``body`` is the result's JSON text exactly as the task produced it (after redaction).
    """

    __tablename__ = "job_results"

    job_id: str = Field(primary_key=True, max_length=36, foreign_key="jobs.job_id", ondelete="CASCADE")
    attempt: int
    size_bytes: int
    sha256: str = Field(max_length=64)
    body: str = Field(sa_type=sa.Text)
    created_at: datetime = Field(sa_type=UTCDateTime, nullable=False)


class ApiKey(SQLModel, table=True):
    """An API key: only its SHA-256 is stored; it belongs to a tenant and a role."""

    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=16)
    name: str = Field(max_length=100)
    tenant: str = Field(max_length=64, index=True)
    role: str = Field(max_length=16)
    key_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    last_used_at: datetime | None = _ts()
    revoked_at: datetime | None = _ts()


class TenantLimits(SQLModel, table=True):
    """A tenant's own limits (issue 13); a null column means the setting's default applies."""

    __tablename__ = "tenant_limits"

    tenant: str = Field(primary_key=True, max_length=64)
    submits_per_minute: int | None = None
    submit_burst: int | None = None
    key_submits_per_minute: int | None = None
    key_submit_burst: int | None = None
    max_waiting: int | None = None
    max_running: int | None = None
    max_timeout_seconds: int | None = None
    updated_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    updated_by: str | None = Field(default=None, max_length=64)


class Webhook(SQLModel, table=True):
    """An endpoint a tenant registered to be told about its jobs (issue 15, jobs/webhooks/).

    ``tenant`` None: every tenant's jobs (only operators register those). The secret signs
    deliveries, so it is kept as it is (it cannot be hashed); the API shows it once.
    """

    __tablename__ = "webhooks"

    id: str = Field(primary_key=True, max_length=40)
    tenant: str | None = Field(default=None, max_length=64, index=True)
    url: str = Field(max_length=2000)
    events: list[str] = Field(default_factory=list, sa_type=JSONType)
    progress_interval: float | None = None
    description: str = Field(default="", max_length=200)
    secret: str = Field(max_length=100)
    created_by: str = Field(max_length=64)
    created_at: datetime = Field(sa_type=UTCDateTime, nullable=False)


class WebhookDelivery(SQLModel, table=True):
    """One message for one endpoint: the outbox row the sender works from, and its outcome.

    ``id`` is the `webhook-id` header, the same on every attempt and re-send (receivers
    de-duplicate by it); ``body`` is the exact JSON that is signed and sent.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        sa.UniqueConstraint("webhook_id", "dedupe_key", name="uq_webhook_deliveries_dedupe"),
        sa.Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        sa.Index("ix_webhook_deliveries_webhook_created", "webhook_id", "created_at"),
        sa.Index("ix_webhook_deliveries_subject", "subject", "event"),
    )

    id: str = Field(primary_key=True, max_length=40)
    webhook_id: str = Field(max_length=40, foreign_key="webhooks.id", ondelete="CASCADE")
    event: str = Field(max_length=32)
    subject: str = Field(max_length=64)
    dedupe_key: str = Field(max_length=140)
    body: str = Field(sa_type=sa.Text)
    status: str = Field(max_length=16)
    attempts: int = 0
    created_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    next_attempt_at: datetime | None = _ts()
    give_up_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    last_attempt_at: datetime | None = _ts()
    delivered_at: datetime | None = _ts()
    last_status_code: int | None = None
    last_error: str | None = Field(default=None, sa_type=sa.Text)


class WebhookAttempt(SQLModel, table=True):
    """One try at sending a delivery: when, how long, and what came back (or why nothing did)."""

    __tablename__ = "webhook_attempts"

    id: int | None = Field(default=None, primary_key=True, sa_type=BigIntPK)
    delivery_id: str = Field(
        max_length=40, foreign_key="webhook_deliveries.id", ondelete="CASCADE", index=True
    )
    attempt: int
    started_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    duration_ms: int
    status_code: int | None = None
    error: str | None = Field(default=None, sa_type=sa.Text)
    response_excerpt: str | None = Field(default=None, sa_type=sa.Text)

"""A job's full history record (seed 003's shape): what the API's `/record` and the pages render.

The snapshot (jobs/snapshot.py) is the live view every channel shares; the
record adds what history needs: tenant, owner, params, tags, trace and parent
ids, retries, each end timestamp and the derived wait and run times.

:func:`job_record` is the one function that turns a row into something to
show: it redacts params, result, error and message with the *current*
`CONVEYOR_REDACT_KEYS`, so a key added to the list later also hides what was
stored before it. Pages (issue 6) should render records through it.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from jobs.access.redaction import redact, redact_text
from jobs.lazy_model import LazyModel
from jobs.snapshot import ErrorInfo, ResultRef
from jobs.status import JobStatus

if TYPE_CHECKING:
    from jobs.history.models import Job


class JobRecord(LazyModel):
    job_id: str
    tenant: str
    owner: str | None
    task: str
    queue: str
    status: JobStatus
    params: dict[str, Any]
    tags: list[str]
    result: Any = None
    result_ref: ResultRef | None = None
    error: ErrorInfo | None = None
    error_signature: str | None = None
    message: str | None = None
    progress: float | None = None
    attempt: int
    retries: int
    max_retries: int
    timeout_s: int | None = None
    parent_id: str | None = None
    trace_id: str | None = None
    worker: str | None = None
    canceled_by: str | None = None
    created_at: datetime
    enqueued_at: datetime | None = None
    scheduled_for: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    failed_at: datetime | None = None
    canceled_at: datetime | None = None
    ended_at: datetime | None = None
    updated_at: datetime
    wait_ms: int | None = None
    run_ms: int | None = None
    seq: int


def job_record(job: Job) -> JobRecord:
    """The row as a record, with every payload redacted for display."""
    error = None
    if job.error_type is not None:
        error = ErrorInfo(type=job.error_type, detail=redact_text(job.error_detail or ""))
    return JobRecord(
        job_id=job.job_id,
        tenant=job.tenant,
        owner=job.owner,
        task=job.task,
        queue=job.queue,
        status=JobStatus(job.status),
        params=redact(job.params or {}),
        tags=list(job.tags or []),
        result=redact(job.result),
        result_ref=ResultRef.model_validate(job.result_ref) if job.result_ref else None,
        error=error,
        error_signature=job.error_signature,
        message=redact_text(job.message) if job.message else job.message,
        progress=job.progress,
        attempt=job.attempt,
        retries=max(0, job.attempt - 1),
        max_retries=job.max_retries,
        timeout_s=job.timeout_s,
        parent_id=job.parent_id,
        trace_id=job.trace_id,
        worker=job.worker,
        canceled_by=job.canceled_by,
        created_at=job.created_at,
        enqueued_at=job.enqueued_at,
        scheduled_for=job.scheduled_for,
        started_at=job.started_at,
        finished_at=job.finished_at,
        failed_at=job.failed_at,
        canceled_at=job.canceled_at,
        ended_at=job.ended_at,
        updated_at=job.updated_at,
        wait_ms=job.wait_ms,
        run_ms=job.run_ms,
        seq=job.seq,
    )

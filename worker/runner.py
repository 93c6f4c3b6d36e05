"""The task runner: the one function RQ executes for every Conveyor job.

It records the attempt's start, runs the registered task with a `Progress`,
and records how it ended: finished with its result, failed with
{type, detail} (or, when RQ will retry, a new attempt), or canceled.
It runs in RQ's work-horse and only touches Redis; the recorder in the
worker process carries every change into SQL.
"""

from __future__ import annotations

import logging
import os
import traceback
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from rq import get_current_job
from rq.job import Job as RQJob
from rq.timeouts import JobTimeoutException

from jobs.clock import utcnow
from jobs.lifecycle import record
from jobs.redis_conn import get_redis
from jobs.status import JobStatus
from jobs.tasks import get_task
from worker.progress import Progress

log = logging.getLogger(__name__)


def jsonable(value: Any) -> Any:
    """A task's return value as JSON data (pydantic models are dumped)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def error_info(exc: BaseException) -> dict[str, str]:
    """The {type, detail} recorded for an exception."""
    if isinstance(exc, JobTimeoutException):
        return {"type": "JobTimeout", "detail": str(exc) or "The job exceeded its timeout."}
    return {"type": type(exc).__name__, "detail": str(exc) or type(exc).__name__}


def run_job(task: str, payload: dict[str, Any]) -> Any:
    """Run one attempt of a job (RQ calls this inside the work-horse)."""
    rq_job = get_current_job()
    if rq_job is None:
        raise RuntimeError("run_job must run inside an RQ worker")
    job_id = rq_job.id
    client = get_redis()
    worker_name = os.environ.get("RQ_WORKER_ID", "")
    started_at = utcnow()
    started = record(
        job_id,
        JobStatus.STARTED,
        event="started",
        patch={"started_at": started_at, "ended_at": None, "error": None, "eta_seconds": None},
        private={"worker": worker_name},
        data={"worker": worker_name},
        client=client,
    )
    if not started.applied or started.snapshot is None:
        log.warning("job %s not started: it is %s", job_id, started.current_status)
        return None
    attempt = started.snapshot.attempt

    progress = Progress(job_id=job_id, attempt=attempt, started_at=started_at, client=client)
    try:
        spec = get_task(task)
        model = spec.validate(payload)
        value = spec.func(model, progress) if spec.takes_progress else spec.func(model)
        result = jsonable(value)
    except BaseException as exc:
        progress.close()
        _record_failure(rq_job, exc, attempt)
        raise
    progress.close()
    record(
        job_id,
        JobStatus.FINISHED,
        event="finished",
        patch={"result": result, "progress": 100.0, "ended_at": utcnow(), "eta_seconds": None},
        expect_attempt=attempt,
        client=client,
    )
    return result


def _record_failure(rq_job: RQJob, exc: BaseException, attempt: int) -> None:
    error = error_info(exc)
    data = {"error": error, "traceback": traceback.format_exc(limit=30)}
    record_attempt_failed(rq_job, error, attempt=attempt, data=data)


def record_attempt_failed(
    rq_job: RQJob, error: dict[str, str], *, attempt: int = 0, data: dict[str, Any] | None = None
) -> None:
    """Record a failed attempt: a new attempt when RQ will retry it, else the job's failure."""
    now = utcnow()
    if rq_job.should_retry:
        delay = rq_job.get_retry_interval()
        status = JobStatus.SCHEDULED if delay else JobStatus.QUEUED
        when = now + timedelta(seconds=delay)
        record(
            rq_job.id,
            status,
            event="retry",
            new_attempt=True,
            patch={"error": error, "enqueued_at": when, "eta_seconds": None},
            expect_attempt=attempt,
            data={**(data or {}), "scheduled_for": when.isoformat(), "retry_in_s": delay},
        )
        return
    record(
        rq_job.id,
        JobStatus.FAILED,
        event="failed",
        patch={"error": error, "ended_at": now, "eta_seconds": None},
        expect_attempt=attempt,
        data=data,
    )


def on_stopped(job: RQJob, connection: Any) -> None:
    """RQ callback, run in the worker process after it killed a job's work-horse on request."""
    record(
        job.id,
        JobStatus.CANCELED,
        event="canceled",
        patch={"ended_at": utcnow(), "eta_seconds": None},
        data={"forced": True},
    )

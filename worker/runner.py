"""The task runner: the one function RQ executes for every Conveyor job.

It records the attempt's start, runs the registered task with a `Progress`,
and records how it ended: finished with its result, failed with
{type, detail} (or, when RQ will retry, a new attempt), or canceled.
It runs in RQ's work-horse and only touches Redis; the recorder in the
worker process carries every change into SQL. Results and errors are
redacted here, where they are produced, before they are stored anywhere;
a large result is stashed and referenced (see jobs/results.py).
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from collections.abc import Callable
from typing import Any

import redis.exceptions
from pydantic import BaseModel
from rq import get_current_job
from rq.job import Job as RQJob
from rq.timeouts import JobTimeoutException

from jobs.attempts import end_failed_attempt, lost_our_start, reannounce_start, record_canceled
from jobs.clock import utcnow
from jobs.lifecycle import record
from jobs.live import TransitionResult, read_head
from jobs.queueing import retry_in
from jobs.redaction import redact, redact_text
from jobs.redis_conn import get_redis
from jobs.results import discard_blob, result_patch
from jobs.status import WAITING, JobStatus
from jobs.tasks import get_task
from jobs.tracing import current_trace_id
from worker.progress import JobCanceled, JobInterrupted, Progress

log = logging.getLogger(__name__)

MAX_ERROR_DETAIL = 8192


def jsonable(value: Any) -> Any:
    """A task's return value as JSON data (pydantic models are dumped)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def error_info(exc: BaseException) -> dict[str, str]:
    """The {type, detail} recorded for an exception (secrets redacted, detail capped)."""
    if isinstance(exc, JobTimeoutException):
        return {"type": "JobTimeout", "detail": str(exc) or "The job exceeded its timeout."}
    detail = redact_text(str(exc) or type(exc).__name__)
    if len(detail) > MAX_ERROR_DETAIL:
        detail = detail[:MAX_ERROR_DETAIL] + " [truncated]"
    return {"type": type(exc).__name__, "detail": detail}


def run_job(task: str, payload: dict[str, Any]) -> Any:
    """Run one attempt of a job (RQ calls this inside the work-horse)."""
    rq_job = get_current_job()
    if rq_job is None:
        raise RuntimeError("run_job must run inside an RQ worker")
    job_id = rq_job.id
    current_trace_id.set(rq_job.meta.get("trace_id"))
    client = get_redis()
    worker_name = os.environ.get("RQ_WORKER_ID", "")
    started_at = utcnow()
    started = record(
        job_id,
        JobStatus.STARTED,
        event="started",
        from_statuses=WAITING,  # never a second run of an attempt that is already running or over
        patch={
            "started_at": started_at,
            "ended_at": None,
            "error": None,
            "result": None,
            "result_ref": None,
            "progress": None,
            "message": None,
            "eta_seconds": None,
        },
        private={"worker": worker_name},
        data={"worker": worker_name},
        client=client,
    )
    if not started.applied or started.doc is None:
        # Canceled while queued, or a duplicate delivery of an attempt that ran: RQ must neither
        # retry it nor release the jobs that depend on it, so it ends as an RQ failure.
        _no_retry(rq_job)
        raise JobInterrupted(f"job {job_id} was not started: it is {started.current_status}")
    # The attempt number, read without validating the whole snapshot: this runs for every job.
    attempt = int(json.loads(started.doc)["attempt"])

    progress = Progress(job_id=job_id, attempt=attempt, started_at=started_at, client=client)
    try:
        spec = get_task(task)
        model = spec.validate(payload)
        value = spec.func(model, progress) if spec.takes_progress else spec.func(model)
        fields = result_patch(job_id, attempt, redact(jsonable(value)), client)
    except JobCanceled as exc:
        progress.close()
        record_canceled(job_id, by=exc.by, requested_at=exc.requested_at, attempt=attempt, client=client)
        _no_retry(rq_job)
        raise
    except JobInterrupted:
        progress.close()
        _no_retry(rq_job)
        raise
    except BaseException as exc:
        progress.close()
        _record_failure(rq_job, exc, attempt)
        raise
    progress.close()

    def finish() -> TransitionResult:
        return record(
            job_id,
            JobStatus.FINISHED,
            event="finished",
            patch={**fields, "progress": 100.0, "ended_at": utcnow(), "eta_seconds": None},
            expect_attempt=attempt,
            client=client,
        )

    finished = _through_a_blip(finish)
    if lost_our_start(finished) and reannounce_start(
        job_id, attempt, started_at, worker=worker_name, client=client
    ):
        finished = finish()
    if fields["result_ref"] is not None and not finished.applied:
        discard_blob(job_id, attempt, client)
    # What RQ keeps as its own copy of the result: the redacted value, or just the reference.
    return fields["result"] if fields["result_ref"] is None else fields["result_ref"]


def _through_a_blip(write: Callable[[], TransitionResult], *, patience: float = 15.0) -> TransitionResult:
    """Record an attempt's end even if Redis is unreachable for a moment (a restart, a failover):
    the work is done, and giving up here would only make the job run again."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return write()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            if time.monotonic() >= deadline:
                raise
            log.warning("Redis unreachable while recording the end of a job; trying again")
            time.sleep(0.5)


def _no_retry(rq_job: RQJob) -> None:
    """Make RQ treat this attempt's end as final (the worker reads it off the same job object)."""
    rq_job.retries_left = 0


def _record_failure(rq_job: RQJob, exc: BaseException, attempt: int) -> None:
    error = error_info(exc)
    data = {"traceback": redact_text(traceback.format_exc(limit=30))}
    ended = end_failed_attempt(rq_job.id, error, attempt=attempt, retry_in=retry_in(rq_job), data=data)
    worker = os.environ.get("RQ_WORKER_ID", "")
    if lost_our_start(ended.result) and reannounce_start(rq_job.id, attempt, utcnow(), worker=worker):
        ended = end_failed_attempt(rq_job.id, error, attempt=attempt, retry_in=retry_in(rq_job), data=data)
    if ended.outcome == "canceled":
        _no_retry(rq_job)


def on_stopped(job: RQJob, connection: Any) -> None:
    """RQ callback, run in the worker process after it killed a job's work-horse on request."""
    client = get_redis()
    head = read_head(client, job.id, ("control_by", "control_at"))
    record_canceled(
        job.id,
        by=head.control_by,
        requested_at=head.control_at,
        forced=True,
        client=client,
    )

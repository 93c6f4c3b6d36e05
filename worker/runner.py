"""The task runner: the one function RQ executes for every Conveyor job.

It records the attempt's start, runs the registered task with a `Progress`,
and records how it ended: finished with its result, failed with
{type, detail} (or, when RQ will retry, a new attempt), or canceled.
It runs in RQ's work-horse and only touches Redis; the recorder in the
worker process carries every change into SQL. Results and errors are
redacted here, where they are produced, before they are stored anywhere;
a large result is stashed and referenced (see jobs/state/results.py).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import redis.exceptions
from pydantic import BaseModel
from redis import Redis
from rq import get_current_job
from rq.job import Job as RQJob
from rq.timeouts import JobTimeoutException

from jobs.access.redaction import redact, redact_text
from jobs.clock import utcnow
from jobs.queues.queueing import retry_in
from jobs.state.attempts import (
    end_failed_attempt,
    lost_our_start,
    pending_cancel,
    reannounce_start,
    record_canceled,
)
from jobs.state.lifecycle import record
from jobs.state.live import TransitionResult, read_head
from jobs.state.redis_conn import get_redis
from jobs.state.results import discard_blob, result_patch
from jobs.status import WAITING, JobStatus
from jobs.tasks import get_task
from jobs.tracing import current_trace_id
from worker.job_log import capturing
from worker.progress import JobCanceled, JobInterrupted, Progress

log = logging.getLogger(__name__)

MAX_ERROR_DETAIL = 8192

T = TypeVar("T")


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


@dataclass(frozen=True)
class Success:
    """A task's successful attempt: the end's public fields, and what RQ keeps as its result."""

    patch: dict[str, Any]
    rq_value: Any
    progress: tuple[tuple[bytes, bytes], ...] = ()  # journaled progress writes: (document, entry id)

    @property
    def result_ref(self) -> str | None:
        ref: str | None = self.patch.get("result_ref")
        return ref


def perform(
    task: str,
    payload: dict[str, Any],
    *,
    job_id: str,
    attempt: int,
    started_at: datetime,
    client: Redis,
    rq_job: Callable[[], RQJob | None],
    no_retry: Callable[[], None],
) -> Success:
    """Run one started attempt of a task with its `Progress`; return its end, or raise.

    A cancel, an interruption and a failure are recorded here before they are raised,
    and ``no_retry`` is called when RQ must not retry the attempt (``rq_job`` loads RQ's
    record of the job, for its retry policy, only when one is needed).
    Both the RQ entry point (`run_job`) and the worker's own loop (worker/child.py) use it.
    """
    progress = Progress(job_id=job_id, attempt=attempt, started_at=started_at, client=client)
    with _recording(progress, client, rq_job, no_retry):
        spec = get_task(task)
        model = spec.validate(payload)
        with capturing(job_id, attempt, client):
            value = spec.func(model, progress) if spec.takes_progress else spec.func(model)
            if inspect.iscoroutine(value):  # an async task on RQ's own path: it runs alone
                value = _run_alone(value)
        fields = result_patch(job_id, attempt, redact(jsonable(value)), client)
    return _success(fields, progress)


def _run_alone(work: Coroutine[Any, Any, T]) -> T:
    """Run an async task to its end on a private loop (not `asyncio.run`, which would clear
    this thread's current loop for whoever set one)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(work)
    finally:
        loop.close()


async def perform_async(
    task: str,
    payload: dict[str, Any],
    *,
    job_id: str,
    attempt: int,
    started_at: datetime,
    client: Redis,
    rq_job: Callable[[], RQJob | None],
    no_retry: Callable[[], None],
    timeout: float,
    stop_asked: Callable[[], bool],
) -> Success:
    """`perform` for an ``async def`` task, on the worker child's event loop.

    Its timeout is an asyncio timeout around the task (RQ's alarm cannot target one coroutine),
    recorded as a `JobTimeout` failure. A forced stop arrives as asyncio cancellation: when
    ``stop_asked`` says the supervisor asked for it, it is recorded as a forced cancel. The
    blocking Redis calls here (start of `Progress`, result, the failure's record) are single
    short commands; the job's end script runs off the loop (see worker/child.py).
    """
    progress = Progress(job_id=job_id, attempt=attempt, started_at=started_at, client=client)
    with _recording(progress, client, rq_job, no_retry):
        spec = get_task(task)
        model = spec.validate(payload)
        try:
            async with asyncio.timeout(timeout) as scope:
                progress.timeout_scope = scope
                with capturing(job_id, attempt, client):  # this task's context: its lines only
                    value = await (spec.func(model, progress) if spec.takes_progress else spec.func(model))
        except TimeoutError:
            if not scope.expired():
                raise  # the task's own TimeoutError
            raise JobTimeoutException(f"Task exceeded maximum timeout value ({timeout:g} seconds)") from None
        except asyncio.CancelledError:
            if not stop_asked():
                raise
            by, at = pending_cancel(job_id, client) or (None, None)
            raise JobCanceled(by, at, forced=True) from None
        fields = result_patch(job_id, attempt, redact(jsonable(value)), client)
    return _success(fields, progress)


@contextmanager
def _recording(
    progress: Progress, client: Redis, rq_job: Callable[[], RQJob | None], no_retry: Callable[[], None]
) -> Iterator[None]:
    """Record how an attempt that did not succeed ended (then re-raise); close its progress."""
    job_id, attempt = progress.job_id, progress.attempt
    try:
        yield
    except JobCanceled as exc:
        progress.close()
        record_canceled(
            job_id,
            by=exc.by,
            requested_at=exc.requested_at,
            attempt=attempt,
            forced=exc.forced,
            client=client,
        )
        no_retry()
        raise
    except JobInterrupted:
        progress.close()
        no_retry()
        raise
    except BaseException as exc:
        progress.close()
        if _record_failure(job_id, rq_job(), exc, attempt, client) == "canceled":
            no_retry()
        raise
    progress.close()


def _success(fields: dict[str, Any], progress: Progress) -> Success:
    # What RQ keeps as its own copy of the result: the redacted value, or just the reference.
    rq_value = fields["result"] if fields["result_ref"] is None else fields["result_ref"]
    patch = {**fields, "progress": 100.0, "ended_at": utcnow(), "eta_seconds": None}
    return Success(patch, rq_value, tuple(progress.journaled))


def run_job(task: str, payload: dict[str, Any]) -> Any:
    """Run one attempt of a job: what RQ calls when its own code runs the job (RQ's workers, and
    the jobs the worker's fast path leaves to RQ's code; see jobs/queues/rq_engine.py)."""
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
    attempt = attempt_of(started)
    success = perform(
        task,
        payload,
        job_id=job_id,
        attempt=attempt,
        started_at=started_at,
        client=client,
        rq_job=lambda: rq_job,
        no_retry=lambda: _no_retry(rq_job),
    )

    def finish() -> TransitionResult:
        return record(
            job_id,
            JobStatus.FINISHED,
            event="finished",
            patch=success.patch,
            expect_attempt=attempt,
            client=client,
        )

    finished = through_a_blip(finish)
    if lost_our_start(finished) and reannounce_start(
        job_id, attempt, started_at, worker=worker_name, client=client
    ):
        finished = finish()
    if success.result_ref is not None and not finished.applied:
        discard_blob(job_id, attempt, client)
    return success.rq_value


def attempt_of(started: TransitionResult) -> int:
    """The attempt number of a start, read without validating the whole snapshot (every job)."""
    assert started.doc is not None
    return int(json.loads(started.doc)["attempt"])


def through_a_blip(write: Callable[[], T], *, patience: float = 15.0) -> T:
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


def _record_failure(
    job_id: str, rq_job: RQJob | None, exc: BaseException, attempt: int, client: Redis
) -> str:
    """Record a failed attempt (retried as RQ will retry it); returns the outcome recorded."""
    error = error_info(exc)
    data = {"traceback": redact_text(traceback.format_exc(limit=30))}
    delay = retry_in(rq_job) if rq_job is not None else None
    ended = end_failed_attempt(job_id, error, attempt=attempt, retry_in=delay, data=data, client=client)
    worker = os.environ.get("RQ_WORKER_ID", "")
    if lost_our_start(ended.result) and reannounce_start(
        job_id, attempt, utcnow(), worker=worker, client=client
    ):
        ended = end_failed_attempt(job_id, error, attempt=attempt, retry_in=delay, data=data, client=client)
    return ended.outcome


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

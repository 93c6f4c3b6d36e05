"""Submitting a job: validate, write the SQL row, then seed the live state and enqueue.

The order matters. SQL first: if the database is down nothing is enqueued. If
Redis is down after the row is written, the row is marked failed at once
(error type `EnqueueFailed`) rather than left looking queued forever.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.exceptions
import sqlalchemy as sa

from jobs.clock import utcnow
from jobs.db import session_scope
from jobs.errors import IdempotencyConflict, InvalidRequest, ServiceUnavailable
from jobs.live import job_key
from jobs.models import Job, JobEvent
from jobs.queueing import enqueue
from jobs.redaction import redact
from jobs.redis_conn import get_redis
from jobs.settings import get_settings
from jobs.snapshot import assemble, doc_from_row, row_fields
from jobs.status import JobStatus
from jobs.store import add_job, find_by_idempotency_key
from jobs.tasks import TaskSpec, get_task

log = logging.getLogger(__name__)

DB_DOWN = "The database is unavailable, so the job was not accepted. Nothing was enqueued; retry shortly."
REDIS_DOWN = (
    "Redis is unavailable, so the job could not be enqueued. It is recorded as failed "
    "(EnqueueFailed); submit it again once Redis is back."
)


@dataclass(frozen=True)
class Submission:
    job_id: str
    doc: bytes
    created: bool  # False when an Idempotency-Key replayed an earlier submission


def request_hash(task: str, payload: Any, queue: str | None) -> str:
    canonical = json.dumps({"task": task, "payload": payload, "queue": queue}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(job: Job, digest: str) -> Submission:
    if job.request_hash != digest:
        raise IdempotencyConflict(
            "This Idempotency-Key was already used for a different request body. "
            "Use a new key for a new request."
        )
    try:
        live = get_redis().hget(job_key(job.job_id), "_doc")
    except redis.exceptions.RedisError:
        live = None
    return Submission(job_id=job.job_id, doc=live or doc_from_row(job), created=False)


def _resolve_queue(spec: TaskSpec, queue: str | None) -> str:
    settings = get_settings()
    name = queue or spec.queue or settings.default_queue
    if name not in settings.queues:
        raise InvalidRequest(
            f"Unknown queue {name!r}: no worker listens on it. Known queues: {', '.join(settings.queues)}.",
            known_queues=settings.queues,
        )
    return name


def submit_job(
    *,
    tenant: str,
    owner: str | None,
    task: str,
    payload: Any,
    queue: str | None = None,
    idempotency_key: str | None = None,
    timeout: int | None = None,
    tags: Sequence[str] = (),
    trace_id: str | None = None,
) -> Submission:
    """Accept a job for ``tenant``; raises a ConveyorError the API turns into a status code."""
    spec = get_task(task)
    model = spec.validate(payload)
    queue_name = _resolve_queue(spec, queue)
    clean = model.model_dump(mode="json")
    digest = request_hash(task, payload, queue)

    now = utcnow()
    job = Job(
        job_id=str(uuid.uuid4()),
        tenant=tenant,
        owner=owner,
        task=spec.name,
        queue=queue_name,
        status=JobStatus.QUEUED.value,
        params=redact(clean),
        max_retries=spec.retries,
        timeout_s=timeout or spec.timeout,
        tags=list(dict.fromkeys([*spec.tags, *tags])) or None,
        trace_id=trace_id,
        idempotency_key=idempotency_key,
        request_hash=digest,
        created_at=now,
        enqueued_at=now,
        updated_at=now,
    )
    try:
        with session_scope() as session:
            if idempotency_key:
                earlier = find_by_idempotency_key(session, tenant=tenant, key=idempotency_key)
                if earlier is not None:
                    return _replay(earlier, digest)
            add_job(session, job=job)
    except sa.exc.IntegrityError:
        # A concurrent submission with the same Idempotency-Key won the race.
        with session_scope() as session:
            earlier = find_by_idempotency_key(session, tenant=tenant, key=idempotency_key or "")
        if earlier is None:
            raise
        return _replay(earlier, digest)
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        log.error("submit: database unavailable: %s", exc)
        raise ServiceUnavailable(DB_DOWN) from None

    fields = row_fields(job)
    doc = assemble(fields)
    try:
        client = get_redis()
        with client.pipeline(transaction=True) as pipe:
            pipe.multi()  # RQ expects a caller's pipeline to be in MULTI already
            mapping: dict[str | bytes, bytes | float | int | str] = {"tenant": tenant, "owner": owner or ""}
            mapping.update(fields)
            mapping["_doc"] = doc
            pipe.hset(job_key(job.job_id), mapping=mapping)
            enqueue(job, spec, clean, connection=client, pipeline=pipe)
            pipe.execute()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, ServiceUnavailable) as exc:
        log.error("submit: could not enqueue job %s: %s", job.job_id, exc)
        _mark_enqueue_failed(job, str(exc))
        raise ServiceUnavailable(REDIS_DOWN, job_id=job.job_id) from None
    return Submission(job_id=job.job_id, doc=doc, created=True)


def _mark_enqueue_failed(job: Job, detail: str) -> None:
    now = utcnow()
    try:
        with session_scope() as session:
            row = session.get(Job, job.job_id)
            if row is None or row.status != JobStatus.QUEUED.value:
                return
            row.status = JobStatus.FAILED.value
            row.idempotency_key = None  # a 503 is not a stored outcome: the client's retry makes a new job
            row.error_type = "EnqueueFailed"
            row.error_detail = f"Redis was unavailable at submission: {detail}"
            row.ended_at = row.failed_at = row.updated_at = now
            row.seq += 1
            session.add(
                JobEvent(
                    job_id=row.job_id,
                    seq=row.seq,
                    event="failed",
                    status=row.status,
                    attempt=row.attempt,
                    data={"error": {"type": row.error_type, "detail": row.error_detail}},
                    created_at=now,
                )
            )
    except sa.exc.SQLAlchemyError:
        log.exception("submit: could not mark job %s as failed after an enqueue failure", job.job_id)

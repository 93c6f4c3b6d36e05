"""Submitting a job: validate, write the SQL row, then seed the live state and enqueue.

The order matters. SQL first: if the database is down nothing is enqueued. If
Redis is down after the row is written, the row is marked failed at once
(error type `EnqueueFailed`) rather than left looking queued forever.

`submit_job` takes the SQL ``session`` and the Redis ``client`` as keyword arguments (a
route's dependencies, the scheduler's entry point) and commits each step itself: the row is
committed before the job is enqueued, so a worker never picks up a job SQL does not have.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis.exceptions
import sqlalchemy as sa
from redis import Redis
from sqlmodel import Session

from jobs.access.admission import admit_submission
from jobs.access.redaction import redact, redact_text
from jobs.clock import isoformat, utcnow
from jobs.errors import (
    IdempotencyConflict,
    IllegalTransition,
    InvalidPayload,
    InvalidRequest,
    ServiceUnavailable,
)
from jobs.history.models import Job, JobEvent
from jobs.history.store import find_by_idempotency_key, get_job
from jobs.history.submit_sql import NewJob, insert_new_job, one_writer
from jobs.queues.queue_control import refuse_if_draining
from jobs.queues.queueing import enqueue
from jobs.settings import get_settings
from jobs.snapshot import assemble, doc_from_row, row_fields
from jobs.state.lifecycle import record, write_through_or_log
from jobs.state.live import live_store, read_head
from jobs.state.reads import valid_job_id
from jobs.status import WAITING, JobStatus
from jobs.storable import Unstorable, find_unstorable
from jobs.tasks import TaskSpec, get_task

log = logging.getLogger(__name__)

DB_DOWN = "The database is unavailable, so the job was not accepted. Nothing was enqueued; retry shortly."
REDIS_DOWN = (
    "Redis is unavailable, so the job could not be enqueued. It is recorded as failed "
    "(EnqueueFailed); submit it again once Redis is back."
)
REDIS_REFUSED = (
    "Redis refused to enqueue the job ({reason}). It is recorded as failed (EnqueueFailed); "
    "submit it again once Redis accepts writes."
)

MAX_AHEAD = timedelta(days=366)
MAX_PARENTS = 20


@dataclass(frozen=True)
class Submission:
    job_id: str
    doc: bytes
    created: bool  # False when an Idempotency-Key replayed an earlier submission


def request_hash(task: str, payload: Any, queue: str | None, **options: Any) -> str:
    """The digest an Idempotency-Key is bound to (options count only when given)."""
    body = {"task": task, "payload": payload, "queue": queue}
    body.update({name: value for name, value in options.items() if value not in (None, [], ())})
    canonical = json.dumps(body, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _run_at(now: datetime, run_at: datetime | None, delay: float | None) -> datetime | None:
    """When a delayed submission should run (None: now)."""
    if run_at is not None and delay is not None:
        raise InvalidRequest("Give run_at or delay, not both.")
    when = run_at if run_at is not None else (now + timedelta(seconds=delay) if delay else None)
    if when is None:
        return None
    if when.tzinfo is None:
        raise InvalidRequest("run_at needs a timezone (for example 2030-01-01T09:00:00Z).")
    if when - now > MAX_AHEAD:
        raise InvalidRequest("run_at and delay may be at most 366 days ahead.")
    return when if when > now else None


def _parents(session: Session, tenant: str, depends_on: Sequence[str]) -> tuple[list[str], list[str]]:
    """(all parent ids, those not finished yet); unknown ids are 422, failed parents 409."""
    ids = list(dict.fromkeys(depends_on))
    if len(ids) > MAX_PARENTS:
        raise InvalidRequest(f"depends_on may name at most {MAX_PARENTS} jobs.")
    unfinished = []
    for parent_id in ids:
        row = get_job(session, job_id=parent_id, tenant=tenant) if valid_job_id(parent_id) else None
        if row is None:
            raise InvalidRequest(f"depends_on: there is no job {parent_id!r}.", unknown_job=parent_id)
        if row.status in (JobStatus.FAILED.value, JobStatus.CANCELED.value):
            raise IllegalTransition(
                f"depends_on: job {parent_id} is {row.status}, so this job could never run. "
                "Restart that job first, or leave it out.",
                status=row.status,
            )
        if row.status != JobStatus.FINISHED.value:
            unfinished.append(parent_id)
    return ids, unfinished


def _replay(job: Job, digest: str, client: Redis) -> Submission:
    if job.request_hash != digest:
        raise IdempotencyConflict(
            "This Idempotency-Key was already used for a different request body. "
            "Use a new key for a new request."
        )
    try:
        live = read_head(client, job.job_id, ("doc",)).doc
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
    session: Session,
    client: Redis,
    tenant: str,
    owner: str | None,
    task: str,
    payload: Any,
    queue: str | None = None,
    idempotency_key: str | None = None,
    timeout: int | None = None,
    tags: Sequence[str] = (),
    trace_id: str | None = None,
    run_at: datetime | None = None,
    delay: float | None = None,
    depends_on: Sequence[str] = (),
) -> Submission:
    """Accept a job for ``tenant``; raises a ConveyorError the API turns into a status code.

    With ``run_at`` or ``delay`` it waits as ``scheduled``; with ``depends_on``
    (job ids of the same tenant) it waits as ``deferred`` until they finish.
    """
    admit_submission(session=session, client=client, tenant=tenant, owner=owner, task=task, timeout=timeout)
    spec = get_task(task)
    clean, queue_name = _validated(spec, payload, queue)
    refuse_if_draining(client, queue_name)
    now = utcnow()
    when = _run_at(now, run_at, delay)
    if when is not None and depends_on:
        raise InvalidRequest("A job can wait for a time or for other jobs, not both.")
    digest = request_hash(
        task, payload, queue, run_at=isoformat(run_at), delay=delay, depends_on=list(depends_on)
    )
    job = NewJob(
        job_id=str(uuid.uuid4()),
        tenant=tenant,
        owner=owner,
        task=spec.name,
        queue=queue_name,
        status=JobStatus.SCHEDULED.value if when else JobStatus.QUEUED.value,
        params=redact(clean),
        max_retries=spec.retries,
        timeout_s=timeout or spec.timeout,
        tags=list(dict.fromkeys([*spec.tags, *tags])) or None,
        trace_id=trace_id,
        idempotency_key=idempotency_key,
        request_hash=digest,
        scheduled_for=when,
        created_at=now,
        enqueued_at=when or now,
        updated_at=now,
    )
    stored = _store_row(job, session=session, client=client, digest=digest, depends_on=depends_on, when=when)
    if isinstance(stored, Submission):
        return stored
    doc = _enqueue_with_live_state(
        job, spec, clean, session=session, client=client, when=when, unfinished=stored
    )
    return Submission(job_id=job.job_id, doc=doc, created=True)


def _validated(spec: TaskSpec, payload: Any, queue: str | None) -> tuple[dict[str, Any], str]:
    """Step 1: the payload as the task's model dumps it, and the queue; 422 for what cannot be stored."""
    max_depth = get_settings().max_json_depth
    # NaN and Infinity first: the model's JSON dump would quietly turn them into null.
    _refuse_unstorable(spec.name, find_unstorable(payload, max_depth=max_depth, text=False))
    model = spec.validate(payload)
    queue_name = _resolve_queue(spec, queue)
    clean = model.model_dump(mode="json")
    _refuse_unstorable(spec.name, find_unstorable(clean, max_depth=max_depth))
    return clean, queue_name


def _store_row(
    job: NewJob | Job,
    *,
    session: Session,
    client: Redis,
    digest: str,
    depends_on: Sequence[str],
    when: datetime | None,
) -> Submission | list[str]:
    """Step 2: the SQL row, before anything reaches Redis (database down: nothing is enqueued).

    Returns the earlier submission an Idempotency-Key replays, or else the parents that have
    not finished yet (the job then waits as ``deferred``). The key is checked by the insert
    itself (it stores nothing when the key is taken), so a new job costs no extra read.
    """
    tenant, idempotency_key = job.tenant, job.idempotency_key
    unfinished: list[str] = []
    try:
        details: dict[str, Any] = {}
        if depends_on:
            if idempotency_key:  # replay before refusing parents that have failed since
                earlier = find_by_idempotency_key(session, tenant=tenant, key=idempotency_key)
                if earlier is not None:
                    return _replay(earlier, digest, client)
            parents, unfinished = _parents(session, tenant, depends_on)
            job.parent_id, job.depends_on = parents[0], parents
            details["depends_on"] = parents
            if unfinished:
                job.status = JobStatus.DEFERRED.value
        if when is not None:
            details["scheduled_for"] = isoformat(when)
        with one_writer(session):
            inserted = insert_new_job(session, job, data=details or None)
            if inserted:
                session.commit()
            else:
                session.rollback()
        if not inserted:
            return _replay_taken_key(session, tenant, idempotency_key or "", digest, client)
    except sa.exc.IntegrityError:
        session.rollback()
        if not idempotency_key:
            raise
        return _replay_taken_key(session, tenant, idempotency_key, digest, client)
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        session.rollback()
        log.error("submit: database unavailable: %s", exc)
        raise ServiceUnavailable(DB_DOWN) from None
    return unfinished


def _replay_taken_key(session: Session, tenant: str, key: str, digest: str, client: Redis) -> Submission:
    """The earlier submission holding ``key`` (a concurrent one may just have won the race)."""
    earlier = find_by_idempotency_key(session, tenant=tenant, key=key)
    if earlier is None:
        # Released between our insert and this read (its enqueue failed): the client retries.
        raise ServiceUnavailable("A submission with this Idempotency-Key was in flight; retry it.")
    return _replay(earlier, digest, client)


def _enqueue_with_live_state(
    job: NewJob | Job,
    spec: TaskSpec,
    clean: dict[str, Any],
    *,
    session: Session,
    client: Redis,
    when: datetime | None,
    unfinished: list[str],
) -> bytes:
    """Step 3: enqueue on RQ and seed the live hash in one Redis transaction; the snapshot.

    Any failure marks the row failed (EnqueueFailed) before raising, so it never looks queued.
    """
    fields = row_fields(job)
    doc = assemble(fields)
    try:
        store = live_store(client)
        for _ in range(5):
            try:
                with client.pipeline(transaction=True) as pipe:
                    # RQ first WATCHes the parents, then opens the transaction our live state joins.
                    enqueue(
                        job, spec, clean, connection=client, pipeline=pipe, run_at=when, depends_on=unfinished
                    )
                    store.seed_in(pipe, fields, tenant=job.tenant, owner=job.owner or "")
                    pipe.execute()
                break
            except redis.exceptions.WatchError:
                continue  # a parent changed while RQ looked at it: look again
        else:
            raise ServiceUnavailable("the jobs this one depends on kept changing while it was enqueued")
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, ServiceUnavailable) as exc:
        log.error("submit: could not enqueue job %s: %s", job.job_id, exc)
        _mark_enqueue_failed(
            job, f"Redis was unavailable at submission: {exc}", session=session, client=client
        )
        raise ServiceUnavailable(REDIS_DOWN, job_id=job.job_id) from None
    except redis.exceptions.RedisError as exc:
        # Out of memory, a read-only replica, a missing script...: Redis answered but refused. The
        # transaction did not run, so nothing waits in RQ; marked failed, the reconciler leaves it.
        reason = _first_line(exc)
        log.error("submit: Redis refused to enqueue job %s: %s", job.job_id, reason)
        _mark_enqueue_failed(
            job, f"Redis refused the job at submission: {reason}", session=session, client=client
        )
        raise ServiceUnavailable(REDIS_REFUSED.format(reason=reason), job_id=job.job_id) from None
    except Exception as exc:
        # Whatever else went wrong, the row must not stay `queued` for the reconciler to run later.
        detail = f"the job could not be enqueued: {type(exc).__name__}"
        _mark_enqueue_failed(job, detail, session=session, client=client)
        raise
    return doc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _refuse_unstorable(task: str, problem: Unstorable | None) -> None:
    """A 422 naming the field a database could not store (the same on SQLite and PostgreSQL)."""
    if problem is None:
        return
    where = ".".join(str(part) for part in ("payload", *problem.loc))
    raise InvalidPayload(task, [problem.error()], message=f"`{where}`: {problem.msg}.")


def _mark_enqueue_failed(job: NewJob | Job, detail: str, *, session: Session, client: Redis) -> None:
    """Mark the job that could not be enqueued `failed` (EnqueueFailed), so nothing runs it later.

    Through the gate like any change (the live state is seeded from the row, failed, journaled,
    and written through to SQL), so a job whose transaction did reach Redis is refused to a worker.
    """
    error = {"type": "EnqueueFailed", "detail": redact_text(detail)}
    data = {"error": error}
    try:
        result = record(
            job.job_id,
            JobStatus.FAILED,
            event="failed",
            from_statuses=WAITING,
            patch={"error": error},
            data=data,
            client=client,
        )
    except redis.exceptions.RedisError as exc:
        log.warning("submit: the gate could not run for job %s (%s): failing it in SQL only", job.job_id, exc)
        _fail_in_sql_without_redis(job, error, session)
        return
    except sa.exc.SQLAlchemyError:  # reseeding reads the row: the caller's 503 must stand
        log.exception("submit: could not mark job %s as failed after an enqueue failure", job.job_id)
        return
    if result.applied:
        write_through_or_log(result, session=session, event="failed", data=data)
        _release_idempotency_key(job, session)


def _release_idempotency_key(job: NewJob | Job, session: Session) -> None:
    """A 503 is not a stored outcome: the client's retry with the same key makes a new job."""
    if job.idempotency_key is None:
        return
    try:
        row = session.get(Job, job.job_id, populate_existing=True)  # the gate moved it on in SQL
        if row is not None:
            row.idempotency_key = None
        session.commit()
    except sa.exc.SQLAlchemyError:
        session.rollback()
        log.exception("submit: could not release the Idempotency-Key of job %s", job.job_id)


def _fail_in_sql_without_redis(job: NewJob | Job, error: dict[str, str], session: Session) -> None:
    """The one status change made in SQL alone, when the gate cannot run (Redis unreachable or
    refusing writes). Nothing of the job reached Redis (its transaction did not run), so there
    is no live state to disagree with; the row must not stay waiting for the reconciler to run it.
    """
    now = utcnow()
    try:
        row = session.get(Job, job.job_id, populate_existing=True)
        if row is None or row.status not in WAITING:
            return
        row.status = JobStatus.FAILED.value
        row.idempotency_key = None  # a 503 is not a stored outcome: the client's retry makes a new job
        row.error_type = error["type"]
        row.error_detail = error["detail"]
        row.ended_at = row.failed_at = row.updated_at = now
        row.seq += 1
        session.add(
            JobEvent(
                job_id=row.job_id,
                seq=row.seq,
                event="failed",
                status=row.status,
                attempt=row.attempt,
                data={"error": error},
                created_at=now,
            )
        )
        session.commit()
    except sa.exc.SQLAlchemyError:
        session.rollback()
        log.exception("submit: could not mark job %s as failed after an enqueue failure", job.job_id)

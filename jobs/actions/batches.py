"""Submitting a batch: many jobs validated together, written in one statement, enqueued in one
Redis transaction.

The order is single submit's (jobs/actions/submit.py), for many jobs at once: every job is validated
before anything is stored (one bad job refuses the batch, naming its index and field); the
batch row and every job row are written in one SQL transaction, with one multi-row INSERT per
table; then one Redis transaction seeds every job's live hash and enqueues it in RQ (RQ's
``enqueue_many``). If Redis fails there, every job of the batch is marked failed
(``EnqueueFailed``), as a single submit's job is.

A job's id is derived from the batch's id and its index (UUID 5), so an ``Idempotency-Key``
replay answers the same ids in the same order without storing them twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace
from typing import Any, cast

import redis.exceptions
import sqlalchemy as sa
from redis import Redis
from sqlmodel import Session, col, select

from jobs.access.admission import admit_submission, admitted_batch
from jobs.access.redaction import redact
from jobs.actions.submit import DB_DOWN, _run_at, _validated, request_hash
from jobs.clock import isoformat, utcnow
from jobs.errors import (
    ConveyorError,
    IdempotencyConflict,
    InvalidPayload,
    InvalidRequest,
    ServiceUnavailable,
    TooLarge,
)
from jobs.history.models import Batch, Job, JobEvent
from jobs.queues.queueing import enqueue, enqueue_many
from jobs.settings import get_settings
from jobs.snapshot import row_fields
from jobs.state.batch_state import job_ids_of
from jobs.state.live import live_store
from jobs.status import WAITING, JobStatus
from jobs.tasks import TaskSpec, get_task

log = logging.getLogger(__name__)

REDIS_DOWN = (
    "Redis is unavailable, so the batch could not be enqueued. Its jobs are recorded as failed "
    "(EnqueueFailed); submit the batch again once Redis is back."
)


@dataclass(frozen=True)
class JobRequest:
    """One job of a batch, with the fields a single submit takes."""

    task: str
    payload: Any = field(default_factory=dict)
    queue: str | None = None
    timeout: int | None = None
    tags: Sequence[str] = ()
    run_at: datetime | None = None
    delay: float | None = None
    depends_on: Sequence[str] = ()


@dataclass(frozen=True)
class BatchSubmission:
    batch_id: str
    job_ids: list[str]
    created: bool  # False when an Idempotency-Key replayed an earlier batch


@dataclass
class _Planned:
    job: Job
    spec: TaskSpec
    clean: dict[str, Any]
    when: datetime | None
    timeout: int | None  # the timeout the job asked for (None: the task's)


def batch_request_hash(jobs: Sequence[JobRequest], name: str | None, tags: Sequence[str]) -> str:
    """The digest a batch's Idempotency-Key is bound to: each job's own digest, in order."""
    digests = [
        request_hash(
            j.task,
            j.payload,
            j.queue,
            run_at=isoformat(j.run_at),
            delay=j.delay,
            timeout=j.timeout,
            tags=list(j.tags),
        )
        for j in jobs
    ]
    body = json.dumps({"jobs": digests, "name": name, "tags": list(tags)}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def _refuse_at(index: int, where: str, exc: ConveyorError) -> InvalidRequest:
    """A job's refusal as the batch's 422, naming the job's index and the field at fault."""
    errors = exc.extra.get("errors")
    message = exc.message
    if isinstance(exc, InvalidPayload) and errors:
        loc = [str(part) for part in errors[0].get("loc", ())]
        where = ".".join(["payload", *loc])
        if not message.startswith("`payload"):
            message = f"{errors[0].get('msg', message)}."
        else:
            message = message.split(": ", 1)[-1]
    field_name = f"jobs[{index}].{where}"
    extra = {k: v for k, v in exc.extra.items() if k not in ("index", "field")}
    return InvalidRequest(f"`{field_name}`: {message}", index=index, field=field_name, **extra)


def _plan(
    jobs: Sequence[JobRequest],
    *,
    batch_id: str,
    tenant: str,
    owner: str | None,
    batch_tags: Sequence[str],
    trace_id: str | None,
    now: datetime,
) -> list[_Planned]:
    """Every job validated and its row built; the first job that cannot be accepted refuses all."""
    planned: list[_Planned] = []
    for index, (job_id, request) in enumerate(zip(job_ids_of(batch_id, len(jobs)), jobs, strict=True)):
        where = "depends_on"
        try:
            if request.depends_on:
                raise InvalidRequest(
                    "depends_on is not taken inside a batch; submit that job on its own "
                    "(it may depend on this batch's id)."
                )
            where = "task"
            spec = get_task(request.task)
            where = "queue"
            clean, queue_name = _validated(spec, request.payload, request.queue)
            where = "run_at"
            when = _run_at(now, request.run_at, request.delay)
        except ConveyorError as exc:
            raise _refuse_at(index, where, exc) from None
        values = {
            **_ROW_DEFAULTS,
            "job_id": job_id,
            "tenant": tenant,
            "owner": owner,
            "task": spec.name,
            "queue": queue_name,
            "status": JobStatus.SCHEDULED.value if when else JobStatus.QUEUED.value,
            "params": redact(clean),
            "max_retries": spec.retries,
            "timeout_s": request.timeout or spec.timeout,
            "tags": list(dict.fromkeys([*spec.tags, *batch_tags, *request.tags])) or None,
            "trace_id": trace_id,
            "scheduled_for": when,
            "created_at": now,
            "enqueued_at": when or now,
            "updated_at": now,
            "batch_id": batch_id,
        }
        # The row as attributes, for what reads a Job's attributes (its snapshot fields, RQ's
        # options): an ORM instance costs ~0.3 ms to build, a namespace a microsecond.
        job = cast(Job, SimpleNamespace(**values))
        planned.append(_Planned(job, spec, clean, when, request.timeout))
    return planned


_JOB_COLUMNS = tuple(column.name for column in Job.__table__.columns)  # type: ignore[attr-defined]
# Every column a batch's job row is inserted with: the model's defaults, else null.
_ROW_DEFAULTS: dict[str, Any] = {
    **dict.fromkeys(_JOB_COLUMNS),
    "params": {},
    "attempt": 1,
    "max_retries": 0,
    "seq": 1,
}


def _job_values(job: Job) -> dict[str, Any]:
    return {name: getattr(job, name) for name in _JOB_COLUMNS}


def _event_values(job: Job) -> dict[str, Any]:
    """The first event of a job, as jobs.history.store.add_job writes it for a single submit."""
    details = {"scheduled_for": isoformat(job.scheduled_for), "batch_id": job.batch_id}
    return {
        "job_id": job.job_id,
        "seq": job.seq,
        "event": job.status,
        "status": job.status,
        "attempt": job.attempt,
        "progress": None,
        "message": None,
        "data": {k: v for k, v in details.items() if v is not None},
        "created_at": job.created_at,
    }


def find_batch_by_idempotency_key(session: Session, *, tenant: str, key: str) -> Batch | None:
    return session.exec(select(Batch).where(Batch.tenant == tenant, Batch.idempotency_key == key)).first()


def _replay(batch: Batch, digest: str) -> BatchSubmission:
    if batch.request_hash != digest:
        raise IdempotencyConflict(
            "This Idempotency-Key was already used for a different batch. Use a new key for a new batch."
        )
    return BatchSubmission(batch.batch_id, job_ids_of(batch.batch_id, batch.size), created=False)


def submit_batch(
    *,
    session: Session,
    client: Redis,
    tenant: str,
    owner: str | None,
    jobs: Sequence[JobRequest],
    name: str | None = None,
    tags: Sequence[str] = (),
    idempotency_key: str | None = None,
    trace_id: str | None = None,
) -> BatchSubmission:
    """Accept every job of ``jobs`` as one batch of ``tenant``, or none of them.

    Raises TooLarge (413) past ``CONVEYOR_BATCH_MAX_JOBS``, InvalidRequest (422) naming the first
    job that cannot be accepted, ServiceUnavailable (503) when a store is down.
    """
    cap = get_settings().batch_max_jobs
    if len(jobs) > cap:
        raise TooLarge(
            f"A batch may hold at most {cap} jobs (CONVEYOR_BATCH_MAX_JOBS); this one has {len(jobs)}. "
            "Split it into several batches.",
            max_jobs=cap,
        )
    if not jobs:
        raise InvalidRequest("A batch needs at least one job in `jobs`.")
    digest = batch_request_hash(jobs, name, tags)
    now = utcnow()
    batch_id = str(uuid.uuid4())
    try:
        if idempotency_key:
            earlier = find_batch_by_idempotency_key(session, tenant=tenant, key=idempotency_key)
            if earlier is not None:
                return _replay(earlier, digest)
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        log.error("submit batch: database unavailable: %s", exc)
        raise ServiceUnavailable(DB_DOWN) from None
    planned = _plan(
        jobs, batch_id=batch_id, tenant=tenant, owner=owner, batch_tags=tags, trace_id=trace_id, now=now
    )
    _admit(planned, session=session, client=client, tenant=tenant, owner=owner)
    batch = Batch(
        batch_id=batch_id,
        tenant=tenant,
        owner=owner,
        name=name,
        tags=list(dict.fromkeys(tags)) or None,
        size=len(planned),
        idempotency_key=idempotency_key,
        request_hash=digest,
        created_at=now,
    )
    replayed = _store(batch, planned, session=session, digest=digest)
    if replayed is not None:
        return replayed
    _enqueue_all(batch, planned, session=session, client=client)
    return BatchSubmission(batch_id, [p.job.job_id for p in planned], created=True)


def _admit(
    planned: list[_Planned], *, session: Session, client: Redis, tenant: str, owner: str | None
) -> None:
    """The tenant's limits (jobs/access/admission.py): each job's timeout under its caps (a 422 naming the
    job), then the whole batch's submit rate and waiting quota at once (n tokens: 429, or 422
    past a bucket's burst), before anything is stored."""
    with admitted_batch():
        for index, p in enumerate(planned):
            try:
                admit_submission(
                    session=session,
                    client=client,
                    tenant=tenant,
                    owner=owner,
                    task=p.spec.name,
                    timeout=p.timeout,
                )
            except InvalidRequest as exc:
                raise _refuse_at(index, "timeout", exc) from None
    first = planned[0]
    admit_submission(
        session=session,
        client=client,
        tenant=tenant,
        owner=owner,
        task=first.spec.name,
        timeout=None,
        count=len(planned),
    )


def _store(batch: Batch, planned: list[_Planned], *, session: Session, digest: str) -> BatchSubmission | None:
    """The batch row, every job row and every first event, in one transaction (one INSERT each)."""
    try:
        session.execute(sa.insert(Batch), [batch.model_dump()])
        session.execute(sa.insert(Job), [_job_values(p.job) for p in planned])
        session.execute(sa.insert(JobEvent), [_event_values(p.job) for p in planned])
        session.commit()
    except sa.exc.IntegrityError:
        session.rollback()  # a concurrent batch with the same Idempotency-Key won the race
        earlier = find_batch_by_idempotency_key(session, tenant=batch.tenant, key=batch.idempotency_key or "")
        if earlier is None:
            raise
        return _replay(earlier, digest)
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        session.rollback()
        log.error("submit batch: database unavailable: %s", exc)
        raise ServiceUnavailable(DB_DOWN) from None
    return None


def _enqueue_all(batch: Batch, planned: list[_Planned], *, session: Session, client: Redis) -> None:
    """Seed every live hash and enqueue every job in one Redis transaction; on failure, fail them all."""
    try:
        with client.pipeline(transaction=True) as pipe:
            pipe.multi()
            live_store(client).seed_many_in(
                pipe, ((row_fields(p.job), batch.tenant, batch.owner or "") for p in planned)
            )
            now = [(p.job, p.spec, p.clean) for p in planned if p.when is None]
            enqueue_many(now, connection=client, pipeline=pipe)
            for p in planned:
                if p.when is not None:
                    enqueue(p.job, p.spec, p.clean, connection=client, pipeline=pipe, run_at=p.when)
            replies = pipe.execute(raise_on_error=True)
    except redis.exceptions.RedisError as exc:
        log.error("submit batch: could not enqueue batch %s: %s", batch.batch_id, exc)
        _fail_batch_in_sql(batch, f"Redis was unavailable at submission: {exc}", session=session)
        raise ServiceUnavailable(REDIS_DOWN, batch_id=batch.batch_id) from None
    seeded = sum(1 for reply in replies[: len(planned)] if isinstance(reply, list) and reply[0] == b"ok")
    if seeded != len(planned):
        log.warning(
            "submit batch %s: %d of %d live hashes existed already",
            batch.batch_id,
            len(planned) - seeded,
            len(planned),
        )


def _fail_batch_in_sql(batch: Batch, detail: str, *, session: Session) -> None:
    """Every waiting job of the batch failed (EnqueueFailed), and its Idempotency-Key released: a
    503 is not a stored outcome, so the client's retry with the same key makes a new batch.

    In SQL alone: the Redis transaction did not run, so no job of the batch has live state.
    """
    now = utcnow()
    try:
        session.execute(
            sa.update(Job)
            .where(col(Job.batch_id) == batch.batch_id, col(Job.status).in_([s.value for s in WAITING]))
            .values(
                status=JobStatus.FAILED.value,
                error_type="EnqueueFailed",
                error_detail=detail[:2000],
                ended_at=now,
                failed_at=now,
                updated_at=now,
                seq=Job.seq + 1,
            )
        )
        session.execute(
            sa.update(Batch).where(col(Batch.batch_id) == batch.batch_id).values(idempotency_key=None)
        )
        session.commit()
    except sa.exc.SQLAlchemyError:
        session.rollback()
        log.exception("submit batch: could not mark batch %s failed after an enqueue failure", batch.batch_id)

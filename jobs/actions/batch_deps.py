"""A job that waits for a whole batch: ``depends_on`` naming a batch's id.

RQ's dependencies cannot express it (a job with 10,000 parents makes RQ check all of them each
time one ends), so such a job is stored ``deferred`` with the batch id as its one dependency and
``after_batch`` saying what it waits for: ``finished`` (every job of the batch finished; if the
batch ends otherwise the job fails as ``DependencyFailed``) or ``ended`` (every job ended, however).
RQ keeps its record parked (deferred, in no queue). The reconciler's pass
(:func:`release_batch_waiters`) hands it to its queue, or fails it, once the batch has ended.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import redis.exceptions
import sqlalchemy as sa
from redis import Redis
from sqlmodel import Session, col, select

from jobs.access.admission import admit_submission
from jobs.access.redaction import redact
from jobs.actions.submit import DB_DOWN, REDIS_DOWN, Submission, _replay, _validated, request_hash
from jobs.clock import utcnow
from jobs.errors import IllegalTransition, InvalidRequest, ServiceUnavailable
from jobs.history.models import Batch, Job
from jobs.history.store import add_job, find_by_idempotency_key
from jobs.queues.queueing import cancel_waiting, enqueue, park
from jobs.queues.requeue import enqueue_again, payload_for
from jobs.snapshot import assemble, row_fields
from jobs.state.batch_state import batch_status, get_batch, sql_tallies
from jobs.state.lifecycle import record, write_through_or_log
from jobs.state.live import live_store
from jobs.state.reads import valid_job_id
from jobs.status import JobStatus
from jobs.tasks import get_task

log = logging.getLogger(__name__)

MODES = {"all_finished": "finished", "all_ended": "ended"}
PAGE = 500


def batch_named(session: Session, *, tenant: str, depends_on: Sequence[str]) -> str | None:
    """The batch of ``tenant`` that ``depends_on`` names, if it names one (then it may name nothing else)."""
    ids = [i for i in depends_on if valid_job_id(i)]
    if not ids:
        return None
    found = session.exec(
        select(Batch.batch_id).where(col(Batch.batch_id).in_(ids), Batch.tenant == tenant)
    ).all()
    if not found:
        return None
    if len(set(depends_on)) > 1:
        raise InvalidRequest(
            "depends_on names a batch: it may name that one batch and nothing else "
            "(submit with the jobs' ids instead to wait for some of them)."
        )
    return found[0]


def submit_after_batch(
    *,
    session: Session,
    client: Redis,
    tenant: str,
    owner: str | None,
    batch_id: str,
    mode: str,
    task: str,
    payload: Any,
    queue: str | None = None,
    idempotency_key: str | None = None,
    timeout: int | None = None,
    tags: Sequence[str] = (),
    trace_id: str | None = None,
) -> Submission:
    """Accept a job that runs once the batch ``batch_id`` has ended (``mode``: all_finished or all_ended).

    A batch that already ended runs it at once, or refuses it (409) when it can never run.
    """
    if mode not in MODES:
        raise InvalidRequest(f"batch_dependency must be one of {', '.join(MODES)}, not {mode!r}.")
    after = MODES[mode]
    spec = get_task(task)
    clean, queue_name = _validated(spec, payload, queue)
    digest = request_hash(task, payload, queue, depends_on=[batch_id], batch_dependency=mode)
    if idempotency_key:
        earlier = find_by_idempotency_key(session, tenant=tenant, key=idempotency_key)
        if earlier is not None:
            return _replay(earlier, digest, client)
    batch = get_batch(session, batch_id=batch_id, tenant=tenant)
    admit_submission(session=session, client=client, tenant=tenant, owner=owner, task=task, timeout=timeout)
    verdict = _verdict(session, batch, after)
    if verdict == "fail":
        raise IllegalTransition(
            f"depends_on: batch {batch_id} ended without every job finishing, so this job could never "
            "run. Restart the batch's failed jobs first, or use batch_dependency=all_ended.",
        )
    now = utcnow()
    job = Job(
        job_id=str(uuid.uuid4()),
        tenant=tenant,
        owner=owner,
        task=spec.name,
        queue=queue_name,
        status=JobStatus.QUEUED.value if verdict == "run" else JobStatus.DEFERRED.value,
        params=redact(clean),
        max_retries=spec.retries,
        timeout_s=timeout or spec.timeout,
        tags=list(dict.fromkeys([*spec.tags, *tags])) or None,
        trace_id=trace_id,
        idempotency_key=idempotency_key,
        request_hash=digest,
        depends_on=[batch_id],
        after_batch=after,
        created_at=now,
        enqueued_at=now,
        updated_at=now,
    )
    try:
        add_job(session, job=job, data={"depends_on": [batch_id], "after_batch": after})
        session.commit()
    except sa.exc.IntegrityError:
        session.rollback()
        earlier = find_by_idempotency_key(session, tenant=tenant, key=idempotency_key or "")
        if earlier is None:
            raise
        return _replay(earlier, digest, client)
    except (sa.exc.OperationalError, sa.exc.InterfaceError):
        session.rollback()
        raise ServiceUnavailable(DB_DOWN) from None
    fields = row_fields(job)
    try:
        with client.pipeline(transaction=True) as pipe:
            pipe.multi()
            live_store(client).seed_in(pipe, fields, tenant=tenant, owner=owner or "")
            if verdict == "run":
                enqueue(job, spec, clean, connection=client, pipeline=pipe)
            else:
                park(job, spec, clean, connection=client, pipeline=pipe)
            pipe.execute()
    except redis.exceptions.RedisError as exc:
        log.error("submit after batch: could not enqueue job %s: %s", job.job_id, exc)
        _fail_in_sql(job, session, f"Redis was unavailable at submission: {exc}")
        raise ServiceUnavailable(REDIS_DOWN, job_id=job.job_id) from None
    return Submission(job_id=job.job_id, doc=assemble(fields), created=True)


def _fail_in_sql(job: Job, session: Session, detail: str) -> None:
    now = utcnow()
    try:
        session.execute(
            sa.update(Job)
            .where(col(Job.job_id) == job.job_id)
            .values(
                status=JobStatus.FAILED.value,
                error_type="EnqueueFailed",
                error_detail=detail[:2000],
                idempotency_key=None,
                ended_at=now,
                failed_at=now,
                updated_at=now,
                seq=Job.seq + 1,
            )
        )
        session.commit()
    except sa.exc.SQLAlchemyError:
        session.rollback()
        log.exception("submit after batch: could not mark job %s failed", job.job_id)


def _verdict(session: Session, batch: Batch, after: str) -> str:
    """ "wait" while the batch runs; once it ended, "run", or "fail" (all_finished and it did not)."""
    tally = sql_tallies(session, [batch.batch_id])[batch.batch_id]
    status = batch_status(tally.counts, batch.size)
    if not status.is_terminal:
        return "wait"
    if after == "finished" and status != JobStatus.FINISHED:
        return "fail"
    return "run"


def release_batch_waiters(
    client: Redis, sessions: Callable[[], AbstractContextManager[Session]]
) -> tuple[int, int]:
    """Hand the jobs whose batch has ended to their queues, or fail them (DependencyFailed);
    (released, failed). One pass of the reconciler runs this."""
    released = failed = 0
    with sessions() as session:
        rows = list(
            session.exec(
                select(Job)
                .where(Job.status == JobStatus.DEFERRED.value, col(Job.after_batch).is_not(None))
                .order_by(col(Job.created_at))
                .limit(PAGE)
            ).all()
        )
        if not rows:
            return 0, 0
        batch_ids = sorted({(row.depends_on or [""])[0] for row in rows})
        batches = {
            b.batch_id: b for b in session.exec(select(Batch).where(col(Batch.batch_id).in_(batch_ids)))
        }
        verdicts: dict[tuple[str, str], str] = {}
        for row in rows:
            batch_id = (row.depends_on or [""])[0]
            batch = batches.get(batch_id)
            key = (batch_id, row.after_batch or "finished")
            if key not in verdicts:
                verdicts[key] = "run" if batch is None else _verdict(session, batch, key[1])
            verdict = verdicts[key]
            if verdict == "run":
                released += _release(row, client, session)
            elif verdict == "fail":
                failed += _fail(row, batch_id, client, session)
    return released, failed


def _release(row: Job, client: Redis, session: Session) -> int:
    payload = payload_for(row, client)
    if payload is None:
        return _fail(
            row, (row.depends_on or [""])[0], client, session, why="its payload held secrets that are gone"
        )
    data = {"batch_ended": (row.depends_on or [""])[0]}
    result = record(
        row.job_id,
        JobStatus.QUEUED,
        event="queued",
        from_statuses=(JobStatus.DEFERRED,),
        patch={"enqueued_at": utcnow()},
        data=data,
        client=client,
    )
    if not result.applied:
        return 0
    enqueue_again(row, payload, client)
    write_through_or_log(result, session=session, event="queued", data=data)
    return 1


def _fail(row: Job, batch_id: str, client: Redis, session: Session, why: str = "") -> int:
    detail = why or f"Batch {batch_id}, which this job waits for, ended without every job finishing."
    error = {"type": "DependencyFailed", "detail": detail}
    data: dict[str, Any] = {"error": error, "batch": batch_id}
    result = record(
        row.job_id,
        JobStatus.FAILED,
        event="failed",
        from_statuses=(JobStatus.DEFERRED,),
        patch={"error": error, "ended_at": utcnow(), "eta_seconds": None},
        data=data,
        client=client,
    )
    if not result.applied:
        return 0
    cancel_waiting(row.job_id, client)
    write_through_or_log(result, session=session, event="failed", data=data)
    return 1

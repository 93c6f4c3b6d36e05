"""Putting an existing job back in a queue under its own id: for a restart, and for jobs RQ lost.

A job's RQ record may be gone (expired, or lost with Redis), so everything
needed comes from its SQL row: the task, the options, and the payload. SQL
keeps payloads redacted, so the unredacted payload is taken from RQ's record
while it exists; a payload whose secrets were redacted cannot be rebuilt, and
the caller is told so rather than running the task with ``[REDACTED]`` values.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis.exceptions
from redis import Redis

from jobs.access.redaction import REDACTED
from jobs.clock import utcnow
from jobs.history.db import SessionFactory
from jobs.history.models import Job
from jobs.history.store import statuses_of, waiting_jobs
from jobs.queues.queueing import RQ_WAITING, discard, enqueue, statuses, stored_payload
from jobs.settings import get_settings
from jobs.state.lifecycle import annotate, record, reseed_from_sql, write_through_or_log
from jobs.state.live import decode_head, heartbeat_key, read_head_in
from jobs.status import WAITING, JobStatus
from jobs.tasks import get_task, load_tasks

log = logging.getLogger(__name__)

BLOCKING = frozenset({JobStatus.FAILED, JobStatus.CANCELED})


def holds_redacted(value: Any) -> bool:
    """Whether redaction took something out (a whole value, or a secret inside a string)."""
    if isinstance(value, str):
        return REDACTED in value
    if isinstance(value, dict):
        return any(holds_redacted(v) for v in value.values())
    if isinstance(value, list):
        return any(holds_redacted(v) for v in value)
    return value == REDACTED


def payload_for(job: Job, client: Redis) -> dict[str, Any] | None:
    """The payload to run ``job`` with again, or None when its secrets were not kept anywhere."""
    payload = stored_payload(job.job_id, client)
    if payload is not None:
        return payload
    return None if holds_redacted(job.params) else dict(job.params)


@dataclass(frozen=True)
class Parents:
    """Where a job's dependencies stand: those that ended badly, and those not finished yet."""

    blocking: list[str]
    unfinished: list[str]


def dependency_ids(job: Job) -> list[str]:
    return list(job.depends_on or ([job.parent_id] if job.parent_id else []))


def parents_of(job: Job, found: dict[str, JobStatus]) -> Parents:
    """Where ``job``'s parents stand, given the SQL statuses of (at least) those parents."""
    ids = dependency_ids(job)
    blocking = [i for i in ids if found.get(i) in BLOCKING]
    unfinished = [i for i in ids if i in found and found[i] != JobStatus.FINISHED and i not in blocking]
    return Parents(blocking=blocking, unfinished=unfinished)


def enqueue_again(
    job: Job,
    payload: dict[str, Any],
    client: Redis,
    *,
    run_at: datetime | None = None,
    depends_on: list[str] | None = None,
    retries_left: int | None = None,
) -> None:
    """Replace RQ's record of ``job`` with a fresh one, queued (or scheduled, or deferred)."""
    spec = get_task(job.task)
    discard(job.job_id, client)
    for _ in range(5):
        try:
            with client.pipeline() as pipe:
                enqueue(
                    job,
                    spec,
                    payload,
                    connection=client,
                    pipeline=pipe,
                    run_at=run_at,
                    depends_on=depends_on or (),
                    retries_left=retries_left,
                )
                pipe.execute()
            return
        except redis.exceptions.WatchError:
            continue  # a parent changed while RQ looked at it: look again
    raise RuntimeError(f"could not enqueue job {job.job_id}: its parents kept changing")


def retries_left(job: Job) -> int:
    """Retries a job still has, judged from SQL (its attempt number) when RQ's count is gone."""
    return max(0, job.max_retries - (job.attempt - 1))


# --- waiting jobs RQ lost ----------------------------------------------------------------------

REQUEUE_LOCK = "cv:requeue:"
PAGE = 500


@dataclass
class LostJobs:
    """What a sweep did: jobs enqueued again, live states re-seeded, jobs that could not be rebuilt."""

    requeued: int = 0
    reseeded: int = 0
    unrecoverable: int = 0


def requeue_lost(
    client: Redis, *, sessions: SessionFactory, by: str, touched_after: datetime | None = None
) -> LostJobs:
    """Enqueue again every waiting job SQL has and RQ has no waiting record of.

    That happens when Redis lost its data (all of it, or the last writes in a
    failover), or when a process died between the SQL write and the enqueue.
    Only jobs untouched for ``reconcile_grace`` seconds are considered (a
    submission in flight is not lost), and with ``touched_after`` only those
    changed since then; oldest first, so that a parent is back before the jobs
    that depend on it. Each page and each job gets a fresh session from ``sessions``.
    """
    found = LostJobs()
    cutoff = utcnow() - timedelta(seconds=get_settings().reconcile_grace)
    after = None
    while True:
        with sessions() as session:
            page = waiting_jobs(
                session, untouched_since=cutoff, touched_after=touched_after, after=after, limit=PAGE
            )
        if not page:
            return found
        after = (page[-1].created_at, page[-1].job_id)
        ids = [row.job_id for row in page]
        rq = statuses(ids, client)
        with client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                read_head_in(pipe, job_id, ("status",))
                pipe.exists(heartbeat_key(job_id))
            replies = pipe.execute()
        for row, live_status, beating in zip(page, replies[::2], replies[1::2], strict=True):
            current = decode_head(("status",), live_status).status
            if current is not None and current not in WAITING:
                continue  # it moved on; SQL has not caught up yet
            if beating:
                continue  # a worker is running it (Redis lost the record of its start, not the job)
            if rq[row.job_id] in RQ_WAITING:
                continue
            if client.set(REQUEUE_LOCK + row.job_id, by, nx=True, ex=60):
                try:
                    _requeue(row, client, sessions=sessions, by=by, reseed=current is None, found=found)
                except redis.exceptions.ConnectionError:
                    raise  # Redis is gone again: the whole pass stops, the next one resumes
                except Exception:  # one job that cannot be rebuilt must not stop the sweep of the rest
                    log.exception("requeue: could not enqueue job %s again", row.job_id)


def _requeue(
    row: Job, client: Redis, *, sessions: SessionFactory, by: str, reseed: bool, found: LostJobs
) -> None:
    if reseed and reseed_from_sql(row.job_id, client) is not None:
        found.reseeded += 1
    payload = payload_for(row, client)
    with sessions() as session:
        parents = parents_of(row, statuses_of(session, dependency_ids(row)))
    known = row.task in load_tasks()
    if payload is None or parents.blocking or not known:
        if not known:
            error = {
                "type": "UnknownTask",
                "detail": f"Redis lost this job before it ran, and its task {row.task!r} is no longer "
                "registered in this deployment, so it cannot run again.",
            }
        elif payload is None:
            error = {
                "type": "PayloadLost",
                "detail": "Redis lost this job before it ran, and its payload held secrets, which "
                "Conveyor never stores in SQL. Submit it again.",
            }
        else:
            error = {"type": "DependencyFailed", "detail": f"Job {parents.blocking[0]} did not finish."}
        failed = record(
            row.job_id,
            JobStatus.FAILED,
            event="failed",
            from_statuses=WAITING,
            patch={"error": error, "ended_at": utcnow(), "eta_seconds": None},
            data={"error": error},
            client=client,
        )
        if failed.applied:
            with sessions() as session:
                write_through_or_log(failed, session=session, event="failed", data={"error": error})
            found.unrecoverable += 1
        return
    data = {"reason": "RQ had no waiting record of this job", "by": by}
    noted = annotate(row.job_id, event="requeued", when=WAITING, data=data, client=client)
    if not noted.applied:
        return
    run_at = row.scheduled_for if row.status == JobStatus.SCHEDULED.value else None
    enqueue_again(
        row,
        payload,
        client,
        run_at=run_at if run_at is not None and run_at > utcnow() else None,
        depends_on=parents.unfinished or None,
        retries_left=retries_left(row),
    )
    with sessions() as session:
        write_through_or_log(noted, session=session, event="requeued", data=data)
    found.requeued += 1

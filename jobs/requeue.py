"""Putting an existing job back in a queue under its own id: for a restart, and for the reconciler.

A job's RQ record may be gone (expired, or lost with Redis), so everything
needed comes from its SQL row: the task, the options, and the payload. SQL
keeps payloads redacted, so the unredacted payload is taken from RQ's record
while it exists; a payload whose secrets were redacted cannot be rebuilt, and
the caller is told so rather than running the task with ``[REDACTED]`` values.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis.exceptions
from redis import Redis

from jobs.models import Job
from jobs.queueing import discard, enqueue, stored_payload
from jobs.redaction import REDACTED
from jobs.status import JobStatus
from jobs.tasks import get_task

BLOCKING = frozenset({JobStatus.FAILED, JobStatus.CANCELED})


def holds_redacted(value: Any) -> bool:
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

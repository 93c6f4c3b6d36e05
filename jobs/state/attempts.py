"""How an attempt that did not finish ends: one decision for every place that sees it end.

The work-horse (the task raised), the worker process (its work-horse died)
and the reconciler (the whole worker died) all record the end of an attempt
here. A pending cancel wins: the job ends canceled. Otherwise the retry
policy decides between a new attempt (``scheduled`` with the next run time,
or ``queued``) and ``failed``. Every write is guarded by the attempt number
and by the job still running, so a late or repeated report changes nothing.

An attempt still running when Redis lost its data finds its job re-seeded from
SQL as waiting: `reannounce_start` records its start again, so its progress
and end are accepted instead of the job running twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from redis import Redis

from jobs.clock import isoformat, utcnow
from jobs.state.lifecycle import record
from jobs.state.live import TransitionResult, read_head
from jobs.state.redis_conn import get_redis
from jobs.status import RUNNING, WAITING, JobStatus

log = logging.getLogger(__name__)

WORKER_LOST = "WorkerLost"

Ending = Literal["retry", "failed", "canceled"]


@dataclass(frozen=True)
class AttemptEnd:
    """What was recorded: the outcome, the gate's answer, and the retry delay (seconds)."""

    outcome: Ending
    result: TransitionResult
    retry_in: int | None = None
    event: str = ""
    data: dict[str, Any] | None = None

    @property
    def applied(self) -> bool:
        return self.result.applied


def record_canceled(
    job_id: str,
    *,
    by: str | None,
    requested_at: str | None = None,
    attempt: int = 0,
    forced: bool = False,
    data: dict[str, Any] | None = None,
    client: Redis | None = None,
) -> TransitionResult:
    """Record that a running job stopped because it was canceled (by whom, asked when)."""
    return record(
        job_id,
        JobStatus.CANCELED,
        event="canceled",
        from_statuses=RUNNING,
        expect_attempt=attempt,
        patch={"ended_at": utcnow(), "eta_seconds": None},
        data=cancel_details(by=by, requested_at=requested_at, forced=forced, data=data),
        client=client,
    )


def cancel_details(
    *, by: str | None, requested_at: str | None, forced: bool, data: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The data of a `canceled` event (`canceled_by` also lands in the jobs row)."""
    details: dict[str, Any] = {"forced": forced, **(data or {})}
    if by:
        details["canceled_by"] = by
    if requested_at:
        details["requested_at"] = requested_at
    return details


def pending_cancel(job_id: str, client: Redis) -> tuple[str, str | None] | None:
    """(who, when) of a cancel requested for this running job, or None."""
    head = read_head(client, job_id, ("control", "control_by", "control_at"))
    if head.control != "cancel":
        return None
    return head.control_by or "", head.control_at


def end_failed_attempt(
    job_id: str,
    error: dict[str, str],
    *,
    attempt: int,
    retry_in: int | None,
    data: dict[str, Any] | None = None,
    client: Redis | None = None,
) -> AttemptEnd:
    """Record a failed attempt: canceled if a cancel was pending, retried if ``retry_in`` is set,
    else failed."""
    client = client or get_redis()
    cancel = pending_cancel(job_id, client)
    if cancel is not None:
        by, at = cancel
        result = record_canceled(
            job_id, by=by, requested_at=at, attempt=attempt, data={"error": error}, client=client
        )
        details = cancel_details(by=by, requested_at=at, forced=False, data={"error": error})
        return AttemptEnd("canceled", result, event="canceled", data=details)
    now = utcnow()
    if retry_in is not None:
        status = JobStatus.SCHEDULED if retry_in else JobStatus.QUEUED
        # RQ's scheduled registry keeps whole seconds (utctimetuple drops the fraction), so the
        # retry may run up to a second before now + retry_in: report the whole second it may start.
        when = (now + timedelta(seconds=retry_in)).replace(microsecond=0) if retry_in else now
        details = {**(data or {}), "error": error, "scheduled_for": isoformat(when), "retry_in_s": retry_in}
        result = record(
            job_id,
            status,
            event="retry",
            new_attempt=True,
            from_statuses=RUNNING,
            patch={"error": error, "enqueued_at": when, "eta_seconds": None},
            expect_attempt=attempt,
            data=details,
            client=client,
        )
        return AttemptEnd("retry", result, retry_in, event="retry", data=details)
    details = {**(data or {}), "error": error}
    result = record(
        job_id,
        JobStatus.FAILED,
        event="failed",
        from_statuses=RUNNING,
        patch={"error": error, "ended_at": now, "eta_seconds": None},
        expect_attempt=attempt,
        data=details,
        client=client,
    )
    return AttemptEnd("failed", result, event="failed", data=details)


def lost_our_start(result: TransitionResult) -> bool:
    """A running attempt's write was refused because its job looks waiting: Redis lost its data
    while the attempt ran, and the live state was re-seeded from SQL, which never heard of the start."""
    return result.outcome == "refused" and result.current_status in WAITING


def reannounce_start(
    job_id: str, attempt: int, started_at: datetime, *, worker: str, client: Redis | None = None
) -> bool:
    """Record this attempt's start again after Redis lost it, so that its progress and its end are
    accepted rather than the job being run a second time.

    The gate takes it only while the job still waits with this very attempt: had anything else
    moved it meanwhile (a cancel, a requeue as a new attempt, another worker's start) it refuses,
    and the attempt stands down as before. The loss sweep leaves the job alone meanwhile: its
    worker keeps the heartbeat key alive (`ConveyorWorker.maintain_heartbeats`).
    """
    again = record(
        job_id,
        JobStatus.STARTED,
        event="started",
        from_statuses=WAITING,
        expect_attempt=attempt,
        patch={"started_at": started_at, "ended_at": None, "error": None},
        private={"worker": worker},
        data={"worker": worker, "reannounced": "Redis lost the record of this start"},
        client=client,
    )
    if again.applied:
        log.warning("job %s: Redis lost the record of its start; recorded it again", job_id)
    return again.applied

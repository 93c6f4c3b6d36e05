"""Steering jobs: cancel, pause, resume and restart, as the API, the CLI and the client ask.

Every action passes the gate (`jobs.state.lifecycle`) and is written through to
SQL, so the history shows who asked, and when, at once. A job that is waiting
changes at once. A running job is asked: the request is stored with the live
state and the work-horse obeys at its next `progress.update()` or
`progress.checkpoint()`; a cancel it has not obeyed within ``cancel_grace``
seconds is enforced by the reconciler with RQ's stop-job command.

An action that makes no sense for the job's status raises `IllegalTransition`
(409) saying what the status is and which actions are allowed.

Each action takes the SQL ``session`` and the Redis ``client`` it works with as keyword
arguments (a route's dependencies, the CLI's entry point), so a decision can be tested
with a session and a client in hand and no server.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from redis import Redis
from sqlmodel import Session

from jobs.clock import isoformat, utcnow
from jobs.errors import IllegalTransition, JobNotFound
from jobs.history.store import get_job, statuses_of
from jobs.queues.queueing import cancel_waiting
from jobs.queues.requeue import BLOCKING, enqueue_again, parents_of, payload_for
from jobs.settings import get_settings
from jobs.state.lifecycle import annotate, record, write_through
from jobs.state.live import CONTROL, CONTROL_AT, CONTROL_BY, CONTROL_DEADLINE, TransitionResult
from jobs.state.reads import JobState, state_for
from jobs.status import LIVE, NEW_ATTEMPT_FROM, RUNNING, TRANSITIONS, WAITING, JobStatus
from jobs.tasks import get_task

S = JobStatus


@dataclass(frozen=True)
class ControlOutcome:
    """The job's snapshot after the action; ``done`` False means it was asked and takes effect shortly."""

    doc: bytes
    done: bool


# What each action asks for, and of which jobs: cancel ends any live job, pause and resume steer
# a running attempt. An action is offered when `TRANSITIONS` lets its status follow the job's.
_ACTIONS: dict[str, tuple[JobStatus, frozenset[JobStatus]]] = {
    "cancel": (S.CANCELED, LIVE),
    "pause": (S.PAUSED, RUNNING),
    "resume": (S.STARTED, RUNNING),
}


def allowed_actions(status: JobStatus, control: str | None = None) -> list[str]:
    """What may be asked of a job in ``status`` with a pending ``control`` request.

    Derived from the status table: a pending cancel leaves only cancel; a pending pause turns
    pause into resume (withdrawing it); an ended job that may open a new attempt can be restarted.
    """
    actions = [
        action
        for action, (target, of) in _ACTIONS.items()
        if status in of and target != status and target in TRANSITIONS[status]
    ]
    if control == "cancel" and status in RUNNING:
        return [action for action in actions if action == "cancel"]
    if control == "pause" and "pause" in actions:
        actions[actions.index("pause")] = "resume"
    if status.is_terminal and status in NEW_ATTEMPT_FROM:
        actions.append("restart")
    return actions


def _refuse(job_id: str, action: str, current: JobState, why: str) -> IllegalTransition:
    allowed = allowed_actions(current.status, current.control)
    return IllegalTransition(
        f"Cannot {action} job {job_id}: it is {current.status.value}{why}. "
        f"Allowed now: {', '.join(allowed) if allowed else 'nothing (it has finished)'}.",
        status=current.status.value,
        allowed_actions=allowed,
    )


def _current(job_id: str, tenant: str | None, *, session: Session, client: Redis) -> JobState:
    """The job's status and pending request: Redis first, SQL when Redis no longer has it."""
    return state_for(job_id, tenant, client=client, session=session)


def _applied(result: TransitionResult, *, session: Session, event: str, data: dict[str, Any]) -> bytes:
    write_through(result, session=session, event=event, data=data)
    assert result.doc is not None
    return result.doc


def cancel_job(
    *, session: Session, client: Redis, job_id: str, tenant: str | None, by: str, reason: str | None = None
) -> ControlOutcome:
    """Cancel a job: at once when it waits; a running one is asked to stop (and is stopped by force
    once the grace period is over)."""
    data: dict[str, Any]
    for _ in range(3):  # the job may move while we act; look again
        current = _current(job_id, tenant, session=session, client=client)
        if current.status in WAITING:
            data = {"canceled_by": by, "reason": reason} if reason else {"canceled_by": by}
            result = record(
                job_id,
                S.CANCELED,
                event="canceled",
                from_statuses=WAITING,
                patch={"ended_at": utcnow(), "eta_seconds": None},
                data=data,
                client=client,
            )
            if result.applied:
                cancel_waiting(job_id, client)
                return ControlOutcome(
                    _applied(result, session=session, event="canceled", data=data), done=True
                )
            continue
        if current.status in RUNNING:
            if current.control == "cancel":
                return ControlOutcome(current.doc, done=False)  # already asked; the grace runs from then
            grace = get_settings().cancel_grace
            now = utcnow()
            data = {"requested_by": by, "grace_s": grace}
            if reason:
                data["reason"] = reason
            result = annotate(
                job_id,
                event="cancel_requested",
                when=RUNNING,
                private={
                    CONTROL: "cancel",
                    CONTROL_BY: by,
                    CONTROL_AT: isoformat(now) or "",
                    CONTROL_DEADLINE: str(time.time() + grace),
                },
                data=data,
                client=client,
            )
            if result.applied:
                outcome = _applied(result, session=session, event="cancel_requested", data=data)
                return ControlOutcome(outcome, done=False)
            continue
        raise _refuse(job_id, "cancel", current, "")
    raise IllegalTransition(f"Job {job_id} kept changing while it was being canceled; try again.")


def pause_job(*, session: Session, client: Redis, job_id: str, tenant: str | None, by: str) -> ControlOutcome:
    """Ask a running job to hold at its next checkpoint."""
    current = _current(job_id, tenant, session=session, client=client)
    if current.status != S.STARTED or current.control == "cancel":
        why = " and a cancel is pending" if current.control == "cancel" else ""
        raise _refuse(job_id, "pause", current, why)
    if current.control == "pause":
        return ControlOutcome(current.doc, done=False)
    data = {"requested_by": by}
    result = annotate(
        job_id,
        event="pause_requested",
        when=(S.STARTED,),
        private={CONTROL: "pause", CONTROL_BY: by, CONTROL_AT: isoformat(utcnow()) or ""},
        data=data,
        client=client,
    )
    if not result.applied:
        raise _refuse(job_id, "pause", _current(job_id, tenant, session=session, client=client), "")
    return ControlOutcome(_applied(result, session=session, event="pause_requested", data=data), done=False)


def resume_job(
    *, session: Session, client: Redis, job_id: str, tenant: str | None, by: str
) -> ControlOutcome:
    """Let a paused job continue (or withdraw a pause it has not reached yet)."""
    current = _current(job_id, tenant, session=session, client=client)
    paused = current.status == S.PAUSED and current.control != "cancel"
    withdrawing = current.status == S.STARTED and current.control == "pause"
    if not (paused or withdrawing):
        why = " and a cancel is pending" if current.control == "cancel" else ""
        raise _refuse(job_id, "resume", current, why)
    data = {"requested_by": by}
    result = annotate(
        job_id,
        event="resume_requested",
        when=(current.status,),
        private={CONTROL: "", CONTROL_BY: by, CONTROL_AT: isoformat(utcnow()) or ""},
        data=data,
        client=client,
    )
    if not result.applied:
        raise _refuse(job_id, "resume", _current(job_id, tenant, session=session, client=client), "")
    return ControlOutcome(
        _applied(result, session=session, event="resume_requested", data=data), done=withdrawing
    )


def restart_job(
    *, session: Session, client: Redis, job_id: str, tenant: str | None, by: str, reason: str | None = None
) -> ControlOutcome:
    """Run a failed or canceled job again under the same id, as attempt + 1."""
    current = _current(job_id, tenant, session=session, client=client)
    if current.status not in (S.FAILED, S.CANCELED):
        why = "; submit a new job to run it again" if current.status == S.FINISHED else ""
        raise _refuse(job_id, "restart", current, why)
    row = get_job(session, job_id=job_id, tenant=tenant)
    if row is None:
        raise JobNotFound(job_id)
    parents = parents_of(row, statuses_of(session, row.depends_on or []))
    if parents.blocking:
        raise IllegalTransition(
            f"Cannot restart job {job_id}: job {parents.blocking[0]}, which it depends on, is "
            f"{'/'.join(sorted(s.value for s in BLOCKING))}. Restart that job first.",
            status=current.status.value,
            allowed_actions=["restart"],
        )
    get_task(row.task)  # the task must still exist (404 names the known ones)
    payload = payload_for(row, client)
    if payload is None:
        raise IllegalTransition(
            f"Cannot restart job {job_id}: its payload held secrets, which are not kept once RQ's "
            "record of the job expires. Submit it again.",
            status=current.status.value,
            allowed_actions=[],
        )
    now = utcnow()
    data = {"restarted_by": by, "canceled_by": None, **({"reason": reason} if reason else {})}
    result = record(
        job_id,
        S.DEFERRED if parents.unfinished else S.QUEUED,
        event="restarted",
        new_attempt=True,
        from_statuses=(S.FAILED, S.CANCELED),
        patch={
            "progress": None,
            "message": None,
            "result": None,
            "error": None,
            "started_at": None,
            "ended_at": None,
            "enqueued_at": now,
            "eta_seconds": None,
        },
        data=data,
        client=client,
    )
    if not result.applied:
        raise _refuse(job_id, "restart", _current(job_id, tenant, session=session, client=client), "")
    enqueue_again(row, payload, client, depends_on=parents.unfinished or None)
    return ControlOutcome(_applied(result, session=session, event="restarted", data=data), done=True)

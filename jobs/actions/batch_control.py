"""Steering a whole batch: cancel every job not yet ended, restart its failed and canceled jobs.

Each job goes through the same control path as a job steered alone (jobs/actions/control.py), so the
status machine, the journal and the workers see nothing new; a job that moved meanwhile (ended
before its cancel, restarted twice) is skipped and counted, not an error for the whole batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from redis import Redis
from sqlmodel import Session

from jobs.actions.control import cancel_job, restart_job
from jobs.errors import ConveyorError
from jobs.state.batch_state import TERMINAL_VALUES, get_batch, read_members
from jobs.status import JobStatus

log = logging.getLogger(__name__)

RESTARTABLE = frozenset({JobStatus.FAILED.value, JobStatus.CANCELED.value})


@dataclass(frozen=True)
class BatchAction:
    """How many jobs an action reached, and how many it skipped (they had moved meanwhile)."""

    batch_id: str
    applied: int
    skipped: int


def cancel_batch(
    *, session: Session, client: Redis, batch_id: str, tenant: str | None, by: str, reason: str | None = None
) -> BatchAction:
    """Cancel every job of the batch that has not ended (a running one is asked to stop)."""
    get_batch(session, batch_id=batch_id, tenant=tenant)
    members = read_members(session, client, batch_id)
    targets = [job_id for job_id, m in members.items() if m.status not in TERMINAL_VALUES]
    applied = skipped = 0
    for job_id in targets:
        try:
            cancel_job(session=session, client=client, job_id=job_id, tenant=tenant, by=by, reason=reason)
            applied += 1
        except ConveyorError as exc:  # it ended meanwhile: nothing to cancel
            log.info("cancel batch %s: job %s skipped: %s", batch_id, job_id, exc.message)
            skipped += 1
    return BatchAction(batch_id, applied, skipped)


def restart_batch(
    *, session: Session, client: Redis, batch_id: str, tenant: str | None, by: str, reason: str | None = None
) -> BatchAction:
    """Run the batch's failed and canceled jobs again (each as its next attempt, under its id)."""
    get_batch(session, batch_id=batch_id, tenant=tenant)
    members = read_members(session, client, batch_id)
    targets = [job_id for job_id, m in members.items() if m.status in RESTARTABLE]
    applied = skipped = 0
    for job_id in targets:
        try:
            restart_job(session=session, client=client, job_id=job_id, tenant=tenant, by=by, reason=reason)
            applied += 1
        except ConveyorError as exc:
            log.info("restart batch %s: job %s skipped: %s", batch_id, job_id, exc.message)
            skipped += 1
    return BatchAction(batch_id, applied, skipped)

"""Changing a job's state: the single entry point for the worker, the API and the reconciler.

A change is accepted (or refused) by the live store in Redis, which journals
it for SQL. When Redis has lost a job's live state, it is seeded again from
SQL first, so a change is never lost for want of a snapshot. The SQL side is
reached through `jobs.lazy`: the worker's processes change jobs through here and
load no SQL library unless Redis lost one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from redis import Redis

from jobs import lazy
from jobs.clock import utcnow
from jobs.snapshot import row_fields
from jobs.state.live import TransitionResult, live_store
from jobs.state.redis_conn import get_redis
from jobs.status import JobStatus

if TYPE_CHECKING:
    from sqlmodel import Session

log = logging.getLogger(__name__)


def reseed_from_sql(job_id: str, client: Redis | None = None) -> TransitionResult | None:
    """Recreate a job's live state from its SQL row; None when SQL has no such job.

    It opens its own short session: the gate runs in work-horses too, which hold none (they
    never touch SQL but here, when Redis has lost the job they are changing).
    """
    with lazy.session_scope() as session:  # SQL only here: the worker's processes load it on need
        job = lazy.get_job(session, job_id=job_id)
    if job is None:
        return None
    return live_store(client or get_redis()).seed(row_fields(job), tenant=job.tenant, owner=job.owner)


def record(
    job_id: str,
    to: JobStatus,
    *,
    event: str,
    patch: dict[str, Any] | None = None,
    private: dict[str, str] | None = None,
    new_attempt: bool = False,
    from_statuses: Iterable[JobStatus] | None = None,
    expect_attempt: int = 0,
    journal: bool = True,
    data: dict[str, Any] | None = None,
    client: Redis | None = None,
) -> TransitionResult:
    """Apply a state change through the status machine; refusals are logged, not raised.

    A terminal change always carries `ended_at` (now, unless the caller gives it):
    history and analytics measure from it.
    """
    if to.is_terminal and "ended_at" not in (patch or {}):
        patch = {**(patch or {}), "ended_at": utcnow(), "eta_seconds": None}
    store = live_store(client or get_redis())
    kwargs: dict[str, Any] = {
        "event": event,
        "patch": patch,
        "private": private,
        "new_attempt": new_attempt,
        "from_statuses": from_statuses,
        "expect_attempt": expect_attempt,
        "journal": journal,
        "data": data,
    }
    result = store.transition(job_id, to, **kwargs)
    if result.outcome == "missing" and reseed_from_sql(job_id, store.client) is not None:
        result = store.transition(job_id, to, **kwargs)
    if result.outcome in ("refused", "stale", "missing"):
        log.warning(
            "refused %s -> %s for job %s (%s; current %s)",
            event,
            to.value,
            job_id,
            result.outcome,
            result.current_status,
        )
    return result


def annotate(
    job_id: str,
    *,
    event: str,
    when: Iterable[JobStatus],
    patch: dict[str, Any] | None = None,
    private: dict[str, str] | None = None,
    expect_attempt: int = 0,
    data: dict[str, Any] | None = None,
    client: Redis | None = None,
) -> TransitionResult:
    """Record an event that keeps the job's status (a control request, a requeue).

    It passes the same gate as a change: it applies only while the job is in
    one of ``when``, bumps ``seq``, is published and journaled into the history.
    """
    store = live_store(client or get_redis())
    kwargs: dict[str, Any] = {
        "event": event,
        "patch": patch,
        "private": private,
        "from_statuses": tuple(when),
        "expect_attempt": expect_attempt,
        "data": data,
    }
    result = store.transition(job_id, None, **kwargs)
    if result.outcome == "missing" and reseed_from_sql(job_id, store.client) is not None:
        result = store.transition(job_id, None, **kwargs)
    return result


def write_through_or_log(
    result: TransitionResult, *, session: Session, event: str, data: dict[str, Any] | None = None
) -> None:
    """`write_through`, for background callers: a failure is logged, as the recorder applies it later."""
    try:
        write_through(result, session=session, event=event, data=data)
    except Exception:
        session.rollback()
        log.exception(
            "could not write job %s's %s through to SQL", result.snapshot and result.snapshot.job_id, event
        )


def write_through(
    result: TransitionResult, *, session: Session, event: str, data: dict[str, Any] | None = None
) -> None:
    """Apply an accepted change to SQL now and commit, so the caller reads its own write there.

    The recorder replays the same journal entry later; that replay is a no-op.
    """
    if not result.applied or result.doc is None:
        return
    entry = lazy.JournalEntry(event=event, doc=json.loads(result.doc), data=data or {})
    lazy.apply_journal(session, [entry])
    session.commit()

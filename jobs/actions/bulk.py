"""Bulk actions by filter: cancel, restart or delete every job that matches, after a dry-run count.

The jobs are found in SQL (the history), one keyset page at a time, and each is acted on
through the same function a single request uses (`jobs.actions.control`,
`jobs.history.retention.delete_ended`),
so the gate, the history and the tenant checks are the ones every channel has. A job whose
status no longer allows the action when its turn comes (it ended, someone else restarted it)
is skipped and counted, not an error. At most ``limit`` jobs are acted on per call; the answer
says how many matched, so a caller repeats until nothing is left.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from redis import Redis
from sqlmodel import Session, col, select

from jobs.actions.control import cancel_job, restart_job
from jobs.errors import ConveyorError, InvalidRequest
from jobs.history.models import Job
from jobs.history.retention import delete_ended
from jobs.history.store import _has_tag
from jobs.status import LIVE, TERMINAL, JobStatus

Action = Literal["cancel", "restart", "delete"]
ACTIONS: tuple[Action, ...] = ("cancel", "restart", "delete")
PAGE = 200
MAX_ERRORS = 20

# Which statuses each action applies to: a filter's statuses narrow these, never widen them.
_APPLIES_TO: dict[str, frozenset[JobStatus]] = {
    "cancel": frozenset(LIVE),
    "restart": frozenset({JobStatus.FAILED, JobStatus.CANCELED}),
    "delete": frozenset(TERMINAL),
}


@dataclass(frozen=True)
class JobFilter:
    """What a bulk action applies to; every field given narrows it."""

    task: str | None = None
    queue: str | None = None
    status: Sequence[JobStatus] = ()
    tag: str | None = None
    error_signature: str | None = None
    error_type: str | None = None
    batch_id: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    ended_after: datetime | None = None
    ended_before: datetime | None = None


@dataclass
class BulkOutcome:
    action: str
    dry_run: bool
    matched: int
    done: int = 0
    skipped: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)


def _statuses(action: str, wanted: Sequence[JobStatus]) -> list[str]:
    applies = _APPLIES_TO[action]
    if wanted:
        chosen = [s for s in wanted if s in applies]
        if not chosen:
            raise InvalidRequest(
                f"`{action}` applies to {', '.join(sorted(s.value for s in applies))} jobs; "
                f"the filter asks for {', '.join(s.value for s in wanted)} only."
            )
        return sorted(s.value for s in chosen)
    return sorted(s.value for s in applies)


def _where(session: Session, action: str, spec: JobFilter, tenant: str | None) -> list[Any]:
    clauses: list[Any] = [col(Job.status).in_(_statuses(action, spec.status))]
    if tenant is not None:
        clauses.append(Job.tenant == tenant)
    for name in ("task", "queue", "error_signature", "error_type", "batch_id"):
        value = getattr(spec, name)
        if value is not None:
            clauses.append(getattr(Job, name) == value)
    if spec.tag is not None:
        clauses.append(_has_tag(session, spec.tag))
    for name, column, op in (
        ("created_after", Job.created_at, "ge"),
        ("created_before", Job.created_at, "lt"),
        ("ended_after", Job.ended_at, "ge"),
        ("ended_before", Job.ended_at, "lt"),
    ):
        value = getattr(spec, name)
        if value is not None:
            clauses.append(col(column) >= value if op == "ge" else col(column) < value)
    return clauses


def count_matching(session: Session, *, action: str, spec: JobFilter, tenant: str | None) -> int:
    query = sa.select(sa.func.count()).select_from(Job).where(*_where(session, action, spec, tenant))
    return int(session.execute(query).scalar_one())


def bulk_act(
    *,
    session: Session,
    client: Redis,
    action: str,
    spec: JobFilter,
    tenant: str | None,
    by: str,
    dry_run: bool,
    limit: int = 1000,
    reason: str | None = None,
) -> BulkOutcome:
    """Count (``dry_run``) or act on up to ``limit`` matching jobs of ``tenant`` (None: all)."""
    if action not in ACTIONS:
        raise InvalidRequest(f"Unknown bulk action {action!r}; use one of {', '.join(ACTIONS)}.")
    matched = count_matching(session, action=action, spec=spec, tenant=tenant)
    outcome = BulkOutcome(action=action, dry_run=dry_run, matched=matched)
    session.rollback()
    if dry_run or not matched:
        return outcome
    where = _where(session, action, spec, tenant)
    after: tuple[datetime, str] | None = None
    seen = 0
    while seen < limit:
        query = select(Job.created_at, Job.job_id).where(*where)
        if after is not None:
            query = query.where(
                sa.or_(
                    col(Job.created_at) > after[0],
                    sa.and_(col(Job.created_at) == after[0], col(Job.job_id) > after[1]),
                )
            )
        page = session.exec(
            query.order_by(col(Job.created_at), col(Job.job_id)).limit(min(PAGE, limit - seen))
        ).all()
        session.rollback()
        if not page:
            break
        after = (page[-1][0], page[-1][1])
        ids = [job_id for _, job_id in page]
        seen += len(ids)
        if action == "delete":
            deleted = delete_ended(session=session, client=client, job_ids=ids)
            outcome.done += len(deleted)
            outcome.skipped += len(ids) - len(deleted)
            outcome.job_ids += deleted
            continue
        for job_id in ids:
            _one(session, client, action, job_id, tenant, by, reason, outcome)
    return outcome


def _one(
    session: Session,
    client: Redis,
    action: str,
    job_id: str,
    tenant: str | None,
    by: str,
    reason: str | None,
    outcome: BulkOutcome,
) -> None:
    act = cancel_job if action == "cancel" else restart_job
    try:
        act(session=session, client=client, job_id=job_id, tenant=tenant, by=by, reason=reason)
    except ConveyorError as exc:  # moved on meanwhile, or cannot be restarted: skipped, with why
        session.rollback()
        outcome.skipped += 1
        if len(outcome.errors) < MAX_ERRORS:
            outcome.errors.append({"job_id": job_id, "detail": exc.message})
        return
    outcome.done += 1
    outcome.job_ids.append(job_id)

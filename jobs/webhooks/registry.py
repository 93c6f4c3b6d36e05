"""Webhook endpoints in SQL: register (the secret is returned once), list, find, delete.

Who reaches which endpoint follows `jobs.access.auth.job_scope`: an admin, its own tenant's; an
operator, every tenant's, and only an operator registers an endpoint for all tenants
(``tenant=None``). Members manage none (the API refuses them with 403).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from sqlmodel import Session, col, select

from jobs.clock import utcnow
from jobs.errors import InvalidRequest
from jobs.history.models import Webhook
from jobs.settings import get_settings
from jobs.webhooks.destinations import check_destination
from jobs.webhooks.signing import new_secret

JOB_EVENTS = ("job.finished", "job.failed", "job.canceled", "job.progress")
# Accepted now and delivered once batches exist: their module calls `outbox.enqueue_batch_completed`.
BATCH_EVENTS = ("batch.completed",)
EVENTS = JOB_EVENTS + BATCH_EVENTS
DEFAULT_PROGRESS_INTERVAL = 5.0
MAX_PER_TENANT = 50


def _events(events: Sequence[str]) -> list[str]:
    unknown = sorted(set(events) - set(EVENTS))
    if unknown or not events:
        raise InvalidRequest(
            f"Unknown webhook events {unknown}; choose from {list(EVENTS)}."
            if unknown
            else f"Name at least one event: {list(EVENTS)}."
        )
    return [event for event in EVENTS if event in events]


def create_webhook(
    session: Session,
    *,
    tenant: str | None,
    url: str,
    events: Sequence[str],
    by: str,
    description: str = "",
    progress_interval: float | None = None,
) -> tuple[Webhook, str]:
    """Check and stage an endpoint; returns it with its secret (shown to the caller once)."""
    settings = get_settings()
    chosen = _events(events)
    if "job.progress" in chosen:
        floor = settings.webhook_progress_min_interval
        progress_interval = DEFAULT_PROGRESS_INTERVAL if progress_interval is None else progress_interval
        if progress_interval < floor:
            raise InvalidRequest(
                f"progress_interval must be at least {floor} s (CONVEYOR_WEBHOOK_PROGRESS_MIN_INTERVAL); "
                f"got {progress_interval}."
            )
    elif progress_interval is not None:
        raise InvalidRequest("progress_interval applies to the job.progress event only; subscribe to it too.")
    check_destination(url, settings)
    count = len(list_webhooks(session, scope=tenant, own_only=True))
    if count >= MAX_PER_TENANT:
        raise InvalidRequest(f"This tenant has {count} webhooks, the most it may have; delete one first.")
    secret = new_secret()
    row = Webhook(
        id=f"wh_{secrets.token_hex(8)}",
        tenant=tenant,
        url=url.strip(),
        events=chosen,
        progress_interval=progress_interval,
        description=description,
        secret=secret,
        created_by=by,
        created_at=utcnow(),
    )
    session.add(row)
    return row, secret


def list_webhooks(session: Session, *, scope: str | None, own_only: bool = False) -> list[Webhook]:
    """The endpoints a caller with ``scope`` reaches (``None``: all); ``own_only`` with ``None``:
    the all-tenant ones alone (for counting an operator's)."""
    query = select(Webhook).order_by(col(Webhook.created_at), col(Webhook.id))
    if scope is not None:
        query = query.where(Webhook.tenant == scope)
    elif own_only:
        query = query.where(col(Webhook.tenant).is_(None))
    return list(session.exec(query).all())


def find_webhook(session: Session, *, webhook_id: str, scope: str | None) -> Webhook | None:
    row = session.get(Webhook, webhook_id)
    if row is None or (scope is not None and row.tenant != scope):
        return None
    return row


def delete_webhook(session: Session, *, webhook_id: str, scope: str | None) -> bool:
    """Delete an endpoint and its deliveries (pending ones are never sent)."""
    row = find_webhook(session, webhook_id=webhook_id, scope=scope)
    if row is None:
        return False
    from jobs.webhooks.outbox import forget_deliveries

    forget_deliveries(session, webhook_id=webhook_id)
    session.delete(row)
    return True

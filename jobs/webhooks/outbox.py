"""The outbox: deliveries written in the same transaction as the job change they announce.

`jobs.history.store.apply_journal` (every path that records a job's change in SQL: the recorders,
the worker's end writer, the API's write-through) calls :func:`enqueue_for_entries`, so a
delivery exists if and only if SQL holds the end, and nothing is sent from the job's path:
the senders (`jobs.webhooks.sender`) pick the rows up. Replays of the same change are no-ops
(one row per endpoint and ``dedupe_key``: a job's end once per attempt, its progress once
per ``progress_interval`` of the job's clock).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from jobs.access.redaction import redact
from jobs.clock import isoformat, utcnow
from jobs.errors import InvalidRequest
from jobs.history.models import Webhook, WebhookAttempt, WebhookDelivery
from jobs.settings import get_settings
from jobs.snapshot import PUBLIC_FIELDS
from jobs.status import JobStatus

if TYPE_CHECKING:
    from jobs.history.store import JournalEntry

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
_ENDS = {
    JobStatus.FINISHED: "job.finished",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELED: "job.canceled",
}

_HOOKS: sa.Table = Webhook.__table__  # type: ignore[attr-defined]
_DELIVERIES: sa.Table = WebhookDelivery.__table__  # type: ignore[attr-defined]
_ATTEMPTS: sa.Table = WebhookAttempt.__table__  # type: ignore[attr-defined]
_ACTIVE_HOOKS = sa.select(_HOOKS.c.id, _HOOKS.c.tenant, _HOOKS.c.events, _HOOKS.c.progress_interval)


def new_message_id() -> str:
    return f"msg_{secrets.token_hex(12)}"


def event_of(entry: JournalEntry) -> str | None:
    """The webhook event a journal entry stands for, if any."""
    status = JobStatus(entry.doc["status"])
    if entry.event in ("finished", "failed", "canceled") and status in _ENDS:
        return _ENDS[status]
    if entry.event == "progress" and status == JobStatus.STARTED:
        return "job.progress"
    return None


def message_body(event: str, data: Mapping[str, Any], *, at: datetime) -> str:
    """The JSON that is signed and sent: the Standard Webhooks envelope around ``data``."""
    return json.dumps({"type": event, "timestamp": isoformat(at), "data": data}, separators=(",", ":"))


def public_snapshot(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The job's snapshot as clients see it, redacted once more on its way out."""
    snapshot: dict[str, Any] = redact({name: doc.get(name) for name in PUBLIC_FIELDS})
    return snapshot


def _insert(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    conn.execute(insert(_DELIVERIES).on_conflict_do_nothing(), rows)


def _delivery(
    hook_id: str, event: str, subject: str, dedupe: str, body: str, now: datetime, give_up: datetime
) -> dict[str, Any]:
    return {
        "id": new_message_id(),
        "webhook_id": hook_id,
        "event": event,
        "subject": subject,
        "dedupe_key": dedupe,
        "body": body,
        "status": PENDING,
        "attempts": 0,
        "created_at": now,
        "next_attempt_at": now,
        "give_up_at": give_up,
    }


def _last_progress(conn: sa.Connection, job_ids: set[str]) -> dict[tuple[str, str], datetime]:
    if not job_ids:
        return {}
    query = (
        sa.select(_DELIVERIES.c.webhook_id, _DELIVERIES.c.subject, sa.func.max(_DELIVERIES.c.created_at))
        .where(_DELIVERIES.c.event == "job.progress", _DELIVERIES.c.subject.in_(sorted(job_ids)))
        .group_by(_DELIVERIES.c.webhook_id, _DELIVERIES.c.subject)
    )
    found: dict[tuple[str, str], datetime] = {}
    for hook_id, subject, at in conn.execute(query):
        found[(hook_id, subject)] = at  # the column's type gives it back UTC-aware
    return found


def enqueue_for_entries(
    conn: sa.Connection, entries: Iterable[JournalEntry], tenants: Mapping[str, str]
) -> int:
    """Write the deliveries that ``entries`` (changes being applied; ``tenants`` maps their jobs)
    call for; returns how many rows were offered (replays are skipped by the database)."""
    ends: list[tuple[JournalEntry, str]] = []
    progress: dict[str, JournalEntry] = {}
    for entry in entries:
        event = event_of(entry)
        if event == "job.progress":
            if entry.job_id not in progress or entry.seq > progress[entry.job_id].seq:
                progress[entry.job_id] = entry
        elif event is not None:
            ends.append((entry, event))
    for entry, _ in ends:
        progress.pop(entry.job_id, None)  # the end says more than the progress before it
    if not ends and not progress:
        return 0
    hooks = conn.execute(_ACTIVE_HOOKS).all()
    if not hooks:
        return 0
    now = utcnow()
    give_up = now + timedelta(seconds=get_settings().webhook_retry_for)
    last = _last_progress(conn, set(progress)) if any("job.progress" in h.events for h in hooks) else {}
    rows: list[dict[str, Any]] = []
    wanted = [*ends, *((entry, "job.progress") for entry in progress.values())]
    for entry, event in wanted:
        tenant = tenants.get(entry.job_id)
        body: str | None = None
        at = datetime.fromisoformat(str(entry.doc["updated_at"]).replace("Z", "+00:00"))
        for hook in hooks:
            if event not in hook.events or (hook.tenant is not None and hook.tenant != tenant):
                continue
            if event == "job.progress":
                previous = last.get((hook.id, entry.job_id))
                interval = hook.progress_interval or 1.0
                if previous is not None and (now - previous).total_seconds() < interval:
                    continue
                # One per interval of the job's own clock, whoever applies it: the recorders and
                # the end writer may apply a job's progress in concurrent transactions.
                dedupe = f"{event}:{entry.job_id}:{int(at.timestamp() // interval)}"
            else:
                dedupe = f"{event}:{entry.job_id}:{entry.doc.get('attempt') or 1}"
            if body is None:
                body = message_body(event, public_snapshot(entry.doc), at=at)
            rows.append(_delivery(hook.id, event, entry.job_id, dedupe, body, now, give_up))
    if rows:
        _insert(conn, rows)
    return len(rows)


def enqueue_batch_completed(session: Session, *, tenant: str, batch_id: str, data: Mapping[str, Any]) -> int:
    """The hook for batches: call it in the transaction that records a batch's completion.

    ``data`` is the batch's public (redacted) summary. One delivery per endpoint and batch.
    """
    hooks = session.exec(select(Webhook)).all()
    now = utcnow()
    give_up = now + timedelta(seconds=get_settings().webhook_retry_for)
    body = message_body("batch.completed", redact(dict(data)), at=now)
    rows = [
        _delivery(hook.id, "batch.completed", batch_id, f"batch.completed:{batch_id}", body, now, give_up)
        for hook in hooks
        if "batch.completed" in hook.events and hook.tenant in (None, tenant)
    ]
    if rows:
        _insert(session.connection(), rows)
    return len(rows)


# --- reading and re-sending (the API) ---------------------------------------------------------


def list_deliveries(
    session: Session, *, webhook_id: str, status: str | None = None, limit: int = 50
) -> list[WebhookDelivery]:
    if status is not None and status not in (PENDING, DELIVERED, FAILED):
        raise InvalidRequest(f"`status` must be one of pending, delivered, failed; got {status!r}.")
    query = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    query = query.order_by(col(WebhookDelivery.created_at).desc(), col(WebhookDelivery.id)).limit(limit)
    return list(session.exec(query).all())


def attempts_of(session: Session, delivery_ids: list[str]) -> dict[str, list[WebhookAttempt]]:
    found: dict[str, list[WebhookAttempt]] = {delivery_id: [] for delivery_id in delivery_ids}
    if not delivery_ids:
        return found
    query = (
        select(WebhookAttempt)
        .where(col(WebhookAttempt.delivery_id).in_(delivery_ids))
        .order_by(col(WebhookAttempt.delivery_id), col(WebhookAttempt.attempt))
    )
    for attempt in session.exec(query).all():
        found[attempt.delivery_id].append(attempt)
    return found


def resend(session: Session, *, webhook_id: str, delivery_id: str) -> WebhookDelivery | None:
    """Send a delivery again (same `webhook-id`, a fresh retry window); None if there is none."""
    row = session.get(WebhookDelivery, delivery_id)
    if row is None or row.webhook_id != webhook_id:
        return None
    now = utcnow()
    row.status = PENDING
    row.next_attempt_at = now
    row.give_up_at = now + timedelta(seconds=get_settings().webhook_retry_for)
    session.add(row)
    return row


def forget_deliveries(session: Session, *, webhook_id: str) -> None:
    """Delete an endpoint's deliveries and their attempts (SQLite enforces no cascades here)."""
    ids = sa.select(_DELIVERIES.c.id).where(_DELIVERIES.c.webhook_id == webhook_id)
    session.execute(sa.delete(_ATTEMPTS).where(_ATTEMPTS.c.delivery_id.in_(ids)))
    session.execute(sa.delete(_DELIVERIES).where(_DELIVERIES.c.webhook_id == webhook_id))

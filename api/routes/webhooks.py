"""Webhook endpoints: register, list, delete, and each one's deliveries (with a re-send).

Admins manage their own tenant's endpoints; operators every tenant's, and endpoints for all
tenants (``"tenant": "*"``). Members get 403. The secret that signs deliveries is in the
answer to the registration only.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import BaseModel, Field

from api.deps import ALL_TENANTS, CurrentPrincipal, SessionDep
from jobs.access.auth import Principal
from jobs.lazy_model import LazyModel

if TYPE_CHECKING:
    from jobs.history.models import Webhook, WebhookAttempt, WebhookDelivery

# The SQL layer loads inside the routes that use it (Lambda cold start).

router = APIRouter(prefix="/api/v1", tags=["webhooks"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such webhook (for this tenant)."}}


class WebhookCreate(BaseModel):
    url: str = Field(min_length=1, max_length=2000, examples=["https://example.com/hooks/conveyor"])
    events: list[str] = Field(
        min_length=1,
        max_length=8,
        examples=[["job.finished", "job.failed"]],
        description="job.finished, job.failed, job.canceled, job.progress, batch.completed.",
    )
    description: str = Field(default="", max_length=200)
    progress_interval: float | None = Field(
        default=None, gt=0, le=86400, description="Seconds between a job's job.progress deliveries."
    )
    tenant: str | None = Field(
        default=None, max_length=64, description="Operators: a tenant's name, or `*` for every tenant."
    )


class WebhookOut(LazyModel):
    id: str
    tenant: str | None
    url: str
    events: list[str]
    progress_interval: float | None
    description: str
    created_by: str
    created_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(description="Signs every delivery. Shown this once: keep it now.")


class WebhookList(LazyModel):
    items: list[WebhookOut]


class AttemptOut(LazyModel):
    attempt: int
    started_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None
    response_excerpt: str | None


class DeliveryOut(LazyModel):
    id: str
    webhook_id: str
    event: str
    subject: str
    status: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None
    give_up_at: datetime
    delivered_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    payload: Any
    attempt_log: list[AttemptOut]


class DeliveryList(LazyModel):
    items: list[DeliveryOut]


def _admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise HTTPException(
            status_code=403, detail="Managing webhooks needs an admin key (or an operator's) for this tenant."
        )


def _out(row: Webhook) -> dict[str, Any]:
    return {name: getattr(row, name) for name in WebhookOut.model_fields}


def _delivery_out(row: WebhookDelivery, attempts: list[WebhookAttempt]) -> DeliveryOut:
    import json

    fields = {name: getattr(row, name) for name in DeliveryOut.model_fields if hasattr(row, name)}
    log = [AttemptOut(**{name: getattr(a, name) for name in AttemptOut.model_fields}) for a in attempts]
    return DeliveryOut(**fields, payload=json.loads(row.body), attempt_log=log)


def _owner_tenant(principal: Principal, requested: str | None) -> str | None:
    """The tenant a new endpoint serves: the caller's own; operators may name any, or all (None)."""
    if requested is None or requested == principal.tenant:
        return principal.tenant
    if principal.scope is not None:
        raise HTTPException(
            status_code=403, detail=f"This key manages only its own tenant's webhooks ({principal.tenant!r})."
        )
    if requested == ALL_TENANTS:
        return None
    from jobs.access.auth import validate_tenant

    return validate_tenant(requested)


def _found(session: Any, webhook_id: str, principal: Principal) -> Webhook:
    from jobs.webhooks.registry import find_webhook

    row = find_webhook(session, webhook_id=webhook_id, scope=principal.scope)
    if row is None:
        raise HTTPException(status_code=404, detail=f"No webhook with id {webhook_id!r}.")
    return row


@router.post("/webhooks", status_code=201, response_model=WebhookCreated)
def create(body: WebhookCreate, principal: CurrentPrincipal, session: SessionDep) -> WebhookCreated:
    """Register an endpoint. Its URL must be https (in production) on a public address; the
    answer holds the signing secret, shown this once."""
    _admin(principal)
    from jobs.webhooks.registry import create_webhook

    row, secret = create_webhook(
        session,
        tenant=_owner_tenant(principal, body.tenant),
        url=body.url,
        events=body.events,
        by=principal.key_id,
        description=body.description,
        progress_interval=body.progress_interval,
    )
    session.commit()
    return WebhookCreated(**_out(row), secret=secret)


@router.get("/webhooks", response_model=WebhookList)
def list_all(principal: CurrentPrincipal, session: SessionDep) -> WebhookList:
    """The endpoints this key manages (operators: every tenant's)."""
    _admin(principal)
    from jobs.webhooks.registry import list_webhooks

    return WebhookList(items=[WebhookOut(**_out(r)) for r in list_webhooks(session, scope=principal.scope)])


@router.get("/webhooks/{webhook_id}", response_model=WebhookOut, responses=NOT_FOUND)
def get_one(webhook_id: str, principal: CurrentPrincipal, session: SessionDep) -> WebhookOut:
    _admin(principal)
    return WebhookOut(**_out(_found(session, webhook_id, principal)))


@router.delete("/webhooks/{webhook_id}", status_code=204, responses=NOT_FOUND)
def delete(webhook_id: str, principal: CurrentPrincipal, session: SessionDep) -> Response:
    """Delete an endpoint with its deliveries; nothing more is sent to it."""
    _admin(principal)
    from jobs.webhooks.registry import delete_webhook

    _found(session, webhook_id, principal)
    delete_webhook(session, webhook_id=webhook_id, scope=principal.scope)
    session.commit()
    return Response(status_code=204)


@router.get("/webhooks/{webhook_id}/deliveries", response_model=DeliveryList, responses=NOT_FOUND)
def deliveries(
    webhook_id: str,
    principal: CurrentPrincipal,
    session: SessionDep,
    status: Annotated[str | None, Query(max_length=16, description="pending, delivered or failed")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> DeliveryList:
    """The endpoint's newest deliveries, each with every attempt made (status code, error, time)."""
    _admin(principal)
    from jobs.webhooks.outbox import attempts_of, list_deliveries

    _found(session, webhook_id, principal)
    rows = list_deliveries(session, webhook_id=webhook_id, status=status, limit=limit)
    attempts = attempts_of(session, [row.id for row in rows])
    return DeliveryList(items=[_delivery_out(row, attempts[row.id]) for row in rows])


@router.post(
    "/webhooks/{webhook_id}/deliveries/{delivery_id}/resend",
    status_code=202,
    response_model=DeliveryOut,
    responses=NOT_FOUND,
)
def resend(
    webhook_id: str, delivery_id: str, principal: CurrentPrincipal, session: SessionDep
) -> DeliveryOut:
    """Send a delivery again, with the same `webhook-id` (receivers de-duplicate by it)."""
    _admin(principal)
    from jobs.webhooks.outbox import attempts_of
    from jobs.webhooks.outbox import resend as resend_delivery

    _found(session, webhook_id, principal)
    row = resend_delivery(session, webhook_id=webhook_id, delivery_id=delivery_id)
    if row is None:
        raise HTTPException(
            status_code=404, detail=f"No delivery {delivery_id!r} for webhook {webhook_id!r}."
        )
    session.commit()
    session.refresh(row)
    return _delivery_out(row, attempts_of(session, [row.id])[row.id])

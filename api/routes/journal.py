"""Journal entries set aside (SQL refused them): what an admin needs to see why history is incomplete."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from api.deps import CurrentPrincipal
from jobs.lazy_model import LazyModel

# The Redis layer loads inside the route (Lambda cold start).

router = APIRouter(prefix="/api/v1", tags=["journal"])


class SetAsideEntry(LazyModel):
    id: str
    journal_id: str
    job_id: str | None
    tenant: str | None
    event: str | None
    reason: str
    set_aside_at: datetime | None
    fields: dict[str, str]


class SetAsideList(LazyModel):
    held: int
    total_set_aside: int
    items: list[SetAsideEntry]


@router.get("/journal/set-aside", response_model=SetAsideList)
def get_set_aside(
    principal: CurrentPrincipal, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> SetAsideList:
    """Journal entries SQL refused, newest first: the entry's raw fields (redacted), its job, and why.

    Admins see their own tenant's entries, operators every tenant's. ``held`` and
    ``total_set_aside`` count every tenant (they are the figures /metrics shows).
    """
    if not principal.is_admin:
        raise HTTPException(status_code=403, detail="GET /api/v1/journal/set-aside needs an admin key.")
    from jobs.access.redaction import redact_text
    from jobs.history.set_aside import held, listing
    from jobs.reporting.metrics import read_counters
    from jobs.state.redis_conn import get_redis

    client = get_redis()
    items = [
        SetAsideEntry(
            id=item.id,
            journal_id=item.journal_id,
            job_id=item.job_id,
            tenant=item.tenant,
            event=item.event,
            reason=item.reason,
            set_aside_at=item.set_aside_at,
            fields={name: redact_text(value) for name, value in item.fields.items()},
        )
        for item in listing(client, tenant=principal.scope, limit=limit)
    ]
    return SetAsideList(held=held(client), total_set_aside=read_counters(client).set_aside, items=items)
